"""The spool: the folder where large bodies are written while they travel, and its writer."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import mmap
import os
import queue
import threading
import uuid
from pathlib import Path
from typing import Any

from conveyor.errors import ConveyorError, NoSpace, TooLarge, Transient
from conveyor.payload.body import Body
from conveyor.payload.writeback import start_writeback
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


_O_DIRECT: int = getattr(os, "O_DIRECT", 0)
"""Linux's flag for writes that go from the process's memory to the disk, bypassing the page cache."""

BLOCK = 1024 * 1024
"""What the spool's threads take at a time: gathered pieces, or one aligned block."""


class _Blocks:
    """Page-aligned blocks for ``O_DIRECT`` writes (an anonymous mapping is page-aligned), shared
    by every writer. A few are kept between downloads; the rest are unmapped, so a quiet daemon
    does not hold what a burst of large downloads needed."""

    KEEP = 32

    def __init__(self) -> None:
        self._free: list[mmap.mmap] = []
        self._lock = threading.Lock()

    def take(self) -> mmap.mmap:
        with self._lock:
            if self._free:
                return self._free.pop()
        return mmap.mmap(-1, BLOCK)

    def give(self, block: mmap.mmap) -> None:
        with self._lock:
            if len(self._free) < self.KEEP:
                self._free.append(block)
                return
        block.close()


_BLOCKS = _Blocks()

Piece = bytes | memoryview
"""A piece of a body handed to the spool's threads: bytes, or a view of bytes (immutable too)."""


