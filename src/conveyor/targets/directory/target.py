"""The ``directory`` target: body, then ``<name>.meta.json``, each appearing atomically.

Order of a delivery: both written under temporary names (one thread hop: check, copy while
hashing, sidecar) → one (group) sync so the bytes are durable → rename the body, then the
sidecar → one (group) sync so the names are durable → delivered. A reader that sees the
sidecar may read the body. A payload whose bytes are already there under its name, beside a
sidecar naming its id, is not written again.

Other users may write into the folder too, so nothing found there is trusted: every name is
made, renamed and looked at relative to a descriptor of the folder, never through a symlink;
temporary names are random and created exclusively; a file already at a name counts as this
payload's only when it is a regular file holding the same bytes (SHA-256), whatever its
sidecar says.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import secrets
import stat
import threading
from pathlib import Path

from conveyor import companions
from conveyor.batched import ThreadCalls
from conveyor.errors import NoSpace, Permanent, Rejected, Transient
from conveyor.interfaces import Context
from conveyor.names import (
    NAME_MAX,
    SIDECAR_SUFFIX,
    MissingField,
    Template,
    UnsafeName,
    cut_bytes,
    name_bytes,
    split_folder,
    target_folder,
    target_name,
)
from conveyor.payload.body import CHUNK, Body, hash_file
from conveyor.payload.payload import Payload
from conveyor.payload.spool import disk_full
from conveyor.targets.directory.config import DirectoryTargetConfig
from conveyor.targets.directory.writer import BatchWriter
from conveyor.targets.folders import writable_folder
from conveyor.targets.fsync import sync_fd

_SAFE_ID = re.compile(
    r"(?!(?i:con|prn|aux|nul|com[1-9]|lpt[1-9])(?:\.|\Z))"  # not a Windows device name
    r"(?!.*\.meta\.json_*\Z)"  # not a sidecar's name, nor one that stands for it
    r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,199}(?<!\.)\Z"  # no trailing dot
)
"""Ids that are their own file name under every policy (``\\Z``, not ``$``: ``$`` would let an
id ending in a newline through)."""

_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_O_TEMP = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_O_PEEK = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
"""Looking at what is already at a name: a symlink is not followed, a FIFO does not block."""
_SIDECAR_MAX = 8 << 20
"""A sidecar larger than this is not one conveyor wrote (its metadata is a few KiB)."""
_TEMP_TRIES = 8

_SUBFOLDERS_OPEN = 64
"""Folders below a directory target's own that it holds open at once (one descriptor each)."""

log = logging.getLogger("conveyor.directory")


class _Handle:
    """One open descriptor of the folder, shared by the deliveries that use it."""

    __slots__ = ("fd", "ident", "stale", "users")

    def __init__(self, fd: int, ident: tuple[int, int]) -> None:
        self.fd = fd
        self.ident = ident
        self.users = 0
        self.stale = False


