"""The ftp connector against pyftpdlib servers in process: plain, explicit and implicit FTPS,
LIST-only, NAT-style PASV replies, active mode, dropped data channels, idle 421 closes."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
from pathlib import Path
from typing import Any

import pytest

from conveyor.errors import AuthError, HostKeyError, NotFound, Permanent, Rejected, Transient
from conveyor.payload import Body
from tests.backends.ftp import ftp_instance
from tests.servers.pyftpd import ftp_certs, make_certs, pyftpd_factory

__all__ = ["ftp_certs", "pyftpd_factory"]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def fetch(inst: Any, spool: Any, path: str) -> bytes:
    f = await inst.stat(path)
    assert f is not None, path
    w = spool.writer()
    await inst.download(f, w)
    body = w.finish()
    data = body.data() if body.in_memory else Path(body.path).read_bytes()
    assert await body.digest() == sha(data)
    body.release()
    return data


@pytest.mark.parametrize("tls", ["none", "explicit", "implicit"])
async def test_roundtrip(pyftpd_factory: Any, tmp_path: Path, tls: str) -> None:
    srv = pyftpd_factory(tls)
    (srv.root / "in" / "deep").mkdir(parents=True)
    big = os.urandom(3 * 1024 * 1024 + 7)
    (srv.root / "in" / "ORD 1001.csv").write_bytes(b"a,b\n1,2\n")
    (srv.root / "in" / "deep" / "big.bin").write_bytes(big)
    inst, status, spool = ftp_instance(srv.config(), tmp_path / "spool")
    try:
        line = await inst.check()
        assert ("no TLS" in line) == (tls == "none")
        assert status.instances["ftp-test"].state == "up"
        identity = status.instances["ftp-test"].identity  # what the status page shows
        assert (
            (identity is None)
            if tls == "none"
            else re.fullmatch(r"TLSv1\.[23], certificate sha256:[0-9a-f]{64}", identity or "")
        )
        flat = sorted(f.path for f in [f async for f in inst.list("in", False)])
        assert flat == ["in/ORD 1001.csv"]
        files = {f.path: f async for f in inst.list("in", True)}
        assert set(files) == {"in/ORD 1001.csv", "in/deep/big.bin"}
        assert files["in/deep/big.bin"].size == len(big)
        assert await fetch(inst, spool, "in/ORD 1001.csv") == b"a,b\n1,2\n"
        assert await fetch(inst, spool, "in/deep/big.bin") == big

        # upload: in-memory and spooled bodies, into folders that do not exist yet
        assert await inst.upload(Body.from_bytes(b"first"), "out/a/b/x.txt", exists="replace", chmod=None)
        src = tmp_path / "upload.bin"
        src.write_bytes(big)
        assert await inst.upload(Body.from_file(src, owned=False), "out/a/b/big.bin", exists="replace", chmod=None)
        assert (srv.root / "out/a/b/big.bin").read_bytes() == big
        assert await inst.upload(Body.from_bytes(b"second"), "out/a/b/x.txt", exists="replace", chmod=None)
        assert await inst.upload(Body.from_bytes(b"third"), "out/a/b/x.txt", exists="skip", chmod=None) is False
        with pytest.raises(Rejected):
            await inst.upload(Body.from_bytes(b"fourth"), "out/a/b/x.txt", exists="fail", chmod=None)
        assert (srv.root / "out/a/b/x.txt").read_bytes() == b"second"
        assert sorted(os.listdir(srv.root / "out/a/b")) == ["big.bin", "x.txt"]  # no temp files left

        assert await inst.is_dir("out/a") and not await inst.is_dir("out/a/b/x.txt")
        assert not await inst.is_dir("nope")
        assert await inst.stat("out/a") is None and await inst.stat("missing.txt") is None
        await inst.rename("out/a/b/x.txt", "done/2026/x.txt")
        assert (srv.root / "done/2026/x.txt").read_bytes() == b"second"
        await inst.remove("done/2026/x.txt")
        await inst.remove("done/2026/x.txt")  # already gone: fine
        assert not (srv.root / "done/2026/x.txt").exists()
        with pytest.raises(NotFound):
            [f async for f in inst.list("no/such/folder", False)]
        assert inst.pool.connects == 1  # one connection, reused by every operation
    finally:
        await inst.close()


async def test_list_only_server(pyftpd_factory: Any, tmp_path: Path) -> None:
    srv = pyftpd_factory("explicit", mlsd=False)
    (srv.root / "sub dir").mkdir()
    (srv.root / "a b.csv").write_bytes(b"x" * 10)
    (srv.root / "sub dir" / "c.csv").write_bytes(b"y" * 20)
    os.utime(srv.root / "a b.csv", (1_700_000_000, 1_700_000_000))
    inst, _, spool = ftp_instance(srv.config(), tmp_path / "spool")
    try:
        assert "LIST" in await inst.check()
        files = {f.path: f async for f in inst.list("", True)}
        assert {p: f.size for p, f in files.items()} == {"a b.csv": 10, "sub dir/c.csv": 20}
        # LIST shows minutes (a year for old files); SIZE + MDTM give the exact time
        exact = await inst.stat("a b.csv")
        assert exact is not None and exact.mtime == 1_700_000_000 and exact.size == 10
        assert await fetch(inst, spool, "sub dir/c.csv") == b"y" * 20
    finally:
        await inst.close()


async def test_wrong_password(pyftpd_factory: Any, tmp_path: Path) -> None:
    srv = pyftpd_factory("explicit")
    inst, status, _ = ftp_instance(srv.config(password="wrong"), tmp_path / "spool")
    with pytest.raises(AuthError) as e:
        await inst.check()
    assert "wrong" not in str(e.value) and "530" in str(e.value)
    st = status.instances["ftp-test"]
    assert st.state == "down" and st.permanent
    await inst.close()


async def test_untrusted_certificate(pyftpd_factory: Any, tmp_path: Path) -> None:
    srv = pyftpd_factory("explicit")
    other = make_certs(tmp_path / "other")
    for over in ({"ca_file": str(other.ca_file)}, {"ca_file": None}):  # a foreign CA; the system CAs
        inst, status, _ = ftp_instance(srv.config(**over), tmp_path / "spool")
        with pytest.raises(Permanent, match=r"certificate .* not trusted") as e:
            await inst.check()
        assert not isinstance(e.value, AuthError)
        assert status.instances["ftp-test"].permanent
        await inst.close()


async def test_fingerprint_pinning(pyftpd_factory: Any, tmp_path: Path, ftp_certs: Any) -> None:
    srv = pyftpd_factory("implicit")
    inst, _, spool = ftp_instance(srv.config(ca_file=None, tls_fingerprint=ftp_certs.fingerprint), tmp_path / "s")
    (srv.root / "f.txt").write_bytes(b"pinned")
    try:
        await inst.check()
        assert await fetch(inst, spool, "f.txt") == b"pinned"
    finally:
        await inst.close()
    wrong = "00" * 32
    inst, _, _ = ftp_instance(srv.config(ca_file=None, tls_fingerprint=wrong), tmp_path / "s")
    with pytest.raises(HostKeyError, match="does not match tls_fingerprint"):
        await inst.check()
    await inst.close()


async def test_tls_verify_off_warns(pyftpd_factory: Any, tmp_path: Path, caplog: Any) -> None:
    srv = pyftpd_factory("explicit")
    inst, status, _ = ftp_instance(srv.config(ca_file=None, tls_verify=False), tmp_path / "spool")
    with caplog.at_level(logging.WARNING, logger="conveyor.ftp"):
        await inst.check()
    assert any("tls_verify is off" in r.getMessage() for r in caplog.records)
    assert any("tls_verify is off" in w for w in status.instances["ftp-test"].warnings)
    await inst.close()


@pytest.mark.parametrize("over", [{}, {"ignore_passive_address": True}], ids=["default", "patchworks-key"])
async def test_pasv_private_address_ignored(
    pyftpd_factory: Any, tmp_path: Path, caplog: Any, over: dict[str, Any]
) -> None:
    # The server announces an unroutable address in PASV (as servers behind NAT do) and has no EPSV:
    # data channels go to the control connection's address without being told.
    srv = pyftpd_factory("none", masquerade="10.255.255.1", epsv=False)
    (srv.root / "f.txt").write_bytes(b"via host")
    inst, _, spool = ftp_instance(srv.config(**over), tmp_path / "spool")
    try:
        reply = await inst.pool.run(lambda c: c.command("PASV", (2,)), "")
        assert "10,255,255,1" in reply.text  # what the client ignores
        with caplog.at_level(logging.DEBUG, logger="conveyor.ftp"):
            assert [f.path async for f in inst.list("", False)] == ["f.txt"]
        assert any("PASV announced 10.255.255.1" in r.getMessage() for r in caplog.records)
        assert await fetch(inst, spool, "f.txt") == b"via host"
    finally:
        await inst.close()


@pytest.mark.parametrize("tls", ["none", "explicit"])
async def test_active_mode(pyftpd_factory: Any, tmp_path: Path, tls: str) -> None:
    srv = pyftpd_factory(tls)
    (srv.root / "f.txt").write_bytes(b"active" * 1000)
    inst, _, spool = ftp_instance(srv.config(passive=False), tmp_path / "spool")
    try:
        assert [f.path async for f in inst.list("", False)] == ["f.txt"]
        assert await fetch(inst, spool, "f.txt") == b"active" * 1000
        assert await inst.upload(Body.from_bytes(b"up"), "u/x", exists="replace", chmod=None)
        assert (srv.root / "u/x").read_bytes() == b"up"
    finally:
        await inst.close()


@pytest.mark.fault
@pytest.mark.parametrize("tls", ["none", "explicit"])
async def test_resume_after_cut(pyftpd_factory: Any, tmp_path: Path, tls: str) -> None:
    srv = pyftpd_factory(tls, cut_after=1_500_000)
    data = os.urandom(4 * 1024 * 1024)
    (srv.root / "big.bin").write_bytes(data)
    # this cut sends no 426: the client notices by the missing final reply, after `timeout`
    inst, _, spool = ftp_instance(srv.config(timeout="1s"), tmp_path / "spool")
    try:
        f = await inst.stat("big.bin")
        w = spool.writer()
        with pytest.raises(Transient):
            await inst.download(f, w)
        assert 0 < w.size < len(data)
        await inst.download(f, w)  # continues at w.size with REST
        body = w.finish()
        assert body.size == len(data) and await body.digest() == sha(data)
        body.release()
    finally:
        await inst.close()


async def test_idle_close_421_is_quiet(pyftpd_factory: Any, tmp_path: Path, caplog: Any) -> None:
    srv = pyftpd_factory("explicit", idle_timeout=0.5)
    (srv.root / "f.txt").write_bytes(b"x")
    inst, status, _ = ftp_instance(srv.config(keepalive="0s"), tmp_path / "spool")
    try:
        with caplog.at_level(logging.INFO, logger="conveyor"):
            assert await inst.stat("f.txt") is not None
            await asyncio.sleep(1.2)  # the server says 421 and closes the idle connection
            assert await inst.stat("f.txt") is not None
        assert inst.pool.connects == 2
        assert not [r for r in caplog.records if r.levelno >= logging.INFO]
        assert status.instances["ftp-test"].last_error is None
    finally:
        await inst.close()


async def test_keepalive_keeps_connection(pyftpd_factory: Any, tmp_path: Path) -> None:
    srv = pyftpd_factory("none", idle_timeout=1)
    (srv.root / "f.txt").write_bytes(b"x")
    inst, _, _ = ftp_instance(srv.config(keepalive="300ms"), tmp_path / "spool")
    try:
        assert await inst.stat("f.txt") is not None
        await asyncio.sleep(1.6)
        assert await inst.stat("f.txt") is not None
        assert inst.pool.connects == 1
    finally:
        await inst.close()


async def test_max_connections(pyftpd_factory: Any, tmp_path: Path) -> None:
    srv = pyftpd_factory("explicit")
    for i in range(8):
        (srv.root / f"f{i}.bin").write_bytes(os.urandom(200_000))
    inst, _, spool = ftp_instance(srv.config(max_connections=2), tmp_path / "spool")
    try:
        files = [f async for f in inst.list("", False)]
        got = await asyncio.gather(*(fetch(inst, spool, f.path) for f in files))
        assert [sha(g) for g in got] == [sha((srv.root / f.path).read_bytes()) for f in files]
        assert inst.pool.connects == 2
    finally:
        await inst.close()


async def test_connection_refused_is_transient(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = {"type": "ftp", "host": "127.0.0.1", "port": port, "timeout": "2s"}
    inst, status, _ = ftp_instance(cfg, tmp_path / "spool")
    with pytest.raises(Transient):
        await inst.check()
    assert status.instances["ftp-test"].state == "down" and not status.instances["ftp-test"].permanent


async def test_replace_when_rename_does_not_overwrite(pyftpd_factory: Any, tmp_path: Path) -> None:
    srv = pyftpd_factory("none", rename_overwrites=False)
    inst, _, _ = ftp_instance(srv.config(), tmp_path / "spool")
    try:
        assert await inst.upload(Body.from_bytes(b"one"), "o/x.txt", exists="replace", chmod=None)
        assert await inst.upload(Body.from_bytes(b"two"), "o/x.txt", exists="replace", chmod=None)
        assert (srv.root / "o/x.txt").read_bytes() == b"two" and os.listdir(srv.root / "o") == ["x.txt"]
        (srv.root / "m").mkdir()
        (srv.root / "m/y.txt").write_bytes(b"old")
        (srv.root / "y.txt").write_bytes(b"new")
        await inst.rename("y.txt", "m/y.txt")
        assert (srv.root / "m/y.txt").read_bytes() == b"new"
    finally:
        await inst.close()


async def test_silent_server_times_out(tmp_path: Path) -> None:
    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)  # accepts, never greets
        writer.close()

    server = await asyncio.start_server(mute, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    inst, status, _ = ftp_instance(
        {"type": "ftp", "host": "127.0.0.1", "port": port, "timeout": "500ms"}, tmp_path / "spool"
    )
    try:
        t0 = asyncio.get_running_loop().time()
        with pytest.raises(Transient, match="timed out"):
            await inst.check()
        assert asyncio.get_running_loop().time() - t0 < 2
        assert status.instances["ftp-test"].state == "down"
    finally:
        server.close()


@pytest.mark.parametrize("kind", ["memory", "local file"])
async def test_upload_overwrites_the_leftover_of_a_crashed_attempt(
    pyftpd_factory: Any, tmp_path: Path, kind: str
) -> None:
    """A STOR cut by a crash (conveyor's or the server's) leaves its temp file; the retry, even
    from a new process, uses the same temp name for the same body, so it writes over the
    leftover and renames it away: nothing is left behind on the partner's server."""
    from conveyor.transfer.tempname import temp_key, temp_name

    srv = pyftpd_factory()
    data = os.urandom(200_000)
    if kind == "memory":
        body = Body.from_bytes(data)
    else:
        (tmp_path / "local.bin").write_bytes(data)
        body = Body.from_file(tmp_path / "local.bin", owned=False)
    (srv.root / "out").mkdir()
    leftover = srv.root / "out" / temp_name("x.bin", await temp_key(body))
    leftover.write_bytes(os.urandom(500_000))  # longer than the body: the STOR must replace it whole
    inst, _, _ = ftp_instance(srv.config(), tmp_path / "spool")  # a new instance: nothing remembered
    try:
        assert await inst.upload(body, "out/x.bin", exists="replace", chmod=None)
    finally:
        await inst.close()
    assert (srv.root / "out" / "x.bin").read_bytes() == data
    assert os.listdir(srv.root / "out") == ["x.bin"]


