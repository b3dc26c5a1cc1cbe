"""Segmented SFTP downloads: one large file read over several sessions at once, each part written
at its offset into the spool, resumed after a cut, with the right SHA-256."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from conveyor.errors import Transient
from conveyor.payload import Spool, SpoolWriter
from conveyor.transfer.segments import AUTO_STREAMS, SEGMENT_FROM, auto_streams
from conveyor.transfer.sftp.instance import BLOCK, MAX_WINDOW, SEND_BATCH, WINDOW, read_depth, send_batch
from tests.backends.sftp import *  # noqa: F403  (the server fixtures)
from tests.backends.sftp import SftpBackend
from tests.segments import fetch, finished
from tests.tcp_proxy import TcpProxy
from tests.test_sftp_faults import make, pattern_file

MIB = 1024 * 1024


@pytest.fixture(params=["asyncssh", "openssh"])
def backend(request: pytest.FixtureRequest) -> SftpBackend:
    """Each test runs against both servers."""
    b: SftpBackend = request.getfixturevalue(f"sftp_{request.param}_backend")
    return b


def writer(tmp_path: Path) -> SpoolWriter:
    spool = Spool(tmp_path / "spool", threshold=MIB)
    spool.prepare()
    return spool.writer()


# --------------------------------------------------------------------------- the spool's positional writes
async def test_spool_pieces_out_of_order_hash_as_a_whole(tmp_path: Path) -> None:
    data = os.urandom(5 * MIB + 123)
    w = writer(tmp_path)
    w.positional(len(data))
    pieces = [(o, data[o : o + 700_000]) for o in range(0, len(data), 700_000)]
    for o, piece in reversed(pieces[1:]):
        w.write_at(o, piece)
    assert w.missing(len(data)) == [(0, 700_000)]
    assert w.size == len(data) - 700_000
    w.write_at(0, data[:700_000])
    w.write_at(1000, data[1000:2000])  # written twice: counted once
    assert w.missing(len(data)) == [] and w.size == len(data)
    body = w.finish()
    assert await body.digest() == hashlib.sha256(data).hexdigest()
    assert Path(str(body.path)).read_bytes() == data
    body.release()


def test_spool_positional_gaps_and_limit(tmp_path: Path) -> None:
    w = writer(tmp_path)
    w.positional(10 * MIB)
    w.write_at(2 * MIB, b"x" * MIB)
    w.write_at(6 * MIB, b"y" * MIB)
    assert w.missing(10 * MIB) == [(0, 2 * MIB), (3 * MIB, 6 * MIB), (7 * MIB, 10 * MIB)]
    with pytest.raises(RuntimeError, match="missing"):
        w.finish()
    w.abort()
    spool = Spool(tmp_path / "spool2", threshold=MIB)
    spool.prepare()
    from conveyor.errors import TooLarge

    with pytest.raises(TooLarge, match="max_file_size"):
        spool.writer(limit=MIB, what="max_file_size").positional(2 * MIB)


def test_send_batch_follows_the_round_trip() -> None:
    """Near the server, read requests go out half the pipeline at a time; further away fewer,
    so that the requests still in flight carry the stream's rate; far away, one at a time."""
    assert send_batch(None, WINDOW) == SEND_BATCH
    assert send_batch(0.0002, WINDOW) == WINDOW // 2  # loopback
    assert 1 < send_batch(0.02, read_depth(0.02)) < WINDOW // 2  # 20 ms
    assert send_batch(0.05, read_depth(0.05)) == 1  # 50 ms: the pipeline is sized to the round trip


def test_read_depth_follows_the_round_trip() -> None:
    assert read_depth(None) == WINDOW
    assert read_depth(0.0002) == WINDOW  # loopback: the default
    assert WINDOW < read_depth(0.05) < MAX_WINDOW  # 50 ms: deeper
    assert read_depth(0.05) * BLOCK >= 6 * MIB
    assert read_depth(2.0) == MAX_WINDOW  # bounded whatever the distance


def test_auto_streams_follow_the_round_trip() -> None:
    """More connections as the server is farther: each carries about one TCP (or SSH) window per
    round trip, so the count grows with the round trip, up to AUTO_STREAMS and max_connections."""
    gib = 1024 * MIB
    assert auto_streams(gib, None, 8) == 1  # not known
    assert auto_streams(gib, 0.0002, 8) == 1  # loopback: one connection outruns the CPU
    assert auto_streams(SEGMENT_FROM - 1, 0.1, 8) == 1  # small
    assert auto_streams(gib, 0.012, 8) == 2
    assert auto_streams(gib, 0.05, 8) > auto_streams(gib, 0.025, 8) > 2
    assert auto_streams(gib, 0.05, 8) >= 5  # more than lftp's `pget -n 4` at 50 ms
    assert auto_streams(gib, 0.1, 8) == AUTO_STREAMS == 8
    assert auto_streams(gib, 0.1, 3) == 3  # never past max_connections
    assert auto_streams(2 * SEGMENT_FROM, 0.1, 8) == 4  # a part of at least 32 MiB each