class _Folder:
    """The target folder, held open.

    The configured path is resolved once (a symlink the admin put in it is followed then);
    after that every component of the resolved path is opened without following symlinks, and
    each delivery checks the path still names the folder it holds. A folder on the path swapped
    for a symlink is refused, not followed; a folder removed is made again.
    """

    def __init__(self, path: str, dir_mode: int, gid: int | None, below: str = "") -> None:
        self.path = path
        self.below = below
        """A subfolder (from the ``path`` template) whose parts are never resolved: conveyor makes them."""
        self.real: str | None = None
        self._dir_mode = dir_mode
        self._gid = gid
        self._lock = threading.Lock()
        self._current: _Handle | None = None
        self._closed = False

    def acquire(self) -> _Handle:
        """A descriptor of the folder for one delivery (blocking: call from a worker thread)."""
        with self._lock:
            h = self._current
            if h is not None and not self._still_there(h):
                self._retire(h)
                h = self._current = None
            if h is None:
                h = self._open()
                if self._closed:
                    h.stale = True  # a job queued before close: its release closes this one
                else:
                    self._current = h
            h.users += 1
            return h

    def release(self, h: _Handle) -> None:
        """The delivery is done with ``h``."""
        with self._lock:
            h.users -= 1
            if h.stale and h.users == 0:
                os.close(h.fd)

    def close(self) -> None:
        """Close the descriptor once the deliveries still using it are done."""
        with self._lock:
            self._closed = True
            if self._current is not None:
                self._retire(self._current)
                self._current = None

    def sync(self) -> None:
        """Make what was written in the folder durable (``syncfs`` on its file system)."""
        h = self.acquire()
        try:
            sync_fd(h.fd)
        finally:
            self.release(h)

    def _retire(self, h: _Handle) -> None:
        h.stale = True
        if h.users == 0:
            os.close(h.fd)

    def _still_there(self, h: _Handle) -> bool:
        assert self.real is not None
        try:
            st = os.stat(self.real, follow_symlinks=False)
        except OSError:
            return False
        return stat.S_ISDIR(st.st_mode) and (st.st_dev, st.st_ino) == h.ident

    def _open(self) -> _Handle:
        if self.real is None:
            # Only the configured folder is resolved; the parts below it were rendered per payload
            # and are opened without following a symlink planted there.
            real = os.path.realpath(self.path)
            self.real = os.path.join(real, self.below) if self.below else real
        parts = [p for p in self.real.split("/") if p]
        fd = os.open("/", _O_DIR)
        try:
            for i, part in enumerate(parts):
                try:
                    nfd = self._open_or_make(part, fd)
                except OSError as e:
                    if e.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
                        where = "/" + "/".join(parts[: i + 1])
                        # Retried, not failed: nothing is written until the folder is back.
                        raise Transient(
                            f"{where} is not a folder (a symlink or a file put in its place); "
                            "conveyor does not follow it",
                            path=self.path,
                        ) from None
                    raise
                os.close(fd)
                fd = nfd
            st = os.fstat(fd)
        except BaseException:
            os.close(fd)
            raise
        if st.st_mode & stat.S_IWOTH:
            log.warning(
                "target folder %s is writable by every user (mode %04o): others can plant files, links "
                "and FIFOs where conveyor delivers; share it through a group instead (docs/security.md)",
                self.path,
                stat.S_IMODE(st.st_mode),
            )
        return _Handle(fd, (st.st_dev, st.st_ino))

    def _open_or_make(self, part: str, parent: int) -> int:
        try:
            return os.open(part, _O_DIR, dir_fd=parent)
        except FileNotFoundError:
            pass
        try:
            os.mkdir(part, 0o700, dir_fd=parent)
        except FileExistsError:
            return os.open(part, _O_DIR, dir_fd=parent)
        fd = os.open(part, _O_DIR, dir_fd=parent)
        try:
            # Explicitly, not through the umask: the group may read what it is given.
            os.fchmod(fd, self._dir_mode)
            if self._gid is not None:
                os.fchown(fd, -1, self._gid)
        except BaseException:
            os.close(fd)
            raise
        return fd


