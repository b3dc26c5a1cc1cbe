"""The spool: the folder where large bodies are written while they travel, and its writer."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import queue
import threading
import uuid
from pathlib import Path
from typing import Any

from conveyor.errors import ConveyorError, NoSpace, TooLarge, Transient
from conveyor.payload.body import Body
from conveyor.private import private_dirs


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
        self.lock = threading.Lock()
        """Guards :attr:`used`: steps write spool files from worker threads."""

    def prepare(self) -> None:
        """Create the spool folder and remove what a crashed run left behind.

        Anything in the spool at start-up belongs to a payload that was never confirmed,
        so its source still has it and will hand it over again. The folder is the daemon's
        alone (0700, whatever the umask): bodies in it are partners' files and messages.
        """
        private_dirs(self.directory)
        for p in self.directory.glob("*.spool"):
            p.unlink(missing_ok=True)

    def writer(self, limit: int | None = None, what: str = "the size limit") -> SpoolWriter:
        """A new writer that keeps small bodies in memory and spills large ones to disk; past
        ``limit`` bytes it raises :class:`TooLarge`, naming the setting ``what``."""
        return SpoolWriter(self, limit, what)

    def new_path(self) -> Path:
        """A fresh file name in the spool."""
        return self.directory / f"{uuid.uuid4().hex}.spool"

    def adopt(self, path: Path) -> Body:
        """A body for a spool file written by another program (gpg), counted in the budget from
        now on; over :attr:`max_bytes` the file is deleted and :class:`NoSpace` raised."""
        size = path.stat().st_size
        with self.lock:
            if self.max_bytes is not None and self.used + size > self.max_bytes:
                path.unlink(missing_ok=True)
                raise NoSpace(f"spool limit reached ({self.used} of {self.max_bytes} bytes in use)")
            self.used += size
        return _SpoolBody(self, size, path=path, size=size, sha256=None)


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

    def __init__(self, spool: Spool, limit: int | None = None, what: str = "the size limit") -> None:
        self._spool = spool
        self._limit = limit
        self._what = what
        self._buf: bytearray | None = bytearray()
        self._file: Any = None
        self.path: Path | None = None
        self._hash = hashlib.sha256()
        self.size = 0
        self._reserved = 0
        self._queue: queue.SimpleQueue[tuple[bytes, bool] | None] | None = None
        self._thread: threading.Thread | None = None
        self._cond = threading.Condition()
        self._queued = 0
        self._error: ConveyorError | None = None

    @property
    def failed(self) -> bool:
        """True when a spool write failed: the writer cannot be resumed."""
        return self._error is not None

    def write(self, data: bytes) -> None:
        """Append bytes; raises NoSpace when the spool is full or its limit is reached."""
        if self._error is not None:
            raise self._error
        if not data:
            return
        if self._limit is not None and self.size + len(data) > self._limit:
            raise TooLarge(f"more than {self._limit} bytes arrived, over {self._what}: the rest is not read")
        if self._buf is not None:
            self._hash.update(data)
            self.size += len(data)
            self._buf += data
            if len(self._buf) <= self._spool.threshold:
                return
            data, self._buf = bytes(self._buf), None
            self._reserve(len(data))
            self._spill()
            hashed = True  # the buffered bytes were hashed as they arrived
        else:
            hashed = False
            self._reserve(len(data))  # before counting: a refused chunk is fetched again on resume
            self.size += len(data)
            if type(data) is not bytes:
                data = bytes(data)  # the caller may reuse its buffer before the thread writes it
        with self._cond:
            while self._queued > self._BACKLOG and self._error is None:
                self._cond.wait()
            self._queued += len(data)
        assert self._queue is not None
        self._queue.put((data, hashed))

    def _spill(self) -> None:
        self.path = self._spool.new_path()
        # 0600 whatever the umask; O_EXCL: the name is fresh, so anything already there was planted.
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        self._file = os.fdopen(fd, "wb")
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
                    self._error = (
                        NoSpace(f"spool disk full at {self._spool.directory}")
                        if disk_full(e)
                        else Transient(f"spool write failed: {e.strerror or e}")
                    )
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
        with sp.lock:
            if sp.max_bytes is not None and sp.used + n > sp.max_bytes:
                raise NoSpace(f"spool limit reached ({sp.used} of {sp.max_bytes} bytes in use)")
            sp.used += n
        self._reserved += n

    def finish(self) -> Body:
        """Close the writer and hand over the body (waits for the spool thread's backlog)."""
        if self._buf is not None:
            body = Body(data=bytes(self._buf), size=self.size, sha256=self._hash.hexdigest(), owned=False)
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
        with self._spool.lock:
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
        with self._spool_ref.lock:
            self._spool_ref.used -= self._reserved
        self._reserved = 0


def disk_full(e: OSError) -> bool:
    """Whether an OSError means the disk is full."""
    return e.errno in (errno.ENOSPC, errno.EDQUOT)


def remove_files(*paths: str) -> None:
    """Delete each file; one already gone is fine."""
    for p in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(p)
