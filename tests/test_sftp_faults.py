"""The sftp connector under faults: connections cut mid-download, stalls, restarts, a 1 GiB file."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any

import pytest

from conveyor.errors import Transient
from conveyor.payload import Spool, SpoolWriter
from conveyor.status import StatusBoard
from conveyor.supervisor import retries
from conveyor.transfer.sftp.config import SftpConfig
from conveyor.transfer.sftp.instance import SftpInstance
from tests.backends.ftp import FtpBackend
from tests.backends.sftp import *  # noqa: F403  (the server fixtures)
from tests.backends.sftp import SftpBackend
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.fault


@pytest.fixture(params=["asyncssh", "openssh"])
def backend(request: pytest.FixtureRequest) -> SftpBackend:
    """Each test runs against both servers."""
    b: SftpBackend = request.getfixturevalue(f"sftp_{request.param}_backend")
    return b


def make(backend: SftpBackend, **over: Any) -> tuple[SftpInstance, StatusBoard]:
    from conveyor.interfaces import Context

    cfg = SftpConfig.model_validate(backend.instance_config(**over))
    board = StatusBoard()
    board.add_instance("partner", "sftp", cfg.describe())
    return SftpInstance("partner", cfg, Context(spool=Spool(Path("/nonexistent")), status=board)), board


def pattern_file(backend: SftpBackend | FtpBackend, path: str, size: int) -> str:
    """Write a file of ``size`` bytes (a random 1 MiB block repeated); return its sha256."""
    block = os.urandom(1 << 20)
    h = hashlib.sha256()
    backend.put(path, b"")
    with open(backend.folder / path, "wb") as f:
        left = size
        while left:
            piece = block[: min(left, len(block))]
            f.write(piece)
            h.update(piece)
            left -= len(piece)
    return h.hexdigest()


async def test_cut_mid_download_resumes(backend: SftpBackend, tmp_path: Path) -> None:
    size = 24 * 1024 * 1024
    digest = pattern_file(backend, "big.bin", size)
    async with TcpProxy("127.0.0.1", backend.port) as proxy:
        inst, board = make(backend, port=proxy.port)
        try:
            f = await inst.stat("big.bin")
            assert f is not None
            spool = Spool(tmp_path / "spool", threshold=1 << 20)
            spool.prepare()
            w: SpoolWriter = spool.writer()
            proxy.cut_after(6 * 1024 * 1024)
            with pytest.raises(Transient):
                await inst.download(f, w)
            assert 0 < w.size < size, "some bytes arrived before the cut"
            resumed_at, before = w.size, proxy.bytes_down
            await inst.download(f, w)  # the retry resumes at w.size on a new connection
            assert proxy.bytes_down - before < size - resumed_at + 1024 * 1024, "only the rest was fetched"
            body = w.finish()
            assert body.size == size and await body.digest() == digest
            assert proxy.connections >= 2  # the first session, the reconnect
            body.release()
        finally:
            await inst.close()
    assert board.instances["partner"].state == "up"
    # The host key of the last connection, as the status page shows it.
    assert "SHA256:" in (board.instances["partner"].identity or "")


async def test_stall_times_out(sftp_asyncssh_backend: SftpBackend, tmp_path: Path) -> None:
    b = sftp_asyncssh_backend
    b.put("in/a.csv", b"a")
    async with TcpProxy("127.0.0.1", b.port) as proxy:
        inst, _ = make(b, port=proxy.port, timeout="1s")
        try:
            assert [x.path async for x in inst.list("in", False)] == ["in/a.csv"]
            proxy.pause()
            t0 = time.monotonic()
            with pytest.raises(Transient, match="no answer within 1s"):
                [x async for x in inst.list("in", False)]
            assert time.monotonic() - t0 < 3
            proxy.resume()
            proxy.cut()
            # the stalled session was dropped: the next poll reconnects and works
            assert [x.path async for x in inst.list("in", False)] == ["in/a.csv"]
            assert inst.pool.handshakes == 2
        finally:
            await inst.close()


async def test_server_restart_between_polls(sftp_asyncssh_backend: SftpBackend, tmp_path: Path) -> None:
    """The server drops every connection (a restart): one poll fails Transient, the next reconnects."""
    b = sftp_asyncssh_backend
    b.put("in/a.csv", b"a")
    inst, board = make(b)
    try:
        assert len([x async for x in inst.list("in", False)]) == 1
        b.server.drop_all()  # type: ignore[union-attr]
        ok = False
        for _ in range(2):
            try:
                assert len([x async for x in inst.list("in", False)]) == 1
                ok = True
                break
            except Transient:
                continue
        assert ok
        assert board.instances["partner"].state == "up"
    finally:
        await inst.close()


@pytest.mark.parametrize("mode", ["fingerprint", "check-off"])
async def test_refused_connection_then_recovery(sftp_asyncssh_backend: SftpBackend, mode: str) -> None:
    """A server that accepts TCP and drops it at once (a restarting server behind a balancer)."""
    b = sftp_asyncssh_backend
    over: dict[str, Any] = {"host_fingerprint": None, "host_key_check": "off"} if mode == "check-off" else {}
    async with TcpProxy("127.0.0.1", b.port) as proxy:
        proxy.refuse = True
        inst, board = make(b, port=proxy.port, max_connection_attempts=2, **over)
        try:
            with pytest.raises(Transient):
                await inst.check()
            assert board.instances["partner"].state == "down"
            proxy.refuse = False
            await inst.check()
            assert board.instances["partner"].state == "up"
        finally:
            await inst.close()


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_one_gib_download(sftp_openssh_backend: SftpBackend, tmp_path: Path) -> None:
    b = sftp_openssh_backend
    size = 1 << 30
    digest = pattern_file(b, "huge.bin", size)
    inst, _ = make(b)
    spool = Spool(tmp_path / "spool")
    spool.prepare()
    try:
        f = await inst.stat("huge.bin")
        assert f is not None and f.size == size
        w = spool.writer()
        t0 = time.monotonic()
        await inst.download(f, w)
        took = time.monotonic() - t0
        body = w.finish()
        assert body.size == size and await body.digest() == digest
        body.release()
    finally:
        await inst.close()
        (b.folder / "huge.bin").unlink()
    print(f"1 GiB download: {took:.1f}s, {size / took / 2**20:.0f} MiB/s")
    assert took < 30


async def test_daemon_survives_cuts_mid_download(sftp_asyncssh_backend: SftpBackend, tmp_path: Path) -> None:
    """End to end: a flow reading a 24 MiB file through a proxy that cuts the connection twice
    mid-transfer delivers it once, whole, and deletes it only afterwards."""
    from tests.harness import bodies, running, sidecars, wait_for, write_config

    b = sftp_asyncssh_backend
    size = 24 * 1024 * 1024
    digest = pattern_file(b, "in/big.bin", size)
    b.put("in/small.csv", b"small")
    out = tmp_path / "out"
    async with TcpProxy("127.0.0.1", b.port) as proxy:
        proxy.cut_after(5 * 1024 * 1024)
        flow = {
            "source": {
                "instance": "remote",
                "path": "in",
                "poll_interval": "200ms",
                "min_age": "0s",
                "after": "delete",
            },
            "target": {"type": "directory", "path": str(out)},
            "retry": {"attempts": 10, "backoff": "100ms", "max_backoff": "500ms"},
        }
        cfg = write_config(tmp_path, {"remote": b.instance_config(port=proxy.port)}, {"f": flow})
        resumes = retries["download"]
        async with running(cfg):
            await wait_for(lambda: proxy.bytes_down > 6 * 1024 * 1024, 30)
            proxy.cut_after(8 * 1024 * 1024)
            await wait_for(lambda: len(bodies(out)) == 2, 60)
            await wait_for(lambda: b.names("in") == [], 20)
        assert proxy.connections >= 3
    assert retries["download"] > resumes  # resumed at its offset, through the supervisor's retry helper
    got = bodies(out)
    assert len(got) == 2 and len(sidecars(out)) == 2
    big = next(v for v in got.values() if len(v) != 5)
    assert hashlib.sha256(big).hexdigest() == digest


@pytest.mark.parametrize("streams", [1, 4])
async def test_cut_mid_upload_then_retry_leaves_no_temp(backend: SftpBackend, tmp_path: Path, streams: int) -> None:
    """With ``streams: 4`` the cut hits one of the sessions writing parts side by side: the try
    fails as a whole and the next writes the whole temp file again."""
    from conveyor.payload import Body

    src = tmp_path / "body.bin"
    src.write_bytes(os.urandom(20 * 1024 * 1024))  # past 2 parts: written over several sessions
    backend.mkdir("out")
    async with TcpProxy("127.0.0.1", backend.port) as proxy:
        inst, _ = make(backend, port=proxy.port, streams=streams)
        try:
            await inst.check()
            proxy.cut_after(4 * 1024 * 1024, up=True)
            with pytest.raises(Transient):
                await inst.upload(Body.from_file(src, owned=False), "out/x.bin", exists="replace", chmod=None)
            assert not backend.exists("out/x.bin"), "nothing appears under the final name"
            assert await inst.upload(Body.from_file(src, owned=False), "out/x.bin", exists="replace", chmod=None)
        finally:
            await inst.close()
    assert backend.read("out/x.bin") == src.read_bytes()
    assert sorted(p.name for p in (backend.folder / "out").iterdir()) == ["x.bin"], "the temp file was reused"