class DirectoryTarget:
    """Writes payloads into a local folder."""

    def __init__(self, flow: str, config: DirectoryTargetConfig) -> None:
        self.flow = flow
        self.config = config
        self.where = f"directory {config.path}"
        self.mode = config.mode()
        self.gid = self._group()
        # Folders conveyor creates: searchable where the files are readable (0640 → 0750).
        dir_mode = self.mode | 0o700 | ((self.mode & 0o444) >> 2)
        self._dir_mode = dir_mode
        fixed, below = split_folder(config.path)
        self.folder = Path(fixed)
        self._folder = _Folder(fixed, dir_mode, self.gid)
        self._below = Template(below) if below else None
        self._subfolders: dict[str, _Folder] = {}
        """Folders below the fixed one that a ``path`` template made, most recently used last."""
        self._filename = Template(config.filename)
        self._writer: BatchWriter | None = None

    def file_name(self, payload: Payload) -> str:
        """The body's file name for a payload: it cannot leave the folder, cannot take a sidecar's
        name, fits in 255 bytes with its sidecar suffix, and follows ``unsafe_names``."""
        if self.config.filename == "{id}" and _SAFE_ID.match(payload.id):
            return payload.id  # the default, and the hot path for messages
        try:
            return target_name(
                self._filename,
                payload.name_values(),
                unsafe=self.config.unsafe_names,
                tz=self.config.timezone,
                sidecars=self.config.sidecar,
            )
        except (UnsafeName, MissingField) as e:
            raise Rejected(str(e), path=self.config.path) from None

    def folder_for(self, payload: Payload) -> _Folder:
        """The folder a payload goes into: the configured one, or one below it that the ``path``
        template names for this payload (made if missing)."""
        if self._below is None:
            return self._folder
        try:
            below = target_folder(
                self._below, payload.name_values(), unsafe=self.config.unsafe_names, tz=self.config.timezone
            )
        except (UnsafeName, MissingField) as e:
            raise Rejected(str(e), path=self.config.path) from None
        if not below:
            return self._folder
        folder = self._subfolders.pop(below, None)
        if folder is None:
            folder = _Folder(self._folder.path, self._dir_mode, self.gid, below)
            if len(self._subfolders) >= _SUBFOLDERS_OPEN:
                # Dated folders come and go: hold the recent ones open, not every one ever used.
                oldest = next(iter(self._subfolders))
                self._subfolders.pop(oldest).close()
        self._subfolders[below] = folder
        return folder

    async def deliver(self, payload: Payload) -> None:
        """Write the body and sidecar; returns when both are durable."""
        try:
            await self._deliver(payload)
        except OSError as e:
            if disk_full(e):
                raise NoSpace(f"target folder {self.folder} is full", path=str(self.folder)) from None
            if isinstance(e, PermissionError):
                raise Permanent(f"cannot write into {self.folder}: permission denied", path=str(self.folder)) from None
            raise Transient(f"writing into {self.folder} failed: {e.strerror or e}", path=str(self.folder)) from None

    async def _deliver(self, payload: Payload) -> None:
        job = _Job(self, payload, self.file_name(payload), self.folder_for(payload))
        if payload.body.in_memory:
            # Small bodies: one batched round trip to the folder's thread of the shared writer pool.
            if self._writer is None:
                self._writer = BatchWriter(self.folder.name, self._folder.sync if self.config.fsync else None)
            await self._writer.run(job.stage)
            return
        # Large bodies stream on their own thread so they do not hold up the small ones. Each is
        # made durable by its own fsyncs, not a syncfs: flushing the whole file system would make
        # the delivery wait for every other writer's dirty pages (other downloads in the spool).
        calls = ThreadCalls()
        try:
            staged = await calls.run(job.stage)
            if staged is None:
                return
            if self.config.fsync:
                await calls.run(staged.sync_files)
            await calls.run(staged.publish, self.config.fsync)
        except BaseException:
            # After the thread: a cancelled delivery's thread may still be writing them.
            calls.after(job.discard)
            raise

    def _group(self) -> int | None:
        try:
            return self.config.gid()
        except KeyError:
            return None  # the group went away since the config was loaded: each delivery says so

    async def probe(self) -> str:
        """Whether the folder can be written, or created, writing nothing (for ``check --connect``)."""
        return await asyncio.to_thread(writable_folder, self.folder)

    async def close(self) -> None:
        """Leave the writer pool; the folder's descriptor closes once nothing uses it."""
        if self._writer is not None:
            self._writer.close()
        self._folder.close()
        for folder in self._subfolders.values():
            folder.close()
        self._subfolders.clear()


