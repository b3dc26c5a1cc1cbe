"""FTPS client certificates (mutual TLS) on a real vsftpd that requires one (``require_cert=YES``,
``validate_cert=YES``, ``ca_certs_file`` a CA made here with trustme): uploads and downloads through
``conveyor run`` with a certificate that CA signed, over explicit and implicit TLS (every data
channel resumes the control session, ``require_ssl_reuse=YES``); a clear refusal without a
certificate and with one from another CA, over TLS 1.2 and 1.3; unusable certificate and key
files caught by ``conveyor check`` and at connect, naming the key and the file."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from pydantic import ValidationError

from conveyor.errors import AuthError, ConveyorError, Permanent
from conveyor.transfer.ftp.config import FtpConfig
from tests.backends.ftp import ftp_instance
from tests.harness import DaemonProcess, bodies, wait_for, write_config
from tests.servers.vsftpd import vsftpd_certs, vsftpd_factory

__all__ = ["vsftpd_certs", "vsftpd_factory"]

CONVEYOR = str(Path(sys.executable).parent / "conveyor")
PASSPHRASE = "client-Key-Pass-7"


@dataclass
class ClientCerts:
    """A CA the server trusts for client certificates, and client certificates as files."""

    ca: Path
    combined: Path
    """Private key and certificate in one PEM file."""
    cert: Path
    key: Path
    encrypted_key: Path
    """``key`` encrypted with :data:`PASSPHRASE`."""
    stranger: Path
    """Key and certificate from a CA the server does not trust."""
    stranger_key: Path


@pytest.fixture(scope="module")
def client_certs(tmp_path_factory: pytest.TempPathFactory) -> ClientCerts:
    d = tmp_path_factory.mktemp("client-certs")
    ca, other = trustme.CA(), trustme.CA()
    issued = ca.issue_cert("client.example", common_name="conveyor test client")
    stranger = other.issue_cert("client.example", common_name="conveyor test client")
    files = ClientCerts(
        ca=d / "client-ca.pem",
        combined=d / "client.pem",
        cert=d / "client-cert.pem",
        key=d / "client-key.pem",
        encrypted_key=d / "client-key-encrypted.pem",
        stranger=d / "stranger.pem",
        stranger_key=d / "stranger-key.pem",
    )
    ca.cert_pem.write_to_path(str(files.ca))
    issued.private_key_and_cert_chain_pem.write_to_path(str(files.combined))
    issued.cert_chain_pems[0].write_to_path(str(files.cert))
    issued.private_key_pem.write_to_path(str(files.key))
    stranger.private_key_and_cert_chain_pem.write_to_path(str(files.stranger))
    stranger.private_key_pem.write_to_path(str(files.stranger_key))
    key = serialization.load_pem_private_key(issued.private_key_pem.bytes(), None)
    files.encrypted_key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(PASSPHRASE.encode()),
        )
    )
    return files


# -- the config --------------------------------------------------------------------------------
def test_client_certificate_needs_tls() -> None:
    base = {"type": "ftp", "host": "ftp.example"}
    with pytest.raises(ValidationError, match="client_certificate_file is set but tls is none"):
        FtpConfig.model_validate({**base, "client_certificate_file": "/c.pem"})
    with pytest.raises(ValidationError, match="client_key_file is set but there is no client_certificate_file"):
        FtpConfig.model_validate({**base, "tls": "explicit", "client_key_file": "/k.pem"})
    with pytest.raises(ValidationError, match="client_key_passphrase is set but there is no client_certificate_file"):
        FtpConfig.model_validate({**base, "tls": "explicit", "client_key_passphrase": "x"})


def _check_offline(cfg: Path, *flags: str) -> tuple[int, str]:
    r = subprocess.run([CONVEYOR, "check", *flags, "-c", str(cfg)], capture_output=True, text=True, timeout=60)
    assert "Traceback" not in r.stdout + r.stderr, r.stderr
    return r.returncode, r.stdout + r.stderr


@pytest.mark.parametrize(
    ("case", "key", "why"),
    [
        ("missing certificate", "client_certificate_file", "cannot read it: No such file or directory"),
        ("missing key", "client_key_file", "cannot read it: No such file or directory"),
        ("no key anywhere", "client_certificate_file", "holds no private key: set client_key_file"),
        ("not a certificate", "client_certificate_file", "no PEM certificate in it"),
        (
            "key of another certificate",
            "client_key_file",
            "is not the key of the certificate in client_certificate_file",
        ),
        ("encrypted, no passphrase", "client_key_file", "is encrypted: set client_key_passphrase"),
        ("wrong passphrase", "client_key_file", "cannot decrypt it with client_key_passphrase"),
    ],
)
def test_conveyor_check_names_an_unusable_certificate_or_key_file(
    client_certs: ClientCerts, tmp_path: Path, case: str, key: str, why: str
) -> None:
    c = client_certs
    inst: dict[str, Any] = {"type": "ftp", "host": "127.0.0.1", "tls": "explicit", "password": "pw"}
    inst.update(
        {
            "missing certificate": {"client_certificate_file": str(tmp_path / "nope.pem")},
            "missing key": {"client_certificate_file": str(c.cert), "client_key_file": str(tmp_path / "nope.key")},
            "no key anywhere": {"client_certificate_file": str(c.cert)},
            "not a certificate": {"client_certificate_file": str(c.key)},
            "key of another certificate": {
                "client_certificate_file": str(c.cert),
                "client_key_file": str(c.stranger_key),
            },
            "encrypted, no passphrase": {
                "client_certificate_file": str(c.cert),
                "client_key_file": str(c.encrypted_key),
            },
            "wrong passphrase": {
                "client_certificate_file": str(c.cert),
                "client_key_file": str(c.encrypted_key),
                "client_key_passphrase": "not-the-Passphrase-9",
            },
        }[case]
    )
    flows = {"f": {"source": {"instance": "partner", "path": "in"}, "target": {"type": "directory", "path": "/x"}}}
    rc, out = _check_offline(write_config(tmp_path, {"partner": inst}, flows))
    assert rc == 2, out
    line = next((x for x in out.splitlines() if f"instances.partner.{key}" in x), None)
    assert line is not None, out
    assert why in line and str(inst[key]) in line, line
    assert "not-the-Passphrase-9" not in out
    if case == "missing certificate":  # a config checked away from the machine it runs on
        assert _check_offline(write_config(tmp_path, {"partner": inst}, flows), "--skip-files")[0] == 0


def test_conveyor_check_accepts_usable_files(client_certs: ClientCerts, tmp_path: Path) -> None:
    c = client_certs
    flows = {"f": {"source": {"instance": "a", "path": "in"}, "target": {"type": "directory", "path": "/x"}}}
    base = {"type": "ftp", "host": "127.0.0.1", "tls": "implicit"}
    instances = {
        "a": {**base, "client_certificate_file": str(c.combined)},
        "b": {**base, "client_certificate_file": str(c.cert), "client_key_file": str(c.key)},
        "c": {
            **base,
            "client_certificate_file": str(c.cert),
            "client_key_file": str(c.encrypted_key),
            "client_key_passphrase": PASSPHRASE,
        },
        # a passphrase the key does not need is no error
        "d": {**base, "client_certificate_file": str(c.combined), "client_key_passphrase": PASSPHRASE},
    }
    rc, out = _check_offline(write_config(tmp_path, instances, flows))
    assert rc == 0, out


async def test_a_file_gone_at_connect_is_a_permanent_error_naming_it(
    vsftpd_factory: Any, client_certs: ClientCerts, tmp_path: Path
) -> None:
    srv = vsftpd_factory("explicit", client_ca=client_certs.ca)
    gone = tmp_path / "rotated-away.pem"
    inst, status, _ = ftp_instance(srv.config(client_certificate_file=str(gone)), tmp_path / "spool")
    try:
        with pytest.raises(Permanent, match=f"client_certificate_file {gone}: cannot read it: No such file"):
            await inst.check()
        assert status.instances["ftp-test"].permanent
    finally:
        await inst.close()


# -- on the server -----------------------------------------------------------------------------
@pytest.mark.parametrize("tls", ["explicit", "implicit"])
async def test_transfers_through_conveyor_run_with_a_client_certificate(
    vsftpd_factory: Any, client_certs: ClientCerts, tmp_path: Path, tls: str
) -> None:
    """Downloads and uploads (each a data channel that must carry the certificate's session)."""
    c = client_certs
    # debug_ssl logs, per data channel, whether it presented the control connection's certificate.
    srv = vsftpd_factory(tls, client_ca=c.ca, extra={"debug_ssl": "YES", "xferlog_enable": "YES"})
    files = {f"d{i}.bin": os.urandom(300_000 + i) for i in range(4)}
    for name, data in files.items():
        srv.put(f"in/{name}", data)
    up = {f"u{i}.bin": os.urandom(200_000 + i) for i in range(3)}
    drop = tmp_path / "drop"
    drop.mkdir()
    for name, data in up.items():
        (drop / name).write_bytes(data)
    cert: dict[str, Any] = (
        {"client_certificate_file": str(c.combined)}
        if tls == "implicit"
        else {
            "client_certificate_file": str(c.cert),
            "client_key_file": str(c.encrypted_key),
            "client_key_passphrase": PASSPHRASE,
        }
    )
    out = tmp_path / "out"
    src = {"poll_interval": "200ms", "min_age": "0s", "after": "delete"}
    flows = {
        "pull": {
            "source": {"instance": "remote", "path": "in", **src},
            "target": {"type": "directory", "path": str(out)},
        },
        "push": {"source": {"instance": "disk", "path": "", **src}, "target": {"instance": "remote", "path": "up"}},
    }
    cfg = write_config(tmp_path, {"remote": srv.config(**cert), "disk": {"type": "local", "root": str(drop)}}, flows)

    def done() -> bool:
        there = srv.root / "up"
        return (
            len(bodies(out)) == len(files)
            and there.is_dir()
            and sorted(p.name for p in there.iterdir()) == sorted(up)
            and not any(drop.iterdir())
        )

    d = DaemonProcess(cfg).start()
    try:
        await wait_for(lambda: d.proc is not None and (d.proc.poll() is not None or done()), 60)
        assert d.proc is not None and d.proc.poll() is None, d.text()[-3000:]
    finally:
        d.stop()
    digests = sorted(hashlib.sha256(b).hexdigest() for b in bodies(out).values())
    assert digests == sorted(hashlib.sha256(b).hexdigest() for b in files.values())
    for name, data in up.items():
        assert (srv.root / "up" / name).read_bytes() == data
    assert not any((srv.root / "in").iterdir())
    server_log = (srv.workdir / "vsftpd.log").read_text()
    assert server_log.count("Matching cert on data channel.") >= len(files) + len(up), server_log
    assert "cert on data channel" not in server_log.replace("Matching cert on data channel", ""), server_log
    text = d.text()
    assert "error" not in {r.get("level") for r in d.logs()}, text[-3000:]
    assert PASSPHRASE not in text
    assert str(c.encrypted_key) not in text


async def _refusal(
    vsftpd_factory: Any, client_certs: ClientCerts, tmp_path: Path, tls: str, version: str, **over: Any
) -> ConveyorError:
    """The error of a login to a vsftpd that requires a certificate signed by ``client_certs.ca``."""
    srv = vsftpd_factory(tls, client_ca=client_certs.ca)
    inst, _, _ = ftp_instance(srv.config(tls_max_version=version, **over), tmp_path / "spool")
    try:
        with pytest.raises(ConveyorError) as info:
            await inst.check()
        return info.value
    finally:
        await inst.close()


TLS_VARIANTS = pytest.mark.parametrize(
    ("tls", "version"), [(t, v) for t in ("explicit", "implicit") for v in ("1.2", "1.3")]
)


@TLS_VARIANTS
async def test_without_a_client_certificate_the_error_says_to_set_one(
    vsftpd_factory: Any, client_certs: ClientCerts, tmp_path: Path, tls: str, version: str
) -> None:
    err = await _refusal(vsftpd_factory, client_certs, tmp_path, tls, version)
    # TLS 1.3 says "certificate required"; vsftpd over TLS 1.2 fails the handshake without a reason.
    assert "client certificate" in str(err) and "set client_certificate_file" in str(err), err
    if version == "1.3" and tls == "implicit":
        assert isinstance(err, AuthError) and "the server requires a client certificate" in str(err), err


@TLS_VARIANTS
async def test_a_certificate_from_another_ca_is_refused_clearly(
    vsftpd_factory: Any, client_certs: ClientCerts, tmp_path: Path, tls: str, version: str
) -> None:
    stranger = client_certs.stranger
    err = await _refusal(vsftpd_factory, client_certs, tmp_path, tls, version, client_certificate_file=str(stranger))
    assert f"client certificate in client_certificate_file {stranger}" in str(err), err
    if not (version == "1.3" and tls == "explicit"):  # there, the server's alert may be lost to its reset
        assert isinstance(err, AuthError) and "unknown ca" in str(err), err


async def test_check_connect_with_a_client_certificate(
    vsftpd_factory: Any, client_certs: ClientCerts, tmp_path: Path
) -> None:
    srv = vsftpd_factory("explicit", client_ca=client_certs.ca)
    srv.put("in/a.csv", b"a")
    flows = {
        "pull": {
            "source": {"instance": "partner", "path": "in"},
            "target": {"type": "directory", "path": str(tmp_path / "o")},
        }
    }
    cfg = write_config(tmp_path, {"partner": srv.config(client_certificate_file=str(client_certs.combined))}, flows)
    rc, out = await _check_connect(cfg)
    assert rc == 0, out
    assert "folder exists, listed: 1 file" in out, out
    assert "with client certificate CN=conveyor test client" in out, out
    assert str(client_certs.combined) not in out
    cfg = write_config(tmp_path, {"partner": srv.config(tls_max_version="1.2")}, flows)
    rc, out = await _check_connect(cfg)
    assert rc == 2, out
    assert "FAIL  partner (ftp)" in out and "set client_certificate_file" in out, out


async def _check_connect(cfg: Path) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        CONVEYOR, "check", "--connect", "-c", str(cfg), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    text = out.decode()
    assert "Traceback" not in text, text
    return int(proc.returncode or 0), text
