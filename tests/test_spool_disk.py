"""A large body reaches the disk while it arrives, so the delivery's fsync does not find the whole
file still in memory: appended bodies go straight to the disk (``O_DIRECT``), bodies written at
offsets are handed to it every few MiB. Seen through the kernel's ``cachestat`` (Linux 6.5+),
which counts one file's pages in the page cache and the dirty ones among them."""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import random
from pathlib import Path

import pytest

import conveyor.payload.spool as spool_module
from conveyor.payload import Spool

MIB = 1024 * 1024
_CACHESTAT = 451  # the same number on every architecture (added after the tables were unified)


class _Range(ctypes.Structure):
    _fields_ = [("off", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class _Stat(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint64) for n in ("cache", "dirty", "writeback", "evicted", "recently_evicted")]


def cached(path: Path) -> _Stat:
    """How many of the file's pages are in the page cache, and dirty."""
    libc = ctypes.CDLL(None, use_errno=True)
    stat = _Stat()
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.syscall(_CACHESTAT, fd, ctypes.byref(_Range(0, 0)), ctypes.byref(stat), 0) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"cachestat: {os.strerror(err)}")
    finally:
        os.close(fd)
    return stat


def dirty_mib(path: Path) -> float:
    """The MiB of ``path`` in the page cache not yet handed to the disk."""
    return float(cached(path).dirty * os.sysconf("SC_PAGE_SIZE")) / MIB


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


def odd_pieces(data: bytes) -> list[bytes | memoryview]:
    """``data`` cut at random sizes, some as views (as the connectors hand them over)."""
    rng = random.Random(7)
    out: list[bytes | memoryview] = []
    at = 0
    while at < len(data):
        n = rng.choice([1, 100, 4095, 65536, 300_001, 1024 * 1024 + 1])
        piece = data[at : at + n]
        out.append(memoryview(bytearray(piece)) if rng.random() < 0.5 else piece)
        at += n
    return out


def append_and_check(tmp_path: Path, size: int) -> int:
    """Append ``size`` random bytes in odd pieces (the first MiB held in memory, then spilled),
    check the file's bytes and SHA-256, and return how many of its bytes were in the page cache
    before it was read back."""
    spool = Spool(tmp_path / "spool", threshold=MIB)
    spool.prepare()
    data = os.urandom(size)
    w = spool.writer()
    for piece in odd_pieces(data):
        w.write(piece)
    body = w.finish()
    try:
        assert body.path is not None
        in_cache = cached(Path(body.path)).cache * os.sysconf("SC_PAGE_SIZE")
        assert body.known_digest == hashlib.sha256(data).hexdigest()
        assert Path(body.path).read_bytes() == data
        return int(in_cache)
    finally:
        body.release()


def test_an_appended_body_goes_to_the_disk_not_through_the_page_cache(tmp_path: Path) -> None:
    """Everything but the last, partial block is written with O_DIRECT."""
    assert append_and_check(tmp_path, 9 * MIB + 12345) <= MIB


def test_without_direct_writes_the_body_goes_through_the_page_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the file system takes no O_DIRECT the same writer stays correct."""
    monkeypatch.setattr(spool_module, "_O_DIRECT", 0)
    assert append_and_check(tmp_path, 5 * MIB + 7) > 4 * MIB


def test_a_direct_write_refused_midway_goes_on_through_the_page_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file system that lets O_DIRECT be set but refuses the write (EINVAL) loses nothing."""
    real_write = os.write
    refused: list[int] = []

    def write(fd: int, data: object) -> int:
        if fcntl_flags(fd) & spool_module._O_DIRECT and not refused:
            refused.append(fd)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_write(fd, data)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "write", write)  # the os module the spool uses
    assert append_and_check(tmp_path, 6 * MIB + 99) > 4 * MIB  # the page cache from the first block on
    assert refused


def fcntl_flags(fd: int) -> int:
    import fcntl

    return fcntl.fcntl(fd, fcntl.F_GETFL)


def test_aligned_blocks_go_back_and_few_stay_mapped(tmp_path: Path) -> None:
    """Each writer holds at most its backlog's worth of aligned blocks and gives every one back
    when it finishes or aborts; of all given back, at most a few stay mapped for the next body."""
    spool = Spool(tmp_path / "spool", threshold=MIB)
    spool.prepare()
    writers = [spool.writer() for _ in range(3)]
    chunk = os.urandom(MIB // 2)
    for _ in range(60):  # 30 MiB each, interleaved: 3 x 18 blocks may be out at once
        for w in writers:
            w.write(chunk)
            assert w._held <= w._POOL
    bodies = [w.finish() for w in writers[:2]]
    writers[2].abort()
    try:
        assert [w._held for w in writers] == [0, 0, 0]
        assert len(spool_module._BLOCKS._free) <= spool_module._Blocks.KEEP
        for body in bodies:
            assert body.path is not None and Path(body.path).stat().st_size == 30 * MIB
    finally:
        for body in bodies:
            body.release()
