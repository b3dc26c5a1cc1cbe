"""A payload's body: its bytes in memory, or a file on disk read in chunks."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

from conveyor.batched import ThreadCalls

CHUNK = 1024 * 1024


class Body:
    """The bytes of one payload: held in memory when small, a file on disk otherwise.

    ``owned`` files (spool files) are deleted by :meth:`release`; a file that belongs to
    someone else (a local source file read in place) is left alone.
    """

    def __init__(
        self,
        *,
        data: bytes | None = None,
        path: Path | None = None,
        size: int,
        sha256: str | None,
        owned: bool,
        fd: int | None = None,
        origin: str | None = None,
    ) -> None:
        self._data = data
        self.path = path
        self.size = size
        self._sha256 = sha256
        self._owned = owned
        self._fd = fd
        self.origin = origin
        """The file's own path when :attr:`path` is only a way to read it (a held descriptor)."""

    @classmethod
    def from_bytes(cls, data: bytes, sha256: str | None = None) -> Body:
        """A body held in memory (messages, small files); ``sha256`` if already computed."""
        return cls(data=data, size=len(data), sha256=sha256, owned=False)

    @classmethod
    def from_file(cls, path: Path, *, owned: bool, sha256: str | None = None) -> Body:
        """A body read from a file on disk; ``owned`` means release() deletes it."""
        return cls(path=path, size=path.stat().st_size, sha256=sha256, owned=owned)

    @classmethod
    def from_descriptor(cls, fd: int, size: int, *, origin: str) -> Body:
        """A file someone else owns, held open by ``fd`` until :meth:`release` and read through
        ``/proc/self/fd``: a rename, a replacement or a symlink swapped in for its name meanwhile
        cannot change what is read. ``origin`` is the file's own path."""
        return cls(path=Path(f"/proc/self/fd/{fd}"), size=size, sha256=None, owned=False, fd=fd, origin=origin)

    @property
    def owned(self) -> bool:
        """True for spool files, which conveyor may link, move or delete."""
        return self._owned and self.path is not None

    @property
    def in_memory(self) -> bool:
        """True when the whole body is in memory."""
        return self._data is not None

    def data(self) -> bytes:
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

    async def chunks(self, size: int = CHUNK) -> AsyncIterator[bytes]:
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
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)
        self._data = None


def hash_file(path: Path) -> str:
    """SHA-256 hex of a file, read in chunks (blocking: call from a worker thread)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()