# --------------------------------------------------------------------------- against real servers
async def test_segmented_download_right_bytes_and_sha256(backend: SftpBackend, tmp_path: Path) -> None:
    digest = pattern_file(backend, "big.bin", 37 * MIB + 4321)  # parts of 8 MiB and a short last one
    inst, _ = make(backend, streams=4)
    try:
        assert (await fetch(inst, writer(tmp_path), digest)).segmented
        assert inst.pool.handshakes == 4, "read over four sessions"
    finally:
        await inst.close()


async def test_streams_bounded_by_max_connections(sftp_openssh_backend: SftpBackend, tmp_path: Path) -> None:
    b = sftp_openssh_backend
    digest = pattern_file(b, "big.bin", 30 * MIB)
    inst, _ = make(b, streams=8, max_connections=2)
    try:
        assert (await fetch(inst, writer(tmp_path), digest)).segmented
        assert inst.pool.handshakes == 2
    finally:
        await inst.close()


async def test_one_stream_reads_in_order_as_before(backend: SftpBackend, tmp_path: Path) -> None:
    digest = pattern_file(backend, "big.bin", 30 * MIB)
    inst, _ = make(backend, streams=1)
    try:
        assert not (await fetch(inst, writer(tmp_path), digest)).segmented
        assert inst.pool.handshakes == 1
    finally:
        await inst.close()


async def test_cut_mid_segment_resumes_the_missing_parts(backend: SftpBackend, tmp_path: Path) -> None:
    size = 40 * MIB
    digest = pattern_file(backend, "big.bin", size)
    async with TcpProxy("127.0.0.1", backend.port) as proxy:
        inst, board = make(backend, port=proxy.port, streams=4)
        try:
            f = await inst.stat("big.bin")
            assert f is not None
            w = writer(tmp_path)
            proxy.cut_after(12 * MIB)
            with pytest.raises(Transient):
                await inst.download(f, w)
            assert w.segmented and 0 < w.size < size, "some parts arrived before the cut"
            missing = sum(e - s for s, e in w.missing(size))
            assert missing == size - w.size
            before = proxy.bytes_down
            await inst.download(f, w)  # only the missing ranges, on new sessions
            assert proxy.bytes_down - before < missing + 2 * MIB, "only the rest was fetched"
            await finished(w, size, digest)
        finally:
            await inst.close()
    assert board.instances["partner"].state == "up"


async def test_segmented_file_grown_is_transient(sftp_openssh_backend: SftpBackend, tmp_path: Path) -> None:
    b = sftp_openssh_backend
    pattern_file(b, "big.bin", 20 * MIB)
    inst, _ = make(b, streams=3)
    try:
        f = await inst.stat("big.bin")
        assert f is not None
        with open(b.folder / "big.bin", "ab") as out:  # noqa: ASYNC230 (a test's few bytes)
            out.write(b"more")
        w = writer(tmp_path)
        with pytest.raises(Transient, match="more than the listed"):
            await inst.download(f, w)
        w.abort()
    finally:
        await inst.close()


async def test_daemon_segmented_download_survives_cuts(sftp_openssh_backend: SftpBackend, tmp_path: Path) -> None:
    """End to end: a flow reading a 40 MiB file over four sessions through a proxy that cuts every
    connection twice delivers it once, whole, with its SHA-256 in the sidecar."""
    from tests.harness import bodies, running, sidecars, wait_for, write_config

    b = sftp_openssh_backend
    digest = pattern_file(b, "in/big.bin", 40 * MIB)
    out = tmp_path / "out"
    async with TcpProxy("127.0.0.1", b.port) as proxy:
        proxy.cut_after(10 * MIB)
        flow = {
            "source": {"instance": "remote", "path": "in", "poll_interval": "200ms", "min_age": "0s"}
            | {"after": "delete"},
            "target": {"type": "directory", "path": str(out)},
            "retry": {"attempts": 10, "backoff": "100ms", "max_backoff": "500ms"},
        }
        cfg = write_config(tmp_path, {"remote": b.instance_config(port=proxy.port, streams=4)}, {"f": flow})
        async with running(cfg):
            await wait_for(lambda: proxy.bytes_down > 11 * MIB, 30)
            proxy.cut_after(15 * MIB)
            await wait_for(lambda: len(bodies(out)) == 1, 60)
            await wait_for(lambda: b.names("in") == [], 20)
    got = bodies(out)
    assert [hashlib.sha256(v).hexdigest() for v in got.values()] == [digest]
    assert [s["sha256"] for s in sidecars(out)] == [digest]
