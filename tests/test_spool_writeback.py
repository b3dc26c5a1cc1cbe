"""The spool starts the disk writing a large body while it arrives, so the delivery's fsync
does not find the whole file still in memory. Seen through the kernel's ``cachestat`` (Linux
6.5+), which counts one file's dirty pages."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import pytest

from conveyor.payload import Spool

MIB = 1024 * 1024
_CACHESTAT = 451  # the same number on every architecture (added after the tables were unified)


class _Range(ctypes.Structure):
    _fields_ = [("off", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class _Stat(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint64) for n in ("cache", "dirty", "writeback", "evicted", "recently_evicted")]


def dirty_mib(path: Path) -> float:
    """The MiB of ``path`` in the page cache not yet handed to the disk."""
    libc = ctypes.CDLL(None, use_errno=True)
    stat = _Stat()
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.syscall(_CACHESTAT, fd, ctypes.byref(_Range(0, 0)), ctypes.byref(stat), 0) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"cachestat: {os.strerror(err)}")
    finally:
        os.close(fd)
    return stat.dirty * os.sysconf("SC_PAGE_SIZE") / MIB


@pytest.mark.parametrize("mode", ["append", "positional"])
def test_a_large_body_is_handed_to_the_disk_while_it_arrives(tmp_path: Path, mode: str) -> None:
    spool = Spool(tmp_path / "spool", threshold=MIB)
    spool.prepare()
    w = spool.writer()
    size = 64 * MIB
    piece = os.urandom(256 * 1024)
    if mode == "positional":
        w.positional(size)
    for offset in range(0, size, len(piece)):
        if mode == "positional":
            w.write_at(offset, piece)
        else:
            w.write(piece)
    body = w.finish()
    try:
        assert body.path is not None and Path(body.path).stat().st_size == size
        # Without the writeback all 64 MiB would still be dirty: the kernel here writes back
        # only past a tenth of memory or after 30 s. With it, at most the last 16 MiB are.
        assert dirty_mib(Path(body.path)) <= 17
    finally:
        body.release()


def test_the_dirty_page_count_sees_a_file_nobody_wrote_back(tmp_path: Path) -> None:
    """The measure above is sound: a file written plainly keeps its pages dirty."""
    path = tmp_path / "plain"
    path.write_bytes(os.urandom(32 * MIB))
    assert dirty_mib(path) >= 31
