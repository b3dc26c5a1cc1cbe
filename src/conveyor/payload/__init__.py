"""Payloads: body bytes plus metadata, with large bodies streamed through the spool on disk."""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import errno
import hashlib
import math
import os
import queue
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from conveyor.batched import ThreadCalls
from conveyor.errors import ConveyorError, NoSpace, Transient

CHUNK = 1024 * 1024


def utc_iso(ts: float | datetime | None = None) -> str:
    """An RFC 3339 UTC timestamp with milliseconds, as the metadata carries them."""
    if isinstance(ts, datetime):
        if ts.tzinfo is None:  # naive: local time, as astimezone() takes it
            return ts.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        ts = ts.timestamp()  # exact to well under a microsecond, which the rounding below restores
    # By hand, reusing the seconds' text: this runs twice per file on the event loop. The rounding
    # is datetime's (microseconds, half to even), then truncated to milliseconds as isoformat does.
    frac, whole = math.modf(time.time() if ts is None else ts)
    sec, us = int(whole), round(frac * 1e6)
    if us >= 1_000_000:
        sec, us = sec + 1, us - 1_000_000
    elif us < 0:
        sec, us = sec - 1, us + 1_000_000
    text = _seconds.get(sec)
    if text is None:
        if len(_seconds) >= 512:
            _seconds.clear()
        text = _seconds[sec] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
    return f"{text}.{us // 1000:03d}Z"


_seconds: dict[int, str] = {}
"""Whole seconds formatted by utc_iso lately: files of one folder share a few mtimes' seconds,
and received_at stays on the current one."""


class Body:
    """The bytes of one payload: held in memory when small, a file on disk otherwise.

    ``owned`` files (spool files) are deleted by :meth:`release`; a file that belongs to
    someone else (a local source file read in place) is left alone.
    """

    def __init__(
        self, *, data: bytes | None = None, path: Path | None = None, size: int, sha256: str | None, owned: bool
    ) -> None:
        self._data = data
        self.path = path
        self.size = size
        self._sha256 = sha256
        self._owned = owned

    @classmethod
    def from_bytes(cls, data: bytes, sha256: str | None = None) -> Body:
        """A body held in memory (messages, small files); ``sha256`` if already computed."""
        return cls(data=data, size=len(data), sha256=sha256, owned=False)

    @classmethod
    def from_file(cls, path: Path, *, owned: bool, sha256: str | None = None) -> Body:
        """A body read from a file on disk; ``owned`` means release() deletes it."""
        return cls(path=path, size=path.stat().st_size, sha256=sha256, owned=owned)

    @property
    def owned(self) -> bool:
        """True for spool files, which conveyor may link, move or delete."""
        return self._owned and self.path is not None

    @property
    def in_memory(self) -> bool:
        """True when the whole body is in memory."""
        return self._data is not None

    def bytes(self) -> builtins.bytes:
        """The whole body; only for bodies in memory (the caller checks :attr:`in_memory`)."""
        if self._data is None:
            raise RuntimeError("body is on disk; stream it with chunks()")
        return self._data

    @property
    def known_digest(self) -> str | None:
        """The SHA-256 if it was already computed (while downloading, say)."""
        return self._sha256

    def set_digest(self, sha256: str) -> None:
        """Record a digest computed elsewhere (while copying the body)."""
        self._sha256 = sha256

    async def digest(self) -> str:
        """SHA-256 hex of the body, computed once (in a thread for files)."""
        if self._sha256 is None:
            if self._data is not None:
                self._sha256 = hashlib.sha256(self._data).hexdigest()
            else:
                assert self.path is not None
                self._sha256 = await asyncio.to_thread(hash_file, self.path)
        return self._sha256

    async def chunks(self, size: int = CHUNK) -> AsyncIterator[builtins.bytes]:
        """The body in chunks; file reads happen in a thread so the loop never blocks on disk."""
        if self._data is not None:
            view = memoryview(self._data)
            for i in range(0, len(view), size):
                yield bytes(view[i : i + size])
            return
        assert self.path is not None
        f = open(self.path, "rb")  # noqa: ASYNC230, SIM115 (reads go through a thread; closed below)
        calls = ThreadCalls()
        try:
            while chunk := await calls.run(f.read, size):
                yield chunk
        finally:
            calls.after(f.close)  # not under a read that a cancelled consumer left running

    def release(self) -> None:
        """Free the body: delete its spool file if it owns one."""
        if self._owned and self.path is not None:
            self.path.unlink(missing_ok=True)
        self._data = None


