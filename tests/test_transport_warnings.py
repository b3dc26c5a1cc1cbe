"""Weak transport is never silent: ``conveyor run`` logs one warning line per weak setting, naming
its key, and ``/status`` lists them; a PostgreSQL state URL for another host verifies the server's
certificate unless it names an sslmode.

"Another host" is this machine's own non-loopback address here (no remote PostgreSQL exists on
this test machine): traffic to it goes through the network stack as to any host, and the server,
which has no TLS, is reached through a TCP proxy listening on that address.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from conveyor.state.postgres import PostgresStore, connect_options, weak_tls
from conveyor.transfer.sftp.hostkeys import md5_fp, sha256_fp
from tests.backends.sftp import ssh_client_keys, sshd  # noqa: F401  (the fixtures)
from tests.servers.ops import DaemonProcess, free_port, get_json, wait_for, write_config
from tests.servers.postgres import create_database, drop_database
from tests.servers.ssh_keys import KeySet
from tests.servers.sshd import Sshd, own_sshd
from tests.tcp_proxy import TcpProxy


def own_address() -> str:
    """This machine's address on its network interface (not loopback)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing address
        addr: str = s.getsockname()[0]
    assert not addr.startswith("127."), "these tests need a non-loopback IPv4 address on this machine"
    return addr


@pytest.fixture
async def pg_db() -> AsyncIterator[str]:
    """A fresh database on the local PostgreSQL (no TLS), as a loopback URL."""
    url = await create_database()
    try:
        yield url
    finally:
        await drop_database(url)


@pytest.fixture
async def pg_elsewhere(pg_db: str) -> AsyncIterator[str]:
    """The same database as a URL naming this machine's network address (a proxy to the server)."""
    async with TcpProxy("127.0.0.1", 5432, listen=own_address()) as proxy:
        yield pg_db.replace("127.0.0.1:5432", f"{proxy.listen}:{proxy.port}")


def warning_lines(d: DaemonProcess) -> list[str]:
    docs = [json.loads(line) for line in d.err.read_text().splitlines() if line.startswith("{")]
    return [x["msg"] for x in docs if x["level"] == "warning" and x["msg"].startswith("weak transport: ")]


async def test_run_warns_once_per_weak_setting_and_status_lists_them(tmp_path: Path, pg_elsewhere: str) -> None:
    closed, port = free_port(), free_port()
    (tmp_path / "box" / "in").mkdir(parents=True)
    blob = b"\x00\x00\x00\x0bssh-ed25519" + b"k" * 36
    state = pg_elsewhere + "?sslmode=prefer"
    config = write_config(
        tmp_path / "c.yaml",
        {
            "state": state,
            "health": {"listen": f"127.0.0.1:{port}"},
            "instances": {
                "box": {"type": "local", "root": str(tmp_path / "box")},
                "legacy": {
                    "type": "ftp",
                    "host": "127.0.0.1",
                    "port": closed,
                    "username": "acme",
                    "password": "ftp-Secret-71q",
                    "timeout": "1s",
                },
                "anon": {"type": "ftp", "host": "127.0.0.1", "port": closed, "timeout": "1s"},
                "partner": {
                    "type": "sftp",
                    "host": "127.0.0.1",
                    "port": closed,
                    "username": "acme",
                    "password": "sftp-Secret-18z",
                    "timeout": "1s",
                    "host_fingerprint": [sha256_fp(blob), md5_fp(blob)],
                },
            },
            "flows": {
                "to-https": {
                    "source": {"instance": "box", "path": "in", "poll_interval": "500ms"},
                    "target": {"type": "http", "url": f"https://127.0.0.1:{closed}/hook", "tls_verify": False},
                },
                "from-ftp": {
                    "source": {"instance": "legacy", "path": "out", "poll_interval": "500ms"},
                    "target": {"type": "directory", "path": str(tmp_path / "o1")},
                },
                "from-anon": {
                    "source": {"instance": "anon", "path": "out", "poll_interval": "500ms"},
                    "target": {"type": "directory", "path": str(tmp_path / "o1")},
                },
                "from-sftp": {
                    "source": {"instance": "partner", "path": "out", "poll_interval": "500ms"},
                    "target": {"type": "directory", "path": str(tmp_path / "o2")},
                },
            },
        },
    )
    d = DaemonProcess(config, port).start()
    try:
        await d.wait_listening()
        async with aiohttp.ClientSession() as s:
            await wait_for(lambda: _polled(s, d.url), 20, 0.2)
            _, doc = await get_json(s, d.url + "/status")
    finally:
        await asyncio.to_thread(d.stop)  # the PostgreSQL proxy runs on this loop: keep it serving
    expected = {
        "instances.legacy.password": "sent in clear text: tls is none (plain FTP)",
        "instances.partner.host_fingerprint[1]": "an MD5 fingerprint",
        "flows.to-https.target.tls_verify": "false: the server's certificate is not checked",
        "state": f"sslmode=prefer: the certificate of {own_address()} is not checked",
    }
    lines = warning_lines(d)
    assert len(lines) == len(expected), lines
    for key, text in expected.items():
        assert sum(line.startswith(f"weak transport: {key}: {text}") for line in lines) == 1, (key, lines)
        assert sum(w.startswith(f"{key}: {text}") for w in doc["warnings"]) == 1, (key, doc["warnings"])
    assert len(doc["warnings"]) == len(expected)
    assert [w.split(":")[0] for w in doc["instances"]["legacy"]["warnings"]] == ["instances.legacy.password"]
    partner = doc["instances"]["partner"]["warnings"]
    assert [w.split(":")[0] for w in partner] == ["instances.partner.host_fingerprint[1]"]
    assert doc["instances"]["anon"]["warnings"] == []
    assert "ftp-Secret-71q" not in d.output()