@pytest.mark.parametrize(
    ("tls", "reply", "kind"),
    [
        ("none", "452 Transfer aborted. No space left on device", "NoSpace"),
        ("explicit", "452 Transfer aborted. No space left on device", "NoSpace"),
        ("none", "552 Disk quota exceeded", "NoSpace"),
        ("explicit", "426 No space left on device; transfer aborted.", "NoSpace"),  # the words decide
        ("explicit", "451 Failure writing to local file.", "Transient"),  # vsftpd's words
    ],
)
async def test_server_disk_full_mid_upload(
    pyftpd_factory: Any, tmp_path: Path, tls: str, reply: str, kind: str
) -> None:
    """The server's disk fills mid-STOR: it drops the data channel and says why on the control
    channel. conveyor reports the server's words (a full disk or quota as NoSpace, retried
    later), not a dropped connection; it removes its partial temp file and keeps the
    connection for the next upload."""
    from conveyor.errors import NoSpace

    srv = pyftpd_factory(tls, full_after=1 << 20, full_reply=reply)
    inst, status, _ = ftp_instance(srv.config(), tmp_path / "spool")
    try:
        with pytest.raises(Transient, match=f"STOR refused: {reply}") as e:
            await inst.upload(Body.from_bytes(os.urandom(64 << 20)), "out/big.bin", exists="replace", chmod=None)
        assert isinstance(e.value, NoSpace) == (kind == "NoSpace")
        assert os.listdir(srv.root / "out") == [], "the partial temp file was removed"
        assert await inst.upload(Body.from_bytes(b"small"), "out/small.txt", exists="replace", chmod=None)
        assert (srv.root / "out" / "small.txt").read_bytes() == b"small"
        assert inst.pool.connects == 1, "the control connection survived the refused upload"
        assert status.instances["ftp-test"].state == "up"
    finally:
        await inst.close()