def hash_file(path: Path) -> str:
    """SHA-256 hex of a file, read in chunks (blocking: call from a worker thread)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


class Spool:
    """The folder where bodies above ``threshold`` bytes are written while they travel.

    ``max_bytes`` caps what the spool may hold at once: past it, writers raise
    :class:`NoSpace` and intake pauses rather than filling the disk.
    """

    def __init__(self, directory: Path, threshold: int = 8 * 1024 * 1024, max_bytes: int | None = None) -> None:
        self.directory = directory
        self.threshold = threshold
        self.max_bytes = max_bytes
        self.used = 0

    def prepare(self) -> None:
        """Create the spool folder and remove what a crashed run left behind.

        Anything in the spool at start-up belongs to a payload that was never confirmed,
        so its source still has it and will hand it over again.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        for p in self.directory.glob("*.spool"):
            p.unlink(missing_ok=True)

    def writer(self) -> SpoolWriter:
        """A new writer that keeps small bodies in memory and spills large ones to disk."""
        return SpoolWriter(self)

    def new_path(self) -> Path:
        """A fresh file name in the spool."""
        return self.directory / f"{uuid.uuid4().hex}.spool"


class SpoolWriter:
    """Collects a body as it arrives, hashing on the way; spills to the spool past the threshold.

    Writes append, so a download that resumes after a dropped connection continues at
    :attr:`size` and the hash stays correct. Once spilled, hashing and file writes run on a
    thread of the writer's own (hashlib and file writes release the GIL), so the event loop
    that decrypts the download does not also pay for SHA-256; at most ``_BACKLOG`` bytes wait
    for that thread. A write error there poisons the writer (:attr:`failed`): the body must
    then be fetched again from the start, never resumed, since the count ran ahead of the disk.
    """

    _BACKLOG = 16 * 1024 * 1024

    def __init__(self, spool: Spool) -> None:
        self._spool = spool
        self._buf: bytearray | None = bytearray()
        self._file: Any = None
        self.path: Path | None = None
        self._hash = hashlib.sha256()
        self.size = 0
        self._reserved = 0
        self._queue: queue.SimpleQueue[tuple[builtins.bytes, bool] | None] | None = None
        self._thread: threading.Thread | None = None
        self._cond = threading.Condition()
        self._queued = 0
        self._error: ConveyorError | None = None

    @property
    def failed(self) -> bool:
        """True when a spool write failed: the writer cannot be resumed."""
        return self._error is not None

    def write(self, data: builtins.bytes) -> None:
        """Append bytes; raises NoSpace when the spool is full or its limit is reached."""
        if self._error is not None:
            raise self._error
        if not data:
            return
        if self._buf is not None:
            self._hash.update(data)
            self.size += len(data)
            self._buf += data
            if len(self._buf) <= self._spool.threshold:
                return
            data, self._buf = builtins.bytes(self._buf), None
            self._reserve(len(data))
            self._spill()
            hashed = True  # the buffered bytes were hashed as they arrived
        else:
            hashed = False
            self._reserve(len(data))  # before counting: a refused chunk is fetched again on resume
            self.size += len(data)
            if type(data) is not builtins.bytes:
                data = builtins.bytes(data)  # the caller may reuse its buffer before the thread writes it
        with self._cond:
            while self._queued > self._BACKLOG and self._error is None:
                self._cond.wait()
            self._queued += len(data)
        assert self._queue is not None
        self._queue.put((data, hashed))

    def _spill(self) -> None:
        self.path = self._spool.new_path()
        self._file = open(self.path, "wb")  # noqa: SIM115 (closed by the worker)
        self._queue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name="conveyor-spool", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        assert self._queue is not None
        while (job := self._queue.get()) is not None:
            data, hashed = job
            if self._error is None:
                try:
                    if not hashed:
                        self._hash.update(data)
                    self._file.write(data)
                except OSError as e:
                    self._error = (NoSpace(f"spool disk full at {self._spool.directory}") if disk_full(e)
                                   else Transient(f"spool write failed: {e.strerror or e}"))
            with self._cond:
                self._queued -= len(data)
                self._cond.notify_all()
        self._file.close()

    def _join(self) -> None:
        if self._thread is not None:
            assert self._queue is not None
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def _reserve(self, n: int) -> None:
        sp = self._spool
        if sp.max_bytes is not None and sp.used + n > sp.max_bytes:
            raise NoSpace(f"spool limit reached ({sp.used} of {sp.max_bytes} bytes in use)")
        sp.used += n
        self._reserved += n

    def finish(self) -> Body:
        """Close the writer and hand over the body (waits for the spool thread's backlog)."""
        if self._buf is not None:
            body = Body(data=builtins.bytes(self._buf), size=self.size, sha256=self._hash.hexdigest(), owned=False)
            self._buf = None
            return body
        self._join()
        if self._error is not None:
            raise self._error
        assert self.path is not None
        body = _SpoolBody(self._spool, self._reserved, path=self.path, size=self.size, sha256=self._hash.hexdigest())
        self._reserved = 0
        return body

    def abort(self) -> None:
        """Drop what was written (download failed for good)."""
        self._join()
        if self.path is not None:
            self.path.unlink(missing_ok=True)
        self._spool.used -= self._reserved
        self._reserved = 0
        self._buf = None