class SpoolWriter:
    """Collects a body as it arrives, hashing on the way; spills to the spool past the threshold.

    Writes append, so a download that resumes after a dropped connection continues at
    :attr:`size` and the hash stays correct. Once spilled, the pieces are gathered into blocks
    of ``_BLOCK`` bytes, each hashed on one thread and written (one ``writev``) on another;
    hashlib and file writes release the GIL. The event loop that receives the download pays for
    neither, and SHA-256 runs while the page cache takes the previous block rather than before
    it. At most ``_BACKLOG`` bytes wait for the slower of the two. A write error poisons the
    writer (:attr:`failed`): the body must then be fetched again from the start, never resumed,
    since the count ran ahead of the disk.

    Appended bytes are copied into page-aligned blocks and written with ``O_DIRECT`` where the
    file system allows it: the disk takes them straight from the block, with no copy into the page
    cache (on a busy machine that copy cost more CPU than the rest of the download), and the
    delivery's fsync finds nothing left to write. The last, partial block is written through the
    page cache. Elsewhere (no ``O_DIRECT``, or the write refused) every write goes through the page
    cache, and the disk is told to start writing it every ``_WRITEBACK`` bytes.

    A download over several connections at once calls :meth:`positional` first and then
    :meth:`write_at`: each piece lands at its offset, :attr:`size` counts the bytes held and
    :meth:`missing` says which ranges a resume still has to fetch. SHA-256 is sequential, so
    the hashing thread reads the file back from the page cache as far as it is complete from
    the start, told by the writing thread after each write; with the pieces handed out in file
    order that frontier trails the fastest connection by a few parts, and little is left to
    hash at :meth:`finish`. When the frontier leaps (a first part done, the later ones already
    in), the writes go on meanwhile: the other connections are not held up by the hashing.
    """

    _BACKLOG = 16 * 1024 * 1024
    _BLOCK = BLOCK
    _WRITEBACK = 16 * 1024 * 1024
    """Start the disk writing what the spool holds each time this many more bytes were written:
    the delivery's fsync then finds little left to write (see :mod:`conveyor.payload.writeback`)."""
    _POOL = _BACKLOG // _BLOCK + 2
    """Aligned blocks one writer may hold at once: the backlog, plus the one filling and one being
    written. A writer that stalls holds only those not yet written."""

    def __init__(self, spool: Spool, limit: int | None = None, what: str = "the size limit") -> None:
        self._spool = spool
        self._limit = limit
        self._what = what
        self._buf: bytearray | None = bytearray()
        self.path: Path | None = None
        self._hash = hashlib.sha256()
        self.size = 0
        self._reserved = 0
        self._queue: queue.SimpleQueue[tuple[list[Piece], int, int, int, mmap.mmap | None] | None] | None = None
        """What to write: (pieces, bytes, offset or -1 to append, frontier, aligned block or None)."""
        self._hash_queue: queue.SimpleQueue[tuple[list[Piece], int, bool, int, mmap.mmap | None, int] | None] | None
        self._hash_queue = None
        """Blocks to hash (appending), or how far the file is complete from the start (positional):
        (pieces, bytes, already hashed, frontier or -1, aligned block or None, its bytes already hashed)."""
        self._block: list[Piece] = []
        """Appended pieces not yet handed to the threads, ``_blocked`` bytes (under ``_BLOCK``)."""
        self._blocked = 0
        self._ranges: list[tuple[int, int]] | None = None
        """Positional mode: the byte ranges written, sorted and disjoint (None: appending)."""
        self._fd = -1
        self._hashed = 0
        self._thread: threading.Thread | None = None
        self._hasher: threading.Thread | None = None
        self._cond = threading.Condition()
        self._queued = 0
        self._hash_queued = 0
        self._error: ConveyorError | None = None
        self._writing = threading.Lock()
        """Serializes writes: the parts of an FTP download arrive on a thread per data channel."""
        self._direct = False
        """Appending through aligned blocks (the file opened for ``O_DIRECT``, or it was)."""
        self._direct_on = False
        """``O_DIRECT`` still set on the file; only the writing thread changes it once started."""
        self._aligned: mmap.mmap | None = None
        """The block being filled, ``_filled`` bytes, of which the first ``_prehashed`` were hashed."""
        self._filled = 0
        self._prehashed = 0
        self._held = 0
        """Aligned blocks taken from the shared ones and not given back (under :attr:`_cond`)."""
        self._users: dict[int, int] = {}
        """Blocks handed to the threads: how many of the two still use each (by id)."""

    @property
    def failed(self) -> bool:
        """True when a spool write failed: the writer cannot be resumed."""
        return self._error is not None

    def write(self, data: bytes | memoryview) -> None:
        """Append bytes; raises NoSpace when the spool is full or its limit is reached."""
        with self._writing:
            self._write(data)

    def _write(self, data: bytes | memoryview) -> None:
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
            buffered, self._buf = self._buf, None
            self._reserve(len(buffered))
            self._spill()
            if self._direct:
                self._fill(buffered, hashed=True)  # the buffered bytes were hashed as they arrived
            else:
                self._push([bytes(buffered)], len(buffered), True)
            return
        self._reserve(len(data))  # before counting: a refused chunk is fetched again on resume
        self.size += len(data)
        if self._direct:
            self._fill(data, hashed=False)
            return
        if type(data) is not bytes and not (type(data) is memoryview and type(data.obj) is bytes):
            data = bytes(data)  # the caller may reuse its buffer before the threads are done with it
        self._block.append(data)
        self._blocked += len(data)
        if self._blocked >= self._BLOCK or len(self._block) >= 256:  # 256: well under writev's IOV_MAX
            self._flush_block()

    def _fill(self, data: bytes | bytearray | memoryview, hashed: bool) -> None:
        """Copy ``data`` into aligned blocks, handing each full one to the threads."""
        view = memoryview(data)
        with view:
            at = 0
            while at < len(view):
                if self._aligned is None:
                    self._aligned, self._filled, self._prehashed = self._take_block(), 0, 0
                k = min(len(view) - at, self._BLOCK - self._filled)
                with view[at : at + k] as part:
                    self._aligned[self._filled : self._filled + k] = part
                self._filled += k
                at += k
                if hashed:
                    self._prehashed = self._filled
                if self._filled == self._BLOCK:
                    self._push_aligned()

    def _take_block(self) -> mmap.mmap:
        """An aligned block; waits while this writer holds ``_POOL`` of them."""
        with self._cond:
            while self._held >= self._POOL and self._error is None:
                self._cond.wait()
            if self._error is not None:
                raise self._error
            self._held += 1
        return _BLOCKS.take()

    def _give_block(self, block: mmap.mmap) -> None:
        _BLOCKS.give(block)
        with self._cond:
            self._held -= 1
            self._cond.notify_all()

    def _push_aligned(self) -> None:
        """Hand the block being filled to the writing and hashing threads (the last one partial)."""
        block, n, skip = self._aligned, self._filled, self._prehashed
        assert block is not None and self._queue is not None and self._hash_queue is not None
        self._aligned = None
        with self._cond:
            self._users[id(block)] = 2
        self._hash_queue.put(([], n, True, -1, block, skip))
        self._queue.put(([], n, -1, -1, block))

    def _release(self, block: mmap.mmap) -> None:
        """One thread is done with ``block``: after both, it is free again."""
        with self._cond:
            left = self._users[id(block)] - 1
            if left:
                self._users[id(block)] = left
            else:
                del self._users[id(block)]
        if not left:
            self._give_block(block)

    def _flush_block(self) -> None:
        if self._aligned is not None:
            if self._filled:
                self._push_aligned()
            else:
                self._give_block(self._aligned)
                self._aligned = None
        if self._block:
            block, n = self._block, self._blocked
            self._block, self._blocked = [], 0
            self._push(block, n, False)

    def _push(self, block: list[Piece], n: int, hashed: bool) -> None:
        """Hand ``n`` appended bytes to the hashing and writing threads."""
        with self._cond:
            while max(self._queued, self._hash_queued) > self._BACKLOG and self._error is None:
                self._cond.wait()
            self._queued += n
            self._hash_queued += n
        assert self._queue is not None and self._hash_queue is not None
        self._hash_queue.put((block, n, hashed, -1, None, 0))
        self._queue.put((block, n, -1, -1, None))

    def positional(self, total: int) -> None:
        """Take the body's ``total`` bytes as pieces at offsets (:meth:`write_at`) from now on.

        Only before the first write; calling it again is a no-op (a resumed download).
        """
        if self._ranges is not None:
            return
        if self.size or self._buf is None:
            raise RuntimeError("positional() after bytes were appended")
        if self._limit is not None and total > self._limit:
            raise TooLarge(f"{total} bytes listed, over {self._what}: not read")
        self._buf = None
        self._ranges = []
        self._spill(positional=True)

    @property
    def segmented(self) -> bool:
        """True once :meth:`positional` was called."""
        return self._ranges is not None

    def write_at(self, offset: int, data: bytes | memoryview) -> None:
        """Write ``data`` at ``offset`` (positional mode); raises like :meth:`write`."""
        with self._writing:
            self._write_at(offset, data)

    def _write_at(self, offset: int, data: bytes | memoryview) -> None:
        if self._error is not None:
            raise self._error
        assert self._ranges is not None, "write_at() needs positional() first"
        if not data:
            return
        end = offset + len(data)
        if self._limit is not None and end > self._limit:
            raise TooLarge(f"more than {self._limit} bytes arrived, over {self._what}: the rest is not read")
        new = self._cover(offset, end)
        self._reserve(new)
        self.size += new
        if type(data) is not bytes and not (type(data) is memoryview and type(data.obj) is bytes):
            data = bytes(data)  # as in write(): a view of immutable bytes needs no copy
        first = self._ranges[0]
        frontier = first[1] if first[0] == 0 else 0
        with self._cond:
            while self._queued > self._BACKLOG and self._error is None:
                self._cond.wait()
            self._queued += len(data)
        assert self._queue is not None
        self._queue.put(([data], len(data), offset, frontier, None))

    def _cover(self, start: int, end: int) -> int:
        """Add [start, end) to the written ranges; the bytes it newly covers."""
        assert self._ranges is not None
        new = end - start
        s0, e0 = start, end
        keep: list[tuple[int, int]] = []
        for s, e in self._ranges:
            if e < s0 or s > e0:
                keep.append((s, e))
                continue
            new -= max(0, min(e, e0) - max(s, s0))  # ranges are disjoint: overlaps add up
            start, end = min(s, start), max(e, end)
        keep.append((start, end))
        keep.sort()
        self._ranges = keep
        return new

    def missing(self, total: int) -> list[tuple[int, int]]:
        """The ranges of [0, total) not written yet, in order (positional mode)."""
        assert self._ranges is not None
        gaps: list[tuple[int, int]] = []
        at = 0
        for s, e in self._ranges:
            if s > at:
                gaps.append((at, min(s, total)))
            at = max(at, e)
        if at < total:
            gaps.append((at, total))
        return [(s, e) for s, e in gaps if e > s]

    def _spill(self, positional: bool = False) -> None:
        self.path = self._spool.new_path()
        # 0600 whatever the umask; O_EXCL: the name is fresh, so anything already there was planted.
        mode = os.O_RDWR if positional else os.O_WRONLY
        fd = os.open(self.path, mode | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        self._fd = fd  # no buffering; in positional mode the hash reads back what was written
        if not positional and _O_DIRECT:
            try:
                fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | _O_DIRECT)
                self._direct = self._direct_on = True
            except OSError:
                pass  # the file system takes no O_DIRECT (tmpfs before Linux 6.6): through the page cache
        self._queue, self._hash_queue = queue.SimpleQueue(), queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name="conveyor-spool", daemon=True)
        self._thread.start()
        self._hasher = threading.Thread(target=self._hash_work, name="conveyor-hash", daemon=True)
        self._hasher.start()

    def _work(self) -> None:
        assert self._queue is not None and self._hash_queue is not None
        told = 0
        unsynced = 0
        while (job := self._queue.get()) is not None:
            block, n, offset, frontier, aligned = job
            if self._error is None:
                try:
                    if aligned is not None:
                        n = self._write_aligned(aligned, n)  # the pool bounds these, not the backlog
                    elif offset < 0:
                        _writev_all(self._fd, block, n)
                    else:
                        _pwrite_all(self._fd, block[0], offset)
                        if frontier > told:
                            told = frontier
                            self._hash_queue.put(([], 0, True, frontier, None, 0))
                    unsynced += n
                    if unsynced >= self._WRITEBACK:
                        unsynced = 0
                        start_writeback(self._fd)
                except OSError as e:
                    self._error = (
                        NoSpace(f"spool disk full at {self._spool.directory}")
                        if disk_full(e)
                        else Transient(f"spool write failed: {e.strerror or e}")
                    )
            if aligned is not None:
                self._release(aligned)
                continue
            with self._cond:
                self._queued -= n
                self._cond.notify_all()

    def _write_aligned(self, block: mmap.mmap, n: int) -> int:
        """Append the first ``n`` bytes of ``block``: a full block straight to the disk while the
        file takes ``O_DIRECT``, a partial one (the end of the body) through the page cache. The
        bytes that went through the page cache."""
        if self._direct_on and n == self._BLOCK:
            try:
                done = os.write(self._fd, block)
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise
                done = 0  # refused after all (an odd block size): through the page cache from now on
            if done == n:
                return 0
        else:
            done = 0
        if self._direct_on:
            fcntl.fcntl(self._fd, fcntl.F_SETFL, fcntl.fcntl(self._fd, fcntl.F_GETFL) & ~_O_DIRECT)
            self._direct_on = False
        with memoryview(block) as view, view[done:n] as rest:
            _writev_all(self._fd, [rest], n - done)
        return n - done

    def _hash_work(self) -> None:
        """SHA-256 beside the writing thread: of each appended block, or of the file read back
        up to each frontier the writing thread reports (positional mode)."""
        assert self._hash_queue is not None
        while (job := self._hash_queue.get()) is not None:
            block, n, hashed, frontier, aligned, skip = job
            if aligned is not None:
                if self._error is None:
                    if skip == 0 and n == self._BLOCK:
                        self._hash.update(aligned)
                    elif skip < n:
                        with memoryview(aligned) as view, view[skip:n] as part:
                            self._hash.update(part)
                self._release(aligned)
                continue
            if self._error is not None:
                pass
            elif frontier >= 0:
                try:
                    self._hash_to(frontier)
                except OSError as e:
                    self._error = Transient(f"spool read failed: {e.strerror or e}")
            elif not hashed:
                for piece in block:
                    self._hash.update(piece)
            with self._cond:
                self._hash_queued -= n
                self._cond.notify_all()

    def _hash_to(self, frontier: int) -> None:
        """Hash the file from where the hash stands to ``frontier`` (written, from the start)."""
        while self._hashed < frontier:
            chunk = os.pread(self._fd, min(1 << 20, frontier - self._hashed), self._hashed)
            if not chunk:
                raise OSError(errno.EIO, "spool file shorter than written")
            self._hash.update(chunk)
            self._hashed += len(chunk)

    def _join(self) -> None:
        self._flush_block()
        if self._thread is not None:  # the writer first: in positional mode it feeds the hasher
            assert self._queue is not None
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        if self._hasher is not None:
            assert self._hash_queue is not None
            self._hash_queue.put(None)
            self._hasher.join()
            self._hasher = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

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
        if self._ranges is not None and self._ranges != [(0, self.size)] and self.size:
            raise RuntimeError(f"finish() with ranges still missing: {self._ranges}")
        self._join()
        if self._error is not None:
            raise self._error
        assert self.path is not None
        body = _SpoolBody(self._spool, self._reserved, path=self.path, size=self.size, sha256=self._hash.hexdigest())
        self._reserved = 0
        return body

    def abort(self) -> None:
        """Drop what was written (download failed for good)."""
        self._block, self._blocked = [], 0
        if self._aligned is not None:
            self._give_block(self._aligned)
            self._aligned = None
        self._join()
        if self.path is not None:
            self.path.unlink(missing_ok=True)
        with self._spool.lock:
            self._spool.used -= self._reserved
        self._reserved = 0
        self._buf = None


def _writev_all(fd: int, block: list[Piece], n: int) -> None:
    """Write the pieces in one call; a short write (rare on a file) finishes piece by piece."""
    done = os.writev(fd, block)
    if done == n:
        return
    for piece in block:
        if done >= len(piece):
            done -= len(piece)
            continue
        view = memoryview(piece)[done:]
        done = 0
        while view:
            view = view[os.write(fd, view) :]


def _pwrite_all(fd: int, data: Piece, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


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
