"""OpenSSH certificates on a real sshd: a user key signed by a CA the server trusts
(``TrustedUserCAKeys``), and a host key signed by a CA the instance trusts (``HostCertificate``,
checked with ``host_ca`` or an ``@cert-authority`` line in known_hosts). Keys are signed here with
``ssh-keygen -s``."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conveyor.errors import AuthError, HostKeyError
from tests.backends.sftp import ssh_client_keys, sshd  # noqa: F401  (the fixtures)
from tests.servers.ssh_keys import KeySet, keygen
from tests.servers.sshd import USER, Sshd, check_sftp, sshd_available, start_sshd


def sign(ca: Path, key: Path, *, host: bool = False, principal: str, out: Path | None = None) -> Path:
    """Sign ``key``'s public half with ``ca``; returns the certificate path."""
    args = ["ssh-keygen", "-q", "-s", str(ca), "-I", f"test-{key.name}", "-n", principal, "-V", "-5m:+1h"]
    subprocess.run([*args, *(["-h"] if host else []), str(key) + ".pub"], check=True, capture_output=True)
    cert = Path(str(key) + "-cert.pub")
    if out is not None:
        cert.rename(out)
        return out
    return cert


@dataclass
class CertServer:
    sshd: Sshd
    dir: Path
    user_ca: Path
    host_ca: Path


@pytest.fixture(scope="module")
def certs(ssh_client_keys: KeySet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CertServer]:  # noqa: F811
    why = sshd_available()
    if why:
        pytest.skip(why)
    d = tmp_path_factory.mktemp("certs")
    d.chmod(0o755)  # sshd reads the host key and CA files from here
    user_ca = keygen(d / "user_ca", ["-t", "ed25519"])
    host_ca = keygen(d / "host_ca", ["-t", "ed25519"])
    host_key = keygen(d / "host_ed25519", ["-t", "ed25519"])
    host_cert = sign(host_ca, host_key, host=True, principal="127.0.0.1")
    srv = start_sshd(
        ssh_client_keys,
        host_key_types=("rsa",),  # the certified ed25519 key is the server's only ed25519 key
        extra=(f"HostKey {host_key}", f"HostCertificate {host_cert}", f"TrustedUserCAKeys {user_ca}.pub"),
    )
    try:
        yield CertServer(srv, d, user_ca, host_ca)
    finally:
        srv.stop()
        shutil.rmtree(srv.base, ignore_errors=True)


def config(c: CertServer, **over: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "type": "sftp",
        "host": "127.0.0.1",
        "port": c.sshd.port,
        "username": USER,
        "password": None,
        "host_ca": str(c.host_ca) + ".pub",
        "root": str(c.sshd.root),
        "timeout": "5s",
        "max_connection_attempts": 1,
    }
    cfg.update(over)
    return {k: v for k, v in cfg.items() if v is not None}


async def check(c: CertServer, **over: Any) -> str:
    return await check_sftp(config(c, **over))


def user_key(c: CertServer, name: str, principal: str = USER, *, beside: bool = True) -> tuple[Path, Path]:
    """A fresh client key the server's authorized_keys does not list, and its certificate."""
    key = keygen(c.dir / name, ["-t", "ed25519"])
    cert = sign(c.user_ca, key, principal=principal, out=None if beside else c.dir / f"{name}.certificate")
    return key, cert


# --------------------------------------------------------------------------- user certificates
async def test_user_certificate_beside_the_key(certs: CertServer) -> None:
    key, _ = user_key(certs, "id_cert")
    assert await check(certs, private_key_file=str(key))  # the key alone is in no authorized_keys


async def test_certificate_file(certs: CertServer) -> None:
    key, cert = user_key(certs, "id_cert_elsewhere", beside=False)
    assert await check(certs, private_key_file=str(key), certificate_file=str(cert))


async def test_certificate_for_another_principal_is_refused(certs: CertServer) -> None:
    key, cert = user_key(certs, "id_cert_alice", principal="alice")
    with pytest.raises(AuthError) as ei:
        await check(certs, private_key_file=str(key))
    msg = str(ei.value)
    assert "instance 'partner'" in msg and f"certificate {cert}" in msg and "alice" in msg


async def test_certificate_of_another_key(certs: CertServer) -> None:
    key, _ = user_key(certs, "id_cert_a")
    _, other = user_key(certs, "id_cert_b")
    with pytest.raises(AuthError) as ei:
        await check(certs, private_key_file=str(key), certificate_file=str(other))
    assert f"certificate_file {other} is not a certificate of" in str(ei.value)


# --------------------------------------------------------------------------- host certificates
async def test_host_ca_text(certs: CertServer, ssh_client_keys: KeySet) -> None:  # noqa: F811
    text = Path(str(certs.host_ca) + ".pub").read_text().strip()
    desc = await check(certs, password="conveyor-Test-pw1", host_ca=text)
    assert "certified by host_ca" in desc


async def test_host_ca_file(certs: CertServer) -> None:
    assert "certified by host_ca" in await check(certs, password="conveyor-Test-pw1")


async def test_host_ca_other_ca_is_refused(certs: CertServer) -> None:
    stranger = keygen(certs.dir / "stranger_ca", ["-t", "ed25519"])
    with pytest.raises(HostKeyError) as ei:
        await check(certs, password="conveyor-Test-pw1", host_ca=str(stranger) + ".pub")
    msg = str(ei.value)
    assert "instance 'partner'" in msg and "not signed by a host_ca" in msg


async def test_known_hosts_cert_authority(certs: CertServer) -> None:
    ca = Path(str(certs.host_ca) + ".pub").read_text().strip()
    kh = certs.dir / "known_hosts"
    kh.write_text(f"@cert-authority [127.0.0.1]:{certs.sshd.port} {ca}\n")
    assert await check(certs, password="conveyor-Test-pw1", host_ca=None, known_hosts=str(kh))


async def test_host_ca_server_without_certificate(certs: CertServer, sshd: Sshd) -> None:  # noqa: F811
    with pytest.raises(HostKeyError) as ei:
        await check_sftp(sshd.instance_config(host_fingerprint=None, host_ca=str(certs.host_ca) + ".pub"))
    assert "offers no host certificate" in str(ei.value)