class _Job:
    """One payload's delivery: what was found at its name, its temporary files, its folder handle."""

    def __init__(self, target: DirectoryTarget, payload: Payload, name: str, folder: _Folder) -> None:
        self.target = target
        self.folder = folder
        self.payload = payload
        self.name = name
        self.stem = cut_bytes(name, 200)
        self.handle: _Handle | None = None
        self.tmp_body: str | None = None
        self.tmp_meta: str | None = None
        self.tmp_beside: list[tuple[str, str]] = []
        """(temporary, final) names of the checksum file and done file, renamed in that order."""

    def stage(self) -> _Job | None:
        """On a worker thread: decide, write the body while hashing it, write the sidecar.
        None when nothing needs writing; else this job, whose :meth:`publish` renames."""
        try:
            self.handle = self.folder.acquire()
            if not self._needs_writing(self.handle.fd):
                # Its bytes are there (a redo after a crash, say): its companions may not be yet.
                if self._stage_beside(self.handle.fd, only_missing=True):
                    return self
                self._release()
                return None
            cfg = self.target.config
            sha = self._write_body(self.handle.fd)
            self.payload.body.set_digest(sha)
            if cfg.preserve_mtime and self.payload.mtime is not None and self.tmp_body is not None:
                # Before the rename: the name appears with its source's time, never without it.
                mtime = self.payload.mtime
                os.utime(self.tmp_body, (mtime, mtime), dir_fd=self.handle.fd, follow_symlinks=False)
            if cfg.sidecar:
                # One line: json's C encoder does not indent, and its Python one is slow enough to
                # weigh on a small message's whole delivery.
                doc = json.dumps(self.payload.metadata_with(sha)).encode() + b"\n"
                self.tmp_meta, fd = self._create(".meta.tmp")
                try:
                    _write_all(fd, doc)
                finally:
                    os.close(fd)
            self._stage_beside(self.handle.fd, only_missing=False)
        except BaseException:
            self.discard()
            raise
        return self

    def _stage_beside(self, dfd: int, *, only_missing: bool) -> bool:
        """Write the checksum file and the done file under temporary names; True if any was.
        ``only_missing``: leave those already there alone."""
        cfg = self.target.config
        wanted: list[tuple[str, bytes]] = []
        if cfg.checksum is not None:
            if cfg.checksum == "sha256":
                digest = self._payload_digest()
            else:
                digest = companions.digest_now(self.payload.body, cfg.checksum)
            wanted.append((f"{self.name}.{cfg.checksum}", companions.checksum_line(digest, self.name)))
        if cfg.done_file is not None:
            wanted.append((companions.render(cfg.done_file, self.name), b""))
        for final, data in wanted:
            if name_bytes(final) > NAME_MAX:
                raise Rejected(f"{final[:100]!r}...: longer than {NAME_MAX} bytes", path=cfg.path)
            if only_missing and _entry_at(dfd, final):
                continue
            tmp, fd = self._create(".tmp")
            self.tmp_beside.append((tmp, final))
            try:
                _write_all(fd, data)
            finally:
                os.close(fd)
        return bool(self.tmp_beside)

    def sync_files(self) -> None:
        """fsync each temporary file staged (their bytes durable before any is renamed)."""
        assert self.handle is not None
        for tmp in (self.tmp_body, self.tmp_meta, *(t for t, _ in self.tmp_beside)):
            if tmp is not None:
                fd = os.open(tmp, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.handle.fd)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)

    def publish(self, sync: bool = False) -> None:
        """Rename the body, then the sidecar, into place; with ``sync``, then fsync the folder so
        the names are durable. Renames never follow a symlink: one planted at either name is
        replaced, not written through."""
        assert self.handle is not None
        fd = self.handle.fd
        try:
            if self.tmp_body is not None:
                os.replace(self.tmp_body, self.name, src_dir_fd=fd, dst_dir_fd=fd)
                self.tmp_body = None
            if self.tmp_meta is not None:
                os.replace(self.tmp_meta, self.name + SIDECAR_SUFFIX, src_dir_fd=fd, dst_dir_fd=fd)
                self.tmp_meta = None
            while self.tmp_beside:
                tmp, final = self.tmp_beside[0]
                os.replace(tmp, final, src_dir_fd=fd, dst_dir_fd=fd)
                del self.tmp_beside[0]
            if sync:
                os.fsync(fd)
        except BaseException:
            self.discard()
            raise
        self._release()

    def discard(self) -> None:
        """Remove the temporary files, if any, and let go of the folder."""
        if self.handle is None:
            return
        for tmp in (self.tmp_body, self.tmp_meta, *(t for t, _ in self.tmp_beside)):
            if tmp is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp, dir_fd=self.handle.fd)
        self.tmp_body = self.tmp_meta = None
        self.tmp_beside = []
        self._release()

    def _release(self) -> None:
        if self.handle is not None:
            self.folder.release(self.handle)
            self.handle = None

    def _needs_writing(self, dfd: int) -> bool:
        """Whether to write; False when this payload is already there, or ``exists: skip`` finds
        the same bytes; Rejected when ``exists`` refuses what is there."""
        cfg = self.target.config
        try:
            st = os.stat(self.name, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            return True  # the usual case: one system call
        if stat.S_ISDIR(st.st_mode):
            raise Rejected(f"{self.name} is a folder in the target folder; nothing is written over it", path=cfg.path)
        body = self.payload.body
        same = (
            stat.S_ISREG(st.st_mode)
            and st.st_size == body.size
            and _digest_at(dfd, self.name, st) == self._payload_digest()
        )
        if not same and cfg.exists == "replace":
            return True
        sid = _sidecar_id(dfd, self.name + SIDECAR_SUFFIX) if cfg.sidecar else None
        if same and (not cfg.sidecar or sid == self.payload.id):
            return False  # already delivered: the same payload written twice leaves one copy
        if cfg.exists == "replace":
            return True
        if same:
            if sid is None:
                return True  # the same bytes without a sidecar: a delivery cut between its renames
            if cfg.exists == "skip":
                return False
            raise Rejected(f"{self.name} already holds payload {sid[:100]!r} (exists: fail)", path=cfg.path)
        whose = f" (its sidecar names payload {sid[:100]!r})" if sid else ""
        if cfg.exists == "fail":
            raise Rejected(f"{self.name} already holds another file{whose} (exists: fail)", path=cfg.path)
        raise Rejected(
            f"{self.name} already holds different bytes{whose}; exists: skip counts a payload "
            "delivered only where the same bytes are",
            path=cfg.path,
        )

    def _payload_digest(self) -> str:
        body = self.payload.body
        known = body.known_digest
        if known is None:
            known = hashlib.sha256(body.data()).hexdigest() if body.in_memory else hash_file(_path(body))
            body.set_digest(known)
        return known

    def _create(self, suffix: str) -> tuple[str, int]:
        """A new temporary file: a random name beside the final one, created exclusively (a
        symlink or anything else already there makes the attempt fail, never redirects it),
        with the configured mode and group set on the descriptor."""
        assert self.handle is not None
        for _ in range(_TEMP_TRIES):
            tmp = f".{self.stem}.{secrets.token_hex(8)}{suffix}"
            try:
                fd = os.open(tmp, _O_TEMP, 0o600, dir_fd=self.handle.fd)
            except FileExistsError:
                continue
            try:
                self._set_owner(fd)
            except BaseException:
                os.close(fd)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp, dir_fd=self.handle.fd)
                raise
            return tmp, fd
        raise Transient(
            f"no free temporary name for {self.name} after {_TEMP_TRIES} tries", path=self.target.config.path
        )

    def _set_owner(self, fd: int) -> None:
        os.fchmod(fd, self.target.mode)
        cfg = self.target.config
        if cfg.group is None:
            return
        gid = self.target.gid
        if gid is None:
            raise Permanent(f"group {cfg.group!r} does not exist", path=cfg.path)
        try:
            os.fchown(fd, -1, gid)
        except PermissionError:
            raise Permanent(
                f"cannot give delivered files group {cfg.group!r}: conveyor's user is not in it", path=cfg.path
            ) from None

    def _write_body(self, dfd: int) -> str:
        """Write the body to a new temporary file; returns its SHA-256 (computed on the way unless
        known)."""
        body = self.payload.body
        if body.in_memory:
            data = body.data()
            self.tmp_body, fd = self._create(".tmp")
            try:
                _write_all(fd, data)
            finally:
                os.close(fd)
            return body.known_digest or hashlib.sha256(data).hexdigest()
        src = _path(body)
        if body.owned and body.known_digest and self._link(src, dfd):
            return body.known_digest
        self.tmp_body, fd = self._create(".tmp")
        try:
            if body.known_digest:
                _copy(src, fd)
                return body.known_digest
            return _copy_hashing(src, fd)
        finally:
            os.close(fd)

    def _link(self, src: Path, dfd: int) -> bool:
        """A spool file is ours alone: on the same file system a hard link costs nothing, whatever
        the size. (Never for a source file read in place: a later write to it would change the
        delivered copy too.) Its mode and group are set first: they are the delivered file's."""
        try:
            fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                self._set_owner(fd)
            finally:
                os.close(fd)
        except OSError:
            return False
        for _ in range(_TEMP_TRIES):
            tmp = f".{self.stem}.{secrets.token_hex(8)}.tmp"
            try:
                os.link(src, tmp, dst_dir_fd=dfd, follow_symlinks=False)
            except FileExistsError:
                continue
            except OSError:
                return False  # another file system, or links not allowed: copy instead
            self.tmp_body = tmp
            return True
        return False


