"""``syncfs``: one flush of a whole file system, shared by the batch of small files a directory
target's writer thread has staged there, instead of one fsync per file."""

from __future__ import annotations

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