class _SpoolBody(Body):
    """A body in a spool file; releasing it gives its bytes back to the spool's budget."""

    def __init__(self, spool: Spool, reserved: int, **kw: Any) -> None:
        super().__init__(owned=True, **kw)
        self._spool_ref = spool
        self._reserved = reserved

    def release(self) -> None:
        super().release()
        self._spool_ref.used -= self._reserved
        self._reserved = 0


@dataclass
class Payload:
    """One file or message moving through a flow."""

    id: str
    flow: str
    source_instance: str
    source_type: str
    body: Body
    name: str | None = None
    file: dict[str, Any] | None = None
    message: dict[str, Any] | None = None
    received_at: str = field(default_factory=utc_iso)
    content_type: str = "application/octet-stream"

    async def metadata(self) -> dict[str, Any]:
        """The metadata document every target delivers beside the body (id, flow, source, size, sha256...)."""
        return self.metadata_with(await self.body.digest())

    def metadata_with(self, sha256: str) -> dict[str, Any]:
        """The metadata document, given the body's digest (for callers that hash while copying)."""
        return {
            "id": self.id,
            "flow": self.flow,
            "source": {"instance": self.source_instance, "type": self.source_type},
            "received_at": self.received_at,
            "size": self.body.size,
            "sha256": sha256,
            "name": self.name,
            "file": self.file,
            "message": self.message,
        }


def stable_id(*parts: object) -> str:
    """A 32-hex-digit id derived from the parts (file id: instance, path, size, mtime)."""
    h = hashlib.sha256()
    for p in parts:
        h.update(repr(p).encode())
        h.update(b"\0")
    return h.hexdigest()[:32]


def disk_full(e: OSError) -> bool:
    """Whether an OSError means the disk is full."""
    return e.errno in (errno.ENOSPC, errno.EDQUOT)


def remove_files(*paths: str) -> None:
    """Delete each file; one already gone is fine."""
    for p in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(p)


__all__ = ["CHUNK", "Body", "Payload", "Spool", "SpoolWriter", "disk_full", "hash_file", "remove_files", "stable_id",
           "utc_iso"]