async def _polled(s: aiohttp.ClientSession, url: str) -> bool:
    _, doc = await get_json(s, url + "/status")
    return all(f["last_poll"] or f["last_error"] for f in doc["flows"].values())


@pytest.fixture
def sha1_sshd(ssh_client_keys: KeySet) -> Iterator[Sshd]:  # noqa: F811
    """An OpenSSH sshd left with SHA-1 only: group14-sha1 key exchange, ssh-rsa signatures, an RSA host key."""
    yield from own_sshd(
        ssh_client_keys, ("rsa",), ("KexAlgorithms diffie-hellman-group14-sha1", "HostKeyAlgorithms ssh-rsa")
    )


@pytest.mark.parametrize("check", ["fingerprint", "known_hosts"])
async def test_sha1_kex_and_signature_are_reported(tmp_path: Path, sha1_sshd: Sshd, check: str) -> None:
    instance: dict[str, Any] = sha1_sshd.instance_config(host_fingerprint=sha256_fp(sha1_sshd.host_blob("rsa")))
    if check == "known_hosts":
        known = tmp_path / "known_hosts"
        pub = Path(str(sha1_sshd.host_keys["rsa"]) + ".pub").read_text().split()
        known.write_text(f"[127.0.0.1]:{sha1_sshd.port} {pub[0]} {pub[1]}\n")
        del instance["host_fingerprint"]
        instance["known_hosts"] = str(known)
    sha1_sshd.put("out/a.csv", b"a")
    d, doc = await run_until_delivered(tmp_path, instance, "out")
    lines = warning_lines(d)
    assert len(lines) == 2, lines
    assert lines[0].startswith("weak transport: instances.sftp: key exchange uses SHA-1")
    assert lines[1].startswith(
        "weak transport: instances.sftp: the server proves its ssh-rsa host key with a SHA-1 signature"
    )
    assert [w[:40] for w in doc["warnings"]] == [line[len("weak transport: ") :][:40] for line in lines]
    assert doc["instances"]["sftp"]["warnings"] == doc["warnings"] and doc["instances"]["sftp"]["state"] == "up"


