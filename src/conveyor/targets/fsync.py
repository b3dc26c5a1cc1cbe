"""Group fsync: many concurrent deliveries share one ``syncfs`` instead of one fsync each.

Durability still holds for every caller: ``await sync()`` returns only after a sync that
*started after the call* finished, so everything the caller wrote before calling is on disk.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import os

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_syncfs = getattr(_libc, "syncfs", None)


def _sync_fs(fd: int) -> None:
    if _syncfs is not None:
        if _syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
    else:  # not Linux: flush everything
        os.sync()


def sync_fd(fd: int) -> None:
    """Flush the file system holding the open file or folder ``fd`` (blocking)."""
    _sync_fs(fd)


def sync_folder(folder: str | os.PathLike[str]) -> None:
    """Flush the file system holding ``folder`` (blocking: call from a worker thread). Only a
    folder is opened, and a symlink in its place is not followed: a FIFO or a link put there
    must neither block this thread nor send the sync to another file system."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        _sync_fs(fd)
    finally:
        os.close(fd)


class GroupSync:
    """Coalesces sync requests for one file system (named by a folder on it)."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self._lock = asyncio.Lock()
        self._started = 0
        self._done = 0

    async def sync(self) -> None:
        """Return once everything written before this call is durable.

        Syncs are numbered; a caller needs one numbered above the count started when it
        called. Callers queued behind a running sync are all served by the next one.
        """
        ticket = self._started + 1
        async with self._lock:
            if self._done >= ticket:
                return
            self._started += 1
            number = self._started
            await asyncio.to_thread(sync_folder, self.folder)
            self._done = number
