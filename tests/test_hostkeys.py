"""Host-key fingerprints: parsing every form, scanning a server, and `conveyor fingerprint`."""

from __future__ import annotations

import base64
import hashlib
import subprocess
from typing import Any

import pytest

from conveyor.transfer.sftp.hostkeys import (
    describe_key,
    fingerprint_main,
    md5_fp,
    parse_fingerprint,
    scan,
    server_key_families,
    sha256_fp,
    sha512_fp,
)
from tests.backends.sftp import *  # noqa: F403  (the server fixtures)
from tests.servers.asyncssh_server import AsyncsshSftpServer
from tests.servers.sshd import Sshd

BLOB = b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00 " + bytes(range(32))


def test_forms_match_the_blob() -> None:
    s256, md5, s512 = sha256_fp(BLOB), md5_fp(BLOB), sha512_fp(BLOB)
    assert s256 == "SHA256:" + base64.b64encode(hashlib.sha256(BLOB).digest()).decode().rstrip("=")
    assert md5.removeprefix("MD5:").replace(":", "") == hashlib.md5(BLOB).hexdigest()
    assert s512 == hashlib.sha512(BLOB).hexdigest()
    for text in (
        s256,
        s256 + "=",
        md5,
        md5[4:],
        md5[4:].replace(":", ""),
        md5.upper(),
        s512,
        s512.upper(),
        "SHA512:" + s512,
        f"  {s256}  ",
    ):
        assert parse_fingerprint(text).matches(BLOB), text
        assert not parse_fingerprint(text).matches(BLOB + b"x"), text


def test_kinds() -> None:
    assert parse_fingerprint(sha256_fp(BLOB)).hash == "sha256"
    assert parse_fingerprint(md5_fp(BLOB)).hash == "md5"
    assert parse_fingerprint(sha512_fp(BLOB)).hash == "sha512"


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "SHA256:",
        "SHA256:!!!",
        "SHA256:" + "A" * 40,
        "12:34",
        "xyz" * 11,
        "1:627aca576282d36631b564debdfa648a",
        "MD5:" + "a" * 128,
        "a" * 64,
    ],
)
def test_malformed(bad: str) -> None:
    with pytest.raises(ValueError, match="SHA256:<base64>"):
        parse_fingerprint(bad)


def test_describe_key_names_every_form() -> None:
    line = describe_key("ssh-ed25519", BLOB)
    assert sha256_fp(BLOB) in line and md5_fp(BLOB) in line and sha512_fp(BLOB) in line


async def test_scan_asyncssh(asyncssh_server: AsyncsshSftpServer) -> None:
    assert await server_key_families("127.0.0.1", asyncssh_server.port, 5) == ["ssh-ed25519", "ssh-rsa"]
    keys = await scan("127.0.0.1", asyncssh_server.port, 5)
    assert [k[0] for k in keys] == ["ssh-ed25519", "ssh-rsa"]
    blob = asyncssh_server.host_blob("rsa")
    assert keys[1][1:] == (sha256_fp(blob), md5_fp(blob), sha512_fp(blob))


def test_scan_openssh_matches_ssh_keygen(sshd: Sshd) -> None:
    """The SHA256 printed agrees with `ssh-keygen -l` of the server's own key files."""
    import asyncio

    keys = asyncio.run(scan("127.0.0.1", sshd.port, 5))
    assert [k[0] for k in keys] == ["ssh-ed25519", "ssh-rsa"]
    for (_, s256, md5, _), kind in zip(keys, ["ed25519", "rsa"], strict=True):
        pub = str(sshd.host_keys[kind]) + ".pub"
        assert s256 in subprocess.run(["ssh-keygen", "-lf", pub], capture_output=True, text=True).stdout
        assert md5 in subprocess.run(["ssh-keygen", "-E", "md5", "-lf", pub], capture_output=True, text=True).stdout


def test_fingerprint_main(sshd: Sshd, capsys: pytest.CaptureFixture[str]) -> None:
    assert fingerprint_main(f"127.0.0.1:{sshd.port}") == 0
    out = capsys.readouterr().out
    for kind in ("ed25519", "rsa"):
        blob = sshd.host_blob(kind)
        for fp in (sha256_fp(blob), md5_fp(blob), sha512_fp(blob)):
            assert f'host_fingerprint: "{fp}"' in out
    assert "# ssh-ed25519" in out and "# ssh-rsa" in out


def test_fingerprint_main_unreachable(capsys: pytest.CaptureFixture[str]) -> None:
    from tests.servers.ops import free_port

    assert fingerprint_main(f"127.0.0.1:{free_port()}") == 1
    assert "cannot read host keys from 127.0.0.1" in capsys.readouterr().err
    assert fingerprint_main("host:notaport") == 2


async def test_ecdsa_only_server(ssh_client_keys: Any) -> None:
    """A server with one ecdsa host key: scanned, and pinned by its SHA512 (Patchworks' non-RSA form)."""
    import asyncio

    from conveyor.transfer.sftp.config import SftpConfig
    from conveyor.transfer.sftp.instance import SftpInstance
    from tests.servers.sshd import sshd_available, start_sshd

    if sshd_available():
        pytest.skip(str(sshd_available()))
    srv = await asyncio.to_thread(start_sshd, ssh_client_keys, ("ecdsa",))
    try:
        keys = await scan("127.0.0.1", srv.port, 5)
        assert [k[0] for k in keys] == ["ecdsa-sha2-nistp256"]
        inst = SftpInstance(
            "p",
            SftpConfig.model_validate(srv.instance_config(host_fingerprint=sha512_fp(srv.host_blob("ecdsa")))),
            None,
        )
        try:
            assert "(ecdsa-sha2-nistp256," in await inst.check()
        finally:
            await inst.close()
    finally:
        srv.stop()
