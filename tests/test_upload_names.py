"""Names a partner's server gets from an sftp or ftp target (OpenSSH sshd and vsftpd on loopback), and a
local instance as a target:
hidden and Windows-reserved names follow ``unsafe_names``, long names are cut in bytes and stay
distinct, and the temp name of a 255-byte name fits too."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conveyor.config.base import FileTargetConfig
from conveyor.errors import Rejected
from conveyor.payload import Body, Payload
from conveyor.targets.upload import UploadTarget
from tests.backends.ftp import FtpBackend, ftp_instance
from tests.backends.local import LocalBackend
from tests.backends.sftp import SftpBackend
from tests.test_sftp import instance as sftp_instance


@dataclass
class Server:
    instance: Any
    backend: SftpBackend | FtpBackend | LocalBackend


@pytest.fixture(params=["sftp-openssh", "ftp-vsftpd", "local"])
async def server(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Server]:
    backend: SftpBackend | FtpBackend | LocalBackend
    inst: Any
    if request.param == "sftp-openssh":
        sftp: SftpBackend = request.getfixturevalue("sftp_openssh_backend")
        backend, inst = sftp, sftp_instance(sftp)
    elif request.param == "local":
        from conveyor.interfaces import Context
        from conveyor.payload import Spool
        from conveyor.status import StatusBoard
        from conveyor.transfer.local.config import LocalConfig
        from conveyor.transfer.local.instance import LocalInstance

        backend = LocalBackend(tmp_path / "dst")
        inst = LocalInstance(
            "dst",
            LocalConfig(type="local", root=str(backend.root)),
            Context(spool=Spool(tmp_path / "spool"), status=StatusBoard()),
        )
    else:
        srv = request.getfixturevalue("vsftpd_factory")("none")
        backend = FtpBackend("ftp-vsftpd", srv)
        inst = ftp_instance(srv.config(), tmp_path / "spool")[0]
    try:
        yield Server(inst, backend)
    finally:
        await inst.close()


def payload(pid: str, name: str, data: bytes = b"x") -> Payload:
    return Payload(id=pid, flow="f", source_instance="i", source_type="sftp", body=Body.from_bytes(data), name=name)


def upload_target(server: Server, **cfg: Any) -> UploadTarget:
    return UploadTarget("f", FileTargetConfig(instance="dst", path="out", filename="{name}", **cfg), server.instance)


async def test_default_renames_unsafe_names_and_fits_long_ones(server: Server) -> None:
    t = upload_target(server)
    long_a, long_b = "r" * 250 + "-a.csv", "r" * 250 + "-b.csv"
    names = {
        ".env": "_.env",
        "CON.txt": "CON_.txt",
        "a:b|c.txt": "a_b_c.txt",
        "trailing.": "trailing_",
        "plain.csv": "plain.csv",
    }
    for i, name in enumerate([*names, "é" * 130, "é" * 127 + "x", long_a, long_b]):
        await t.deliver(payload(f"p{i}", name, data=name.encode()))
    got = server.backend.names("out")
    assert len(got) == 9, got  # two long names, two files; no temp file left
    for sent, want in names.items():
        assert server.backend.read(f"out/{want}") == sent.encode()
    assert all(len(os.fsencode(n)) <= 255 for n in got)
    longs = {server.backend.read(f"out/{n}") for n in got if len(os.fsencode(n)) > 200}
    assert longs == {("é" * 130).encode(), ("é" * 127 + "x").encode(), long_a.encode(), long_b.encode()}


async def test_refuse_fails_the_payload_and_writes_nothing(server: Server) -> None:
    t = upload_target(server, unsafe_names="refuse")
    with pytest.raises(Rejected, match=r"'\.env' starts with a dot \(unsafe_names: refuse\)"):
        await t.deliver(payload("p1", ".env"))
    with pytest.raises(Rejected, match="Windows device name"):
        await t.deliver(payload("p2", "nul.txt"))
    await t.deliver(payload("p3", "fine.txt"))
    assert server.backend.names("out") == ["fine.txt"]


async def test_keep_delivers_names_as_they_are(server: Server) -> None:
    t = upload_target(server, unsafe_names="keep")
    await t.deliver(payload("p1", ".env"))
    await t.deliver(payload("p2", "CON.txt"))
    assert server.backend.names("out") == [".env", "CON.txt"]
