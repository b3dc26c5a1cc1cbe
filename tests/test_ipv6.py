"""Servers on the IPv6 loopback (::1): SFTP (fingerprint pin, known_hosts ``[::1]:port``, the
fingerprint command), FTP and FTPS in passive (EPSV) and active (EPRT) mode, and the HTTP
target. A partner's server reached over IPv6 must work like one over IPv4."""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from conveyor.errors import HostKeyError
from conveyor.interfaces import Context
from conveyor.payload import Body, Payload, Spool
from conveyor.status import StatusBoard
from conveyor.targets.http.config import HttpTargetConfig
from conveyor.targets.http.target import HttpTarget
from conveyor.transfer.sftp.config import SftpConfig
from conveyor.transfer.sftp.hostkeys import fingerprint_main, server_key_families, sha256_fp
from conveyor.transfer.sftp.instance import SftpInstance
from tests.backends.ftp import ftp_instance
from tests.servers.asyncssh_server import AsyncsshSftpServer, host_keys, ssh_client_keys
from tests.servers.ops import http_sink
from tests.servers.pyftpd import ftp_certs, pyftpd_factory
from tests.servers.ssh_keys import KeySet

__all__ = ["ftp_certs", "pyftpd_factory", "ssh_client_keys"]


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


if not _ipv6_loopback():  # a machine without ::1 cannot run these at all: say so, do not pass
    pytest.fail("this machine has no IPv6 loopback (::1); tests/test_ipv6.py needs it", pytrace=False)


@pytest.fixture
async def sftp6(tmp_path: Path, ssh_client_keys: KeySet) -> AsyncIterator[AsyncsshSftpServer]:
    """The in-process asyncssh server listening on ::1."""
    root = tmp_path / "remote"
    root.mkdir()
    srv = AsyncsshSftpServer(root, ssh_client_keys, host_keys(), host="::1")
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


def _sftp(srv: AsyncsshSftpServer, tmp_path: Path, **over: Any) -> SftpInstance:
    cfg = SftpConfig.model_validate(srv.instance_config(**over))
    spool = Spool(tmp_path / "spool", threshold=1 << 20)
    spool.prepare()
    board = StatusBoard()
    board.add_instance("partner", "sftp", cfg.describe())
    return SftpInstance("partner", cfg, Context(spool=spool, status=board))


async def _roundtrip(inst: Any, root: Path, tmp_path: Path) -> None:
    """List, download and upload through ``inst``, whose server serves ``root``."""
    data = os.urandom(300_000)
    (root / "in").mkdir(exist_ok=True)
    (root / "in" / "order.csv").write_bytes(data)
    files = [f async for f in inst.list("in", False)]
    assert [(f.path, f.size) for f in files] == [("in/order.csv", len(data))]
    spool = Spool(tmp_path / "dl", threshold=1 << 20)
    spool.prepare()
    w = spool.writer()
    await inst.download(files[0], w)
    body = w.finish()
    assert await body.digest() == hashlib.sha256(data).hexdigest()
    body.release()
    assert await inst.upload(Body.from_bytes(b"reply"), "out/reply.txt", exists="replace", chmod=None)
    assert (root / "out" / "reply.txt").read_bytes() == b"reply"


async def test_sftp_fingerprint_pin(sftp6: AsyncsshSftpServer, tmp_path: Path) -> None:
    inst = _sftp(sftp6, tmp_path)
    try:
        line = await inst.check()
        assert line.startswith(f"conveyor@[::1]:{sftp6.port} (ssh-ed25519, SHA256:"), line
        await _roundtrip(inst, sftp6.root, tmp_path)
    finally:
        await inst.close()