def _path(body: Body) -> Path:
    assert body.path is not None
    return body.path


def _write_all(fd: int, data: bytes) -> None:
    """Write ``data`` to ``fd``. Through the file descriptor directly: ``open()`` adds an fstat,
    an isatty ioctl and an lseek, three more system calls per file."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _copy(src: Path, out: int) -> None:
    """Copy the file at ``src`` into ``out``, in the kernel where it can (sendfile)."""
    fd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    try:
        offset = 0
        try:
            while sent := os.sendfile(out, fd, offset, 1 << 30):
                offset += sent
        except OSError as e:
            if e.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP) or offset:
                raise
            while chunk := os.read(fd, CHUNK):
                _write_all(out, chunk)
    finally:
        os.close(fd)


def _copy_hashing(src: Path, out: int) -> str:
    """Copy while a second thread hashes: both read the same cached pages, and hashing (not
    copying) is the slower of the two."""
    result: list[str | BaseException] = []

    def digest() -> None:
        try:
            result.append(hash_file(src))
        except BaseException as e:
            result.append(e)

    hasher = threading.Thread(target=digest, name="conveyor-hash", daemon=True)
    hasher.start()
    try:
        _copy(src, out)
    finally:
        hasher.join()
    if isinstance(result[0], BaseException):
        raise result[0]
    return result[0]


def _open_regular(dfd: int, name: str, st: os.stat_result | None = None) -> tuple[int, os.stat_result] | None:
    """A descriptor of the regular file at ``name`` and its status, or None for anything else
    (missing, a symlink, a FIFO, a device, a folder, or not the file ``st`` described)."""
    try:
        fd = os.open(name, _O_PEEK, dir_fd=dfd)
    except OSError:
        return None
    seen = os.fstat(fd)
    if not stat.S_ISREG(seen.st_mode) or (st is not None and (seen.st_dev, seen.st_ino) != (st.st_dev, st.st_ino)):
        os.close(fd)
        return None
    return fd, seen


def _entry_at(dfd: int, name: str) -> bool:
    """Whether a regular file is at ``name`` (anything else there is replaced, or fails the rename)."""
    try:
        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return stat.S_ISREG(st.st_mode)


def _digest_at(dfd: int, name: str, st: os.stat_result) -> str | None:
    """SHA-256 of the regular file at ``name`` (the one ``st`` describes), or None."""
    opened = _open_regular(dfd, name, st)
    if opened is None:
        return None
    fd = opened[0]
    try:
        h = hashlib.sha256()
        while chunk := os.read(fd, CHUNK):
            h.update(chunk)
        return h.hexdigest()
    finally:
        os.close(fd)


def _sidecar_id(dfd: int, name: str) -> str | None:
    """The id a sidecar names, or None when there is none (or it is not a regular file of a
    sidecar's size, or not a sidecar at all)."""
    opened = _open_regular(dfd, name)
    if opened is None:
        return None
    fd, st = opened
    try:
        if st.st_size > _SIDECAR_MAX:
            return None
        data = os.read(fd, st.st_size + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        doc = json.loads(data)
    except ValueError:
        return None
    value = doc.get("id") if isinstance(doc, dict) else None
    return value if isinstance(value, str) else None


def create(flow: str, config: DirectoryTargetConfig, context: Context) -> DirectoryTarget:
    """The registry's factory: a directory target needs nothing from the daemon."""
    return DirectoryTarget(flow, config)
