"""SFTP work spread over the pool's sessions: an upload written over several sessions at once
(parts at their offsets into the temp name, then the rename), and many small files listed and
fetched side by side, on real servers, every byte checked."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import pytest

from conveyor.payload import Body, Spool
from tests.backends.sftp import *  # noqa: F403  (the server fixtures)
from tests.backends.sftp import SftpBackend
from tests.servers.sshd import Sshd
from tests.tcp_proxy import TcpProxy
from tests.test_sftp_faults import make

MIB = 1024 * 1024


@pytest.fixture(params=["asyncssh", "openssh"])
def backend(request: pytest.FixtureRequest) -> SftpBackend:
    """Each test runs against both servers."""
    b: SftpBackend = request.getfixturevalue(f"sftp_{request.param}_backend")
    return b


def random_body(tmp_path: Path, size: int) -> tuple[Path, str]:
    """A file of random bytes (no repeated block, so a part at a wrong offset shows); its SHA-256."""
    data = os.urandom(size)
    src = tmp_path / "body.bin"
    src.write_bytes(data)
    return src, hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- uploads
async def test_upload_over_several_sessions_right_bytes(backend: SftpBackend, tmp_path: Path) -> None:
    src, digest = random_body(tmp_path, 37 * MIB + 4321)  # parts of 8 MiB and a short last one
    backend.mkdir("out")
    inst, _ = make(backend, streams=4)
    try:
        assert await inst.upload(Body.from_file(src, owned=False), "out/x.bin", exists="replace", chmod=0o640)
        assert inst.pool.handshakes == 4, "written over four sessions"
    finally:
        await inst.close()
    assert hashlib.sha256(backend.read("out/x.bin")).hexdigest() == digest
    assert backend.names("out") == ["x.bin"], "no temp file left"
    assert (backend.folder / "out/x.bin").stat().st_mode & 0o777 == 0o640


@pytest.mark.parametrize(
    ("size", "streams", "max_connections", "sessions"),
    [(20 * MIB, 8, 2, 2), (3 * MIB, 4, 4, 1)],
    ids=["bounded-by-max-connections", "small-body-one-session"],
)
async def test_upload_sessions(
    sftp_openssh_backend: SftpBackend, tmp_path: Path, size: int, streams: int, max_connections: int, sessions: int
) -> None:
    b = sftp_openssh_backend
    src, digest = random_body(tmp_path, size)
    inst, _ = make(b, streams=streams, max_connections=max_connections)
    try:
        assert await inst.upload(Body.from_file(src, owned=False), "x.bin", exists="replace", chmod=None)
        assert inst.pool.handshakes == sessions
    finally:
        await inst.close()
    assert hashlib.sha256(b.read("x.bin")).hexdigest() == digest


async def test_daemon_parallel_upload_survives_a_cut(sftp_openssh_backend: SftpBackend, tmp_path: Path) -> None:
    """End to end: a local folder to the sftp instance, 30 MiB over four sessions through a proxy
    that cuts a connection mid-upload: the file arrives once, whole, under its own name."""
    from tests.harness import running, wait_for, write_config

    b = sftp_openssh_backend
    inbox = tmp_path / "in"
    inbox.mkdir()
    data = os.urandom(30 * MIB)
    b.mkdir("up")
    async with TcpProxy("127.0.0.1", b.port) as proxy:
        proxy.cut_after(8 * MIB, up=True)
        flow = {
            "source": {"instance": "local", "path": "in", "poll_interval": "200ms", "min_age": "0s"}
            | {"after": "delete"},
            "target": {"instance": "remote", "path": "up"},
            "retry": {"attempts": 10, "backoff": "100ms", "max_backoff": "500ms"},
        }
        instances = {
            "remote": b.instance_config(port=proxy.port, streams=4),
            "local": {"type": "local", "root": str(tmp_path)},
        }
        cfg = write_config(tmp_path, instances, {"f": flow})
        async with running(cfg):
            (inbox / "big.bin").write_bytes(data)
            await wait_for(lambda: b.names("up") == ["big.bin"] and not list(inbox.iterdir()), 60)
        assert proxy.connections > 4, "the cut session was replaced"
    assert b.read("up/big.bin") == data


# --------------------------------------------------------------------------- many small files
async def test_many_small_files_side_by_side(backend: SftpBackend, tmp_path: Path) -> None:
    """Listing and 16 downloads at once share the pool: every file whole, at most
    max_connections sessions, and more than one of them used."""
    files = {f"f{i:03d}.bin": os.urandom(16 * 1024 + i) for i in range(150)}
    for name, data in files.items():
        backend.put(f"small/{name}", data)
    inst, _ = make(backend, max_connections=4)
    spool = Spool(tmp_path / "spool", threshold=MIB)
    spool.prepare()
    sem = asyncio.Semaphore(16)
    got: dict[str, bytes] = {}

    async def one(f: object) -> None:
        from conveyor.interfaces import RemoteFile

        assert isinstance(f, RemoteFile)
        async with sem:
            w = spool.writer()
            await inst.download(f, w)
            body = w.finish()
            got[f.name] = body.data() if body.in_memory else Path(str(body.path)).read_bytes()
            body.release()

    try:
        listed = [f async for f in inst.list("small", False)]
        await asyncio.gather(*(one(f) for f in listed))
        for _ in range(100):  # on loopback the downloads can end before a login opened beside them
            if inst.pool.handshakes > 1:
                break
            await asyncio.sleep(0.05)
        assert 1 < inst.pool.handshakes <= 4
        await inst.remove(f"small/{listed[0].name}")  # right after its download: the handle is closed first
    finally:
        await inst.close()
    assert got == files
    assert len(backend.names("small")) == len(files) - 1


async def test_busy_pool_shares_a_session_while_another_opens(sftp_openssh_backend: SftpBackend) -> None:
    """With every session busy and room for more, an operation does not wait for a login: it
    shares the least busy session while one more opens beside it."""
    inst, _ = make(sftp_openssh_backend, max_connections=2)
    try:
        async with inst.pool.session() as first:
            async with asyncio.timeout(5), inst.pool.session() as second:
                assert second is first, "shared at once, not after a login"
            from tests.harness import wait_for

            await wait_for(lambda: len(inst.pool._sessions) == 2, 10)
            async with inst.pool.session() as third:
                assert third is not first, "the session opened beside it is used next"
        assert inst.pool.handshakes == 2
    finally:
        await inst.close()
    assert inst.pool._sessions == []


async def test_failed_extra_session_is_not_retried_at_once(
    sftp_openssh_backend: SftpBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server that refuses more connections than it has: busy sessions are shared and the
    pool does not try another login beside them on every operation."""
    from conveyor.errors import Transient

    inst, _ = make(sftp_openssh_backend, max_connections=3)
    tries = 0

    async def refused() -> None:
        nonlocal tries
        tries += 1
        raise Transient("too many connections", instance="partner")

    try:
        async with inst.pool.session() as first:
            monkeypatch.setattr(inst.pool, "_connect_once", refused)
            for _ in range(5):
                async with inst.pool.session() as s:
                    assert s is first
                await asyncio.sleep(0.02)
        assert tries == 1
    finally:
        await inst.close()


