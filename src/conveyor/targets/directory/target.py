"""The ``directory`` target: body, then ``<name>.meta.json``, each appearing atomically.

Order of a delivery: both written under temporary names (one thread hop: check, copy while
hashing, sidecar) → one (group) sync so the bytes are durable → rename the body, then the
sidecar → one (group) sync so the names are durable → delivered. A reader that sees the
sidecar may read the body. A payload id that is already there (its sidecar names the same
id) is not written again.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import itertools
import json
import os
import re
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

from conveyor.batched import ThreadCalls
from conveyor.errors import NoSpace, Permanent, Rejected, Transient
from conveyor.interfaces import Context
from conveyor.names import name_fields, render, sanitise
from conveyor.payload.body import Body, hash_file
from conveyor.payload.payload import Payload
from conveyor.payload.spool import disk_full, remove_files
from conveyor.targets.directory.config import DirectoryTargetConfig
from conveyor.targets.directory.writer import BatchWriter
from conveyor.targets.folders import writable_folder
from conveyor.targets.fsync import GroupSync

_COUNTER = itertools.count()
_PID = [os.getpid()]
"""This process's id for temporary names, kept right across a fork: ``os.getpid`` is a system
call, too many to make once per message."""
os.register_at_fork(after_in_child=lambda: _PID.__setitem__(0, os.getpid()))
_SAFE_ID = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,199}$")

_SYNCS: dict[str, GroupSync] = {}


def _group_sync(folder: Path) -> GroupSync:
    key = str(folder)
    gs = _SYNCS.get(key)
    if gs is None:
        gs = _SYNCS[key] = GroupSync(key)
    return gs


class DirectoryTarget:
    """Writes payloads into a local folder."""

    def __init__(self, flow: str, config: DirectoryTargetConfig) -> None:
        self.flow = flow
        self.config = config
        self.folder = Path(config.path)
        self.where = f"directory {config.path}"
        self._dir = str(self.folder)
        """The folder as a string: per-payload paths are joined as strings, since pathlib's parsing
        would cost more than the writes' own Python work."""
        self._ready = False
        self._writer: BatchWriter | None = None

    def file_name(self, payload: Payload) -> str:
        """The body's file name for a payload (sanitised: it cannot leave the folder)."""
        if self.config.filename == "{id}" and _SAFE_ID.match(payload.id):
            return payload.id  # the default, and the hot path for messages
        fields = name_fields(payload.id, payload.name, self.flow)
        fields = {k: sanitise(v, payload.id) for k, v in fields.items()}
        return sanitise(render(self.config.filename, fields), payload.id)

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
        name = self.file_name(payload)
        tag = f"{_PID[0]}-{next(_COUNTER)}"
        tmp_body = f"{self._dir}/.{name[:200]}.{tag}.tmp"
        tmp_meta = f"{self._dir}/.{name[:200]}.{tag}.meta.tmp"

        def stage() -> Callable[[], None] | None:
            try:
                if not self._stage(payload, name, tmp_body, tmp_meta):
                    return None
            except BaseException:
                remove_files(tmp_body, tmp_meta)
                raise

            def publish() -> None:
                try:
                    self._publish(name, tmp_body, tmp_meta)
                except BaseException:
                    remove_files(tmp_body, tmp_meta)
                    raise
            return publish

        if payload.body.in_memory:
            # Small bodies: one batched round trip to the folder's writer thread.
            if self._writer is None:
                self._writer = BatchWriter(self.folder, self.config.fsync)
            await self._writer.run(stage)
            return
        # Large bodies stream on their own thread so they do not hold up the small ones.
        calls = ThreadCalls()
        try:
            publish = await calls.run(stage)
            if publish is None:
                return
            sync = _group_sync(self.folder) if self.config.fsync else None
            if sync:
                await sync.sync()
            await calls.run(publish)
            if sync:
                await sync.sync()
        except BaseException:
            # After the thread: a cancelled delivery's thread may still be writing them.
            calls.after(functools.partial(remove_files, tmp_body, tmp_meta))
            raise

    def _stage(self, payload: Payload, name: str, tmp_body: str, tmp_meta: str) -> bool:
        """On a worker thread: decide, write the body while hashing it, write the sidecar.
        False when nothing needs writing."""
        if not self._ready:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._ready = True
        dest = f"{self._dir}/{name}"
        if self.config.sidecar:
            existing = _sidecar_id(f"{dest}.meta.json")
            if existing == payload.id and os.path.exists(dest):
                return False  # already delivered: the same id written twice leaves one copy
            if existing is not None and existing != payload.id and self.config.exists != "replace":
                if self.config.exists == "fail":
                    raise Rejected(f"{name} already holds payload {existing}", path=dest)
                return False
        elif self.config.exists != "replace" and os.path.exists(dest):
            if self.config.exists == "fail":
                raise Rejected(f"{name} already exists", path=dest)
            return False
        sha = _write_body(payload.body, tmp_body)
        payload.body.set_digest(sha)
        if self.config.sidecar:
            # One line: json's C encoder does not indent, and its Python one is slow enough to
            # weigh on a small message's whole delivery.
            _write(tmp_meta, json.dumps(payload.metadata_with(sha)).encode() + b"\n")
        return True

    def _publish(self, name: str, tmp_body: str, tmp_meta: str) -> None:
        os.replace(tmp_body, f"{self._dir}/{name}")
        if self.config.sidecar:
            os.replace(tmp_meta, f"{self._dir}/{name}.meta.json")

    async def probe(self) -> str:
        """Whether the folder can be written, or created, writing nothing (for ``check --connect``)."""
        return await asyncio.to_thread(writable_folder, self.folder)

    async def close(self) -> None:
        """Stop the writer thread."""
        if self._writer is not None:
            self._writer.close()