async def test_sftp_known_hosts_bracketed_port(sftp6: AsyncsshSftpServer, tmp_path: Path) -> None:
    """OpenSSH writes a non-22 port as ``[host]:port``; that entry must match, another port's must not."""
    key = sftp6.host_key("ssh-ed25519").export_public_key().decode().strip()
    good, wrong = tmp_path / "known_hosts", tmp_path / "known_hosts.other"
    good.write_text(f"[::1]:{sftp6.port} {key}\n")
    wrong.write_text(f"[::1]:{sftp6.port + 1} {key}\n")
    inst = _sftp(sftp6, tmp_path, host_fingerprint=None, known_hosts=str(good))
    try:
        await _roundtrip(inst, sftp6.root, tmp_path)
    finally:
        await inst.close()
    inst = _sftp(sftp6, tmp_path, host_fingerprint=None, known_hosts=str(wrong))
    try:
        with pytest.raises(HostKeyError, match="known_hosts"):
            await inst.check()
    finally:
        await inst.close()


async def test_fingerprint_command_and_scan(sftp6: AsyncsshSftpServer, capsys: Any) -> None:
    assert await server_key_families("::1", sftp6.port, 5) == ["ssh-ed25519", "ssh-rsa"]
    import asyncio

    assert await asyncio.to_thread(fingerprint_main, f"[::1]:{sftp6.port}") == 0
    out = capsys.readouterr().out
    assert f"# host keys of [::1]:{sftp6.port};" in out
    assert sha256_fp(sftp6.host_key("ssh-ed25519").public_data) in out


@pytest.mark.parametrize(
    ("tls", "passive"), [("none", True), ("none", False), ("explicit", True), ("explicit", False), ("implicit", True)]
)
async def test_ftp(pyftpd_factory: Any, tmp_path: Path, tls: str, passive: bool) -> None:
    """Passive mode over IPv6 is EPSV (PASV cannot carry an IPv6 address), active mode EPRT."""
    srv = pyftpd_factory(tls, host="::1")
    inst, status, _ = ftp_instance(srv.config(passive=passive), tmp_path / "spool")
    try:
        await inst.check()
        assert status.instances["ftp-test"].state == "up"
        await _roundtrip(inst, srv.root, tmp_path)
    finally:
        await inst.close()


async def test_http_target() -> None:
    async with http_sink(host="::1") as sink:
        assert sink.url.startswith("http://[::1]:")
        target = HttpTarget("f", HttpTargetConfig.model_validate({"type": "http", "url": sink.url}))
        try:
            await target.deliver(
                Payload(
                    id="p1",
                    flow="f",
                    source_instance="i",
                    source_type="local",
                    body=Body.from_bytes(b"over six"),
                    name="a.txt",
                )
            )
        finally:
            await target.close()
    assert [(r.headers["Idempotency-Key"], r.body) for r in sink.received] == [("p1", b"over six")]


async def test_refused_names_the_address_in_brackets(tmp_path: Path) -> None:
    """``::1:2222`` would read as an address without a port: messages bracket IPv6 literals."""
    from conveyor.errors import Transient

    with socket.socket(socket.AF_INET6) as s:
        s.bind(("::1", 0))
        port = s.getsockname()[1]  # bound, never listening: refused
        ftp, _, _ = ftp_instance(
            {"type": "ftp", "host": "::1", "port": port, "username": "u", "password": "p", "timeout": "2s"},
            tmp_path / "spool",
        )
        try:
            with pytest.raises(Transient, match=rf"\[::1\]:{port}"):
                await ftp.check()
        finally:
            await ftp.close()
        sftp = SftpInstance(
            "partner",
            SftpConfig.model_validate(
                {
                    "type": "sftp",
                    "host": "::1",
                    "port": port,
                    "username": "u",
                    "password": "p",
                    "host_key_check": "off",
                    "timeout": "2s",
                    "max_connection_attempts": 1,
                }
            ),
            Context(spool=Spool(tmp_path), status=StatusBoard()),
        )
        try:
            with pytest.raises(Transient, match=rf"cannot connect to \[::1\]:{port}"):
                await sftp.check()
        finally:
            await sftp.close()