async def test_daemon_many_small_files(sftp_openssh_backend: SftpBackend, tmp_path: Path) -> None:
    """End to end: 200 small files from an sftp folder into a directory target, each delivered
    once with its SHA-256 in the sidecar, over at most max_connections sessions."""
    from tests.harness import bodies, running, sidecars, wait_for, write_config

    b = sftp_openssh_backend
    files = {f"f{i:03d}.bin": os.urandom(4096 + i) for i in range(200)}
    for name, data in files.items():
        b.put(f"in/{name}", data)
    out = tmp_path / "out"
    flow = {
        "source": {"instance": "remote", "path": "in", "poll_interval": "200ms", "min_age": "0s", "after": "delete"},
        "target": {"type": "directory", "path": str(out), "filename": "{name}"},
    }
    assert isinstance(b.server, Sshd)
    logins = b.server.logins()
    cfg = write_config(tmp_path, {"remote": b.instance_config(max_connections=3)}, {"f": flow})
    async with running(cfg):
        await wait_for(lambda: len(bodies(out)) == len(files), 60)
        await wait_for(lambda: b.names("in") == [], 20)
    assert bodies(out) == files
    assert sorted(s["sha256"] for s in sidecars(out)) == sorted(hashlib.sha256(v).hexdigest() for v in files.values())
    assert b.server.logins() - logins <= 3, "at most max_connections sessions"