_CREATE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC


def _write(path: str, data: bytes) -> None:
    """Create ``path`` holding ``data``. Through the file descriptor directly: ``open()`` adds
    an fstat, an isatty ioctl and an lseek, three more system calls per file."""
    fd = os.open(path, _CREATE, 0o666)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def _sidecar_id(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read())
    except (FileNotFoundError, ValueError):
        return None
    value = data.get("id") if isinstance(data, dict) else None
    return value if isinstance(value, str) else None


def _write_body(body: Body, dest: str) -> str:
    """Write the body to ``dest``; returns its SHA-256 (computed on the way unless known)."""
    if body.in_memory:
        data = body.data()
        _write(dest, data)
        return body.known_digest or hashlib.sha256(data).hexdigest()
    assert body.path is not None
    if body.owned and body.known_digest:
        # A spool file is ours alone: on the same file system a hard link costs nothing,
        # whatever the size. (Never for a source file read in place: a later write to it
        # would change the delivered copy too.)
        try:
            os.link(body.path, dest)
            return body.known_digest
        except OSError:
            pass
    if body.known_digest:
        shutil.copyfile(body.path, dest)  # in-kernel copy (copy_file_range/sendfile)
        return body.known_digest
    # Hash on a second thread while the kernel copies: both read the same cached pages, and
    # hashing (not copying) is the slower of the two.
    result: list[str | BaseException] = []

    def digest() -> None:
        try:
            assert body.path is not None
            result.append(hash_file(body.path))
        except BaseException as e:
            result.append(e)

    hasher = threading.Thread(target=digest, name="conveyor-hash", daemon=True)
    hasher.start()
    try:
        shutil.copyfile(body.path, dest)
    finally:
        hasher.join()
    if isinstance(result[0], BaseException):
        raise result[0]
    return result[0]


def create(flow: str, config: DirectoryTargetConfig, context: Context) -> DirectoryTarget:
    """The registry's factory: a directory target needs nothing from the daemon."""
    return DirectoryTarget(flow, config)