async def test_a_modern_server_gives_no_sha1_warning(tmp_path: Path, sshd: Sshd) -> None:  # noqa: F811
    sshd.put("modern/a.csv", b"a")
    instance = sshd.instance_config(host_fingerprint=sha256_fp(sshd.host_blob("rsa")))
    d, doc = await run_until_delivered(tmp_path, instance, "modern")
    assert warning_lines(d) == [] and doc["warnings"] == []


async def run_until_delivered(tmp_path: Path, instance: dict[str, Any], path: str) -> tuple[DaemonProcess, Any]:
    """``conveyor run`` with one flow from ``instance``'s ``path`` until a file arrived; the stopped
    daemon and its /status document from then."""
    port = free_port()
    config = write_config(
        tmp_path / "c.yaml",
        {
            "health": {"listen": f"127.0.0.1:{port}"},
            "instances": {"sftp": instance},
            "flows": {
                "f": {
                    "source": {"instance": "sftp", "path": path, "poll_interval": "300ms", "min_age": "0s"},
                    "target": {"type": "directory", "path": str(tmp_path / "o")},
                }
            },
        },
    )
    d = DaemonProcess(config, port).start()
    try:
        await d.wait_listening()
        await wait_for(lambda: (tmp_path / "o").is_dir() and any((tmp_path / "o").iterdir()), 30, 0.2)
        async with aiohttp.ClientSession() as s:
            _, doc = await get_json(s, d.url + "/status")
    finally:
        d.stop()
    return d, doc


def test_status_command_shows_the_warnings() -> None:
    from conveyor.remote import render_status

    text = render_status({"warnings": ["state: sslmode=prefer: the certificate of db is not checked"]})
    assert text.endswith("\nweak transport:\n  state: sslmode=prefer: the certificate of db is not checked")
    assert "weak transport" not in render_status({"warnings": []})


# --------------------------------------------------------------------------- PostgreSQL TLS
def test_connect_options_default_to_verify_full_for_another_host(tmp_path: Path) -> None:
    """No CA file anywhere: an SSL context over the system's CAs, certificate and host name checked."""
    env = {"HOME": str(tmp_path)}
    url = "postgresql://conveyor@db.example.com/conveyor"
    assert connect_options(url, env=env)[0] == url
    ctx = connect_options(url, env=env)[1]["ssl"]
    assert isinstance(ctx, ssl.SSLContext)
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    for url in (
        "postgresql://u@db.example.com:5433,db2.example.com/x",
        "postgres://u@192.0.2.7/x",
        "postgresql://u@[2001:db8::7]:5432/x",
        "postgresql://u@localhost,db.example.com/x",
    ):
        assert isinstance(connect_options(url, env=env)[1].get("ssl"), ssl.SSLContext), url


def test_with_a_ca_file_the_driver_gets_verify_full(tmp_path: Path) -> None:
    """A CA file named in the URL, in $PGSSLROOTCERT or at ~/.postgresql/root.crt: ``sslmode=verify-full``
    on the URL, which the driver turns into a context trusting that CA alone."""
    ca = tmp_path / "ca.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(tmp_path / "k.pem"),
            "-out",
            str(ca),
            "-days",
            "1",
            "-subj",
            "/CN=test-ca",
        ],
        check=True,
        capture_output=True,
    )
    home = tmp_path / "home"
    (home / ".postgresql").mkdir(parents=True)
    for url, env in (
        (f"postgresql://u@db.example.com/x?sslrootcert={ca}", {"HOME": "/nonexistent"}),
        ("postgresql://u@db.example.com/x", {"HOME": "/nonexistent", "PGSSLROOTCERT": str(ca)}),
    ):
        got, extra = connect_options(url, env=env)
        assert extra == {} and got.endswith("sslmode=verify-full"), got
    (home / ".postgresql" / "root.crt").write_bytes(ca.read_bytes())
    got, extra = connect_options("postgresql://u@db.example.com/x", env={"HOME": str(home)})
    assert (got, extra) == ("postgresql://u@db.example.com/x?sslmode=verify-full", {})


