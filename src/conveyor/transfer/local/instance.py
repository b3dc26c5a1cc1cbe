"""The ``local`` instance: a folder on this machine, as a FileSystem.

The root is the admin's: its symlinks are resolved once, when the instance is checked. Below it,
names belong to whoever can write there, so every read, stat, delete and move walks down from a
descriptor of the root without following a symlink (:mod:`.beneath`), and a listed file is read,
deleted or moved only while it is still the very file (device and inode) the listing saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import functools
import hashlib
import os
import shutil
import stat
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from conveyor.batched import BatchedThread, ThreadCalls
from conveyor.errors import NoSpace, NotFound, Permanent, Rejected, Transient
from conveyor.interfaces import Context, RemoteFile, count_entry
from conveyor.names import cut_bytes
from conveyor.payload.body import Body
from conveyor.payload.spool import Spool, SpoolWriter, disk_full
from conveyor.transfer.local import beneath
from conveyor.transfer.local.beneath import Identity, Refused, Replaced, Version
from conveyor.transfer.local.config import LocalConfig

_BATCH = 1000
_FS_ERRORS = (OSError, Refused, Replaced)


@dataclasses.dataclass(frozen=True, kw_only=True)
class LocalFile(RemoteFile):
    """A listed file with the identity the listing saw: reads and after actions act on that very
    file, never on what took its name since."""

    dev: int
    ino: int


class LocalInstance:
    """A local folder. Reads hand the file over in place (no spool copy)."""

    def __init__(self, name: str, config: LocalConfig, ctx: Context) -> None:
        self.name = name
        self.config = config
        self.root = Path(config.root)
        self._root = str(self.root)
        self._real: str | None = None
        """The root with its symlinks resolved, set by :meth:`check`."""
        ctx.status.add_instance(name, "local", config.root)
        self._status = ctx.status
        self._spool: Spool | None = ctx.spool
        self._io = BatchedThread(f"conveyor-io:{name}")
        """Small reads, deletes and moves: one thread hop per event-loop turn, not one per file."""
        self.by_descriptor = os.path.isdir("/proc/self/fd")
        """Large files are handed over as a held descriptor (read through ``/proc/self/fd``); where
        there is no such folder they are copied into the spool from that descriptor instead."""

    def _abs(self, path: str) -> str:
        # A string, not a Path: this runs on the event loop for every file (reads, after actions),
        # where pathlib's parsing would be the largest part of the source's per-file work.
        # Config paths are trusted, remote names are checked by the core; this is the last guard.
        if ".." in path.split("/"):
            raise Permanent(f"path {path!r} leaves the instance root", instance=self.name, path=path)
        return f"{self._root}/{path}" if path else self._root

    def _base(self) -> str:
        """The root as resolved by :meth:`check` (resolved here if nothing checked it yet)."""
        if self._real is None:
            self._real = os.path.realpath(self._root)
        return self._real

    def _error(self, e: Exception, path: str) -> Exception:
        if isinstance(e, Refused):
            return Permanent(str(e), instance=self.name, path=path)
        if isinstance(e, Replaced):
            return Transient(f"{e}; not taken now, the next listing shows what is there", instance=self.name, path=path)
        if isinstance(e, FileNotFoundError):
            return NotFound(f"no such file or folder: {self._abs(path)}", instance=self.name, path=path)
        if isinstance(e, PermissionError):
            return Permanent(f"permission denied: {self._abs(path)}", instance=self.name, path=path)
        if isinstance(e, OSError) and disk_full(e):
            return NoSpace(f"disk full under {self.root}", instance=self.name, path=path)
        return Transient(f"{getattr(e, 'strerror', None) or e}", instance=self.name, path=path)

    async def check(self) -> str:
        """The root folder must exist (or is created when ``create`` is set); its symlinks are
        resolved here, once."""
        if self.config.create:
            await asyncio.to_thread(self.root.mkdir, parents=True, exist_ok=True)
        if not await asyncio.to_thread(self.root.is_dir):
            self._status.instance_state(self.name, "down", f"folder {self.root} does not exist", permanent=True)
            raise NotFound(f"folder {self.root} does not exist", instance=self.name)
        self._real = await asyncio.to_thread(os.path.realpath, self._root)
        self._status.instance_state(self.name, "up")
        return f"local folder {self.root}"

    async def close(self) -> None:
        """Stop the I/O thread (after what is queued)."""
        self._io.close()

    async def stat(self, path: str) -> RemoteFile | None:
        """The regular file at ``path`` or None (a symlink there is not followed: None)."""
        self._abs(path)
        try:
            st = await asyncio.to_thread(self._lstat, path)
        except _FS_ERRORS as e:
            raise self._error(e, path) from None
        if st is None or not stat.S_ISREG(st.st_mode):
            return None
        return LocalFile(path, st.st_size, st.st_mtime, dev=st.st_dev, ino=st.st_ino)

    def _lstat(self, path: str) -> os.stat_result | None:
        if not beneath.parts(path):
            return None
        try:
            with beneath.parent_of(self._base(), path) as (fd, name):
                return beneath.lstat_at(fd, name)
        except FileNotFoundError:
            return None

    async def is_dir(self, path: str) -> bool:
        """Whether ``path`` is a folder; a symlink on the way is an error that says so."""
        self._abs(path)

        def probe() -> bool:
            try:
                os.close(beneath.open_folder(self._base(), beneath.parts(path)))
            except FileNotFoundError:
                return False
            return True

        try:
            return await asyncio.to_thread(probe)
        except _FS_ERRORS as e:
            raise self._error(e, path) from None

    async def list(self, path: str, recursive: bool, max_entries: int | None = None) -> AsyncIterator[RemoteFile]:
        """Regular files under ``path`` in batches read on a thread. Symlinks are not followed:
        they, FIFOs, sockets and devices are listed with ``refused`` set, so the source can say why
        they are never taken."""
        if self._status.instances[self.name].state != "up":
            await self.check()
        self._abs(path)
        pending = [path]
        n = 0
        while pending:
            folder = pending.pop()
            try:
                fd, it = await asyncio.to_thread(self._scan, folder, self.config.create and folder == path)
            except _FS_ERRORS as e:
                if folder != path and isinstance(e, (FileNotFoundError, Refused)):
                    continue  # removed or replaced since its parent was listed: that listing tells
                raise self._error(e, folder) from None
            # Closed only once no thread reads it: a stop cancels this mid-batch.
            calls = ThreadCalls()
            try:
                while batch := await calls.run(_take, it, _BATCH):
                    for name, st in batch:
                        n = count_entry(n, max_entries)
                        rel = f"{folder}/{name}" if folder else name
                        if st is None:
                            if recursive:
                                pending.append(rel)
                        elif stat.S_ISREG(st.st_mode):
                            yield LocalFile(rel, st.st_size, st.st_mtime, dev=st.st_dev, ino=st.st_ino)
                        else:
                            yield RemoteFile(rel, st.st_size, st.st_mtime, refused=beneath.kind(st.st_mode))
            finally:
                calls.after(functools.partial(_close_scan, it, fd))

    def _scan(self, folder: str, create: bool) -> tuple[int, Iterator[os.DirEntry[str]]]:
        fd = beneath.open_folder(self._base(), beneath.parts(folder), create=create, readable=True)
        try:
            # Entries are stat'ed relative to this descriptor: it stays open until the scan is closed.
            return fd, os.scandir(fd)
        except BaseException:
            os.close(fd)
            raise

    async def open_in_place(self, f: RemoteFile, threshold: int) -> Body:
        """The file as a body with no copy into the spool: read into memory when small, else
        handed over as a held descriptor. Only the file the listing saw is read: a symlink, a
        FIFO or device, or another file in its place is refused."""
        self._abs(f.path)
        try:
            if f.size <= min(threshold, 1 << 20):
                data, sha256 = await self._io.run(functools.partial(self._read_small, f))
                return Body.from_bytes(data, sha256)
            # Opened and checked on the I/O thread: a slow disk must not hold up the event loop.
            fd = await self._io.run(functools.partial(self._open_listed, f))
        except _FS_ERRORS as e:
            raise self._error(e, f.path) from None
        if self.by_descriptor:
            return Body.from_descriptor(fd, f.size, origin=self._abs(f.path))
        assert self._spool is not None
        sink = self._spool.writer()
        try:
            await self._copy(fd, f, sink)
            return sink.finish()
        except BaseException:
            sink.abort()
            raise

    def _open_listed(self, f: RemoteFile) -> int:
        """A descriptor of ``f``, checked to be the file listed, in the version listed."""
        fd, st = beneath.open_file(self._base(), f.path, _identity(f))
        changed = _changed(st, f)
        if changed:
            os.close(fd)
            raise Replaced(changed)
        return fd

    def _read_small(self, f: RemoteFile) -> tuple[bytes, str]:
        """The file and its SHA-256, both on the I/O thread: every delivery needs the digest
        (metadata), and computed here it runs beside the event loop instead of on it."""
        with open(self._open_listed(f), "rb") as fh:
            data = fh.read(f.size + 1)  # never more than listed, whatever the file does meanwhile
        if len(data) != f.size:
            raise Replaced(f"'{f.path}' changed while it was read ({len(data):,} bytes or more, listed {f.size:,})")
        return data, hashlib.sha256(data).hexdigest()

    async def download(self, f: RemoteFile, sink: SpoolWriter) -> None:
        """Copy the file into a spool writer (used when in-place reading is not wanted), with the
        same checks as :meth:`open_in_place`."""
        self._abs(f.path)
        try:
            fd = await self._io.run(functools.partial(self._open_listed, f))
        except _FS_ERRORS as e:
            raise self._error(e, f.path) from None
        await self._copy(fd, f, sink)

    async def _copy(self, fd: int, f: RemoteFile, sink: SpoolWriter) -> None:
        """``fd`` (closed here) into ``sink`` from its current size, up to the listed size."""
        fh = open(fd, "rb")  # noqa: ASYNC230, SIM115 (reads go through a thread; closed below)
        calls = ThreadCalls()
        try:
            fh.seek(sink.size)
            while sink.size < f.size and (chunk := await calls.run(fh.read, min(1 << 20, f.size - sink.size))):
                sink.write(chunk)
            if sink.size != f.size:
                raise self._error(
                    Replaced(f"'{f.path}' changed while it was read ({sink.size:,} bytes, listed {f.size:,})"), f.path
                )
        except OSError as e:
            raise self._error(e, f.path) from None
        finally:
            calls.after(fh.close)  # not under a read a cancelled download left running

    async def upload(
        self, body: Body, path: str, *, exists: str, chmod: int | None, mtime: float | None = None
    ) -> bool:
        """Write under a temp name, fsync, rename; folders made and entered without following a
        symlink, the temp file created exclusively (a name planted there is never written through)."""
        self._abs(path)
        try:
            return await asyncio.to_thread(self._upload, body, path, exists, chmod, mtime)
        except _FS_ERRORS as e:
            raise self._error(e, path) from None

    def _upload(self, body: Body, path: str, exists: str, chmod: int | None, mtime: float | None) -> bool:
        with beneath.parent_of(self._base(), path, create=True, readable=True) as (parent, name):
            if exists != "replace" and _entry(parent, name):
                if exists == "fail":
                    raise Rejected(f"{self._abs(path)} already exists", instance=self.name, path=path)
                return False
            tmp = f".{cut_bytes(name, 200)}.{uuid.uuid4().hex[:12]}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666, dir_fd=parent)
            try:
                try:
                    if body.in_memory:
                        with open(fd, "wb", closefd=False) as out:
                            out.write(body.data())
                    else:
                        assert body.path is not None
                        _copy_file(body.path, fd)
                    if chmod is not None:
                        os.fchmod(fd, chmod)
                    if mtime is not None:
                        os.utime(fd, (mtime, mtime))
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.replace(tmp, name, src_dir_fd=parent, dst_dir_fd=parent)
                os.fsync(parent)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp, dir_fd=parent)
        return True

    async def remove(self, path: str) -> None:
        """Delete; already gone is fine. A symlink there is removed itself, never its target."""
        self._abs(path)
        try:
            await self._io.run(functools.partial(beneath.unlink, self._base(), path, None))
        except _FS_ERRORS as e:
            raise self._error(e, path) from None

    async def remove_listed(self, f: RemoteFile) -> bool:
        """Delete ``f`` if its name still holds the file the listing saw, unchanged; False (nothing
        deleted) when it holds another file, a changed one or a symlink by now. Already gone is
        fine (True)."""
        self._abs(f.path)
        try:
            return await self._io.run(functools.partial(beneath.unlink, self._base(), f.path, _version(f)))
        except _FS_ERRORS as e:
            raise self._error(e, f.path) from None

    async def rename(self, src: str, dst: str) -> None:
        """Move, creating the destination folder."""
        await self._rename(src, dst, None)

    async def rename_listed(self, f: RemoteFile, dst: str) -> bool:
        """Move ``f`` to ``dst`` if its name still holds the file the listing saw, unchanged; False
        (nothing moved) when it holds another file, a changed one, a symlink or nothing by now."""
        return await self._rename(f.path, dst, _version(f))

    async def _rename(self, src: str, dst: str, expect: Version | None) -> bool:
        self._abs(src)
        self._abs(dst)
        try:
            return await self._io.run(functools.partial(beneath.rename, self._base(), src, dst, expect))
        except _FS_ERRORS as e:
            raise self._error(e, src) from None


def _identity(f: RemoteFile) -> Identity | None:
    return (f.dev, f.ino) if isinstance(f, LocalFile) else None


def _version(f: RemoteFile) -> Version | None:
    return (f.dev, f.ino, f.size, f.mtime) if isinstance(f, LocalFile) else None


def _changed(st: os.stat_result, f: RemoteFile) -> str | None:
    """Why the opened file is not the version listed (its id names that version), or None."""
    if st.st_size != f.size:
        return f"'{f.path}' changed since it was listed ({st.st_size:,} bytes, listed {f.size:,})"
    if isinstance(f, LocalFile) and st.st_mtime != f.mtime:
        return f"'{f.path}' was modified since it was listed"
    return None


def _take(it: Iterator[os.DirEntry[str]], n: int) -> list[tuple[str, os.stat_result | None]]:
    """Up to ``n`` entries: a folder as (name, None), anything else with its lstat."""
    out: list[tuple[str, os.stat_result | None]] = []
    for entry in it:
        try:
            if entry.is_dir(follow_symlinks=False):
                out.append((entry.name, None))
            else:
                out.append((entry.name, entry.stat(follow_symlinks=False)))
        except FileNotFoundError:
            continue  # removed while listing
        if len(out) >= n:
            break
    return out


def _close_scan(it: Iterator[os.DirEntry[str]], fd: int) -> None:
    it.close()  # type: ignore[attr-defined]
    os.close(fd)


def _entry(parent: int, name: str) -> bool:
    """Whether anything has that name (a symlink counts, wherever it points)."""
    try:
        beneath.lstat_at(parent, name)
    except FileNotFoundError:
        return False
    return True


def _copy_file(src: Path, out: int) -> None:
    """``src`` into the descriptor ``out``, in the kernel where it can (sendfile), else by chunks."""
    with open(src, "rb") as fh:
        offset = 0
        try:
            while n := os.sendfile(out, fh.fileno(), offset, 1 << 30):
                offset += n
        except OSError as e:
            if offset or e.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                raise
            with open(out, "wb", closefd=False) as dst:
                shutil.copyfileobj(fh, dst, 1 << 20)
