"""``syncfs``: one flush of a whole file system, shared by the batch of small files a directory
target's writer thread has staged there, instead of one fsync per file."""

from __future__ import annotations

import os

from conveyor import libc


def _sync_fs(fd: int) -> None:
    syncfs = libc.function("syncfs", "c_int")
    if syncfs is not None:
        if syncfs(fd) != 0:
            err = libc.errno()
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