def test_local_urls_and_named_sslmodes_are_left_alone() -> None:
    for url in (
        "postgresql://u@127.0.0.1:5432/x",
        "postgresql://u@localhost/x",
        "postgresql://u@[::1]/x",
        "postgresql:///x",
        "postgresql:///x?host=/run/postgresql",
        "postgresql://u@%2Frun%2Fpostgresql/x",
        "postgresql://u@db.example.com/x?sslmode=require",
        "postgresql://u@db.example.com/x?sslmode=disable",
    ):
        assert connect_options(url, env={}) == (url, {}), url
    url = "postgresql://u@db.example.com/x"
    assert connect_options(url, env={"PGSSLMODE": "verify-ca"}) == (url, {})
    assert connect_options("postgresql:///x", env={"PGHOST": "db.example.com"})[1].get("ssl") is not None
    assert weak_tls(url, env={}) is None  # verify-full by default: nothing to say
    assert weak_tls("postgresql://u@127.0.0.1/x?sslmode=disable", env={}) is None
    assert weak_tls(url + "?sslmode=require", env={}) == (
        "sslmode=require: the certificate of db.example.com is not checked, so anyone on the way can pose as the server"
    )
    assert "strip" in (weak_tls(url, env={"PGSSLMODE": "prefer"}) or "")


async def test_loopback_postgres_still_connects_without_tls(pg_db: str) -> None:
    store = PostgresStore(pg_db, "replica-1")
    assert store.connect == {}
    await store.open()
    try:
        claimed = await store.claim("f", "id-1", {"name": "a.csv"}, 30.0)
        assert claimed is not None
    finally:
        await store.close()


async def test_another_host_without_tls_is_refused_not_downgraded(tmp_path: Path, pg_elsewhere: str) -> None:
    """The server has no TLS: with the default verify-full, conveyor does not fall back to plain text
    (sslmode=prefer would have), and ``conveyor run`` says why in one line."""
    config = write_config(
        tmp_path / "c.yaml",
        {
            "state": pg_elsewhere,
            "health": {"listen": None},
            "instances": {"box": {"type": "local", "root": str(tmp_path)}},
            "flows": {
                "f": {
                    "source": {"instance": "box", "path": "."},
                    "target": {"type": "directory", "path": str(tmp_path / "o")},
                }
            },
        },
    )
    r = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "conveyor", "run", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode != 0
    fatal = [json.loads(line) for line in r.stderr.splitlines() if '"critical"' in line]
    assert len(fatal) == 1 and "SSL" in fatal[0]["msg"], r.stderr[-2000:]
    assert "Traceback" not in r.stderr


def https_flow(tmp_path: Path, tls_verify: bool) -> Path:
    """A config with one flow posting to an https:// target (``tls_verify`` as given)."""
    (tmp_path / "in").mkdir(exist_ok=True)
    return write_config(
        tmp_path / "c.yaml",
        {
            "health": {"listen": None},
            "instances": {"box": {"type": "local", "root": str(tmp_path)}},
            "flows": {
                "post": {
                    "source": {"instance": "box", "path": "in"},
                    "target": {"type": "http", "url": "https://127.0.0.1:9/hook", "tls_verify": tls_verify},
                }
            },
        },
    )


async def test_reload_and_check_say_the_same(tmp_path: Path) -> None:
    """``conveyor check`` prints the warnings; a reload that fixes the setting takes it off /status."""
    from tests.harness import running

    config = https_flow(tmp_path, tls_verify=False)
    r = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "conveyor", "check", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0 and r.stdout.splitlines()[1:] == [
        "warning: weak transport: flows.post.target.tls_verify: false: the server's certificate is not checked, "
        "so anyone on the way can read and change what is posted"
    ]
    async with running(config) as d:
        await wait_for(lambda: "post" in d.flows)  # started: a reload now has flows to compare
        assert [w.split(":")[0] for w in d.status.snapshot()["warnings"]] == ["flows.post.target.tls_verify"]
        https_flow(tmp_path, tls_verify=True)
        assert await d.reload()
        assert d.status.snapshot()["warnings"] == []
