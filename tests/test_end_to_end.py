"""End to end through ``conveyor run`` as a child process, on real servers.

The connector tests drive these paths in process; here the whole daemon, started as a user
starts it, does: SFTP key login (RSA PEM, ed25519) with an MD5 host-key pin and with
``known_hosts`` against OpenSSH sshd; implicit FTPS and active-mode FTP on vsftpd; a Pub/Sub
target fed by a local folder; SIGTERM while deliveries are in flight.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from conveyor.transfer.sftp.hostkeys import md5_fp
from tests.backends.pubsub import PubsubBackend, pubsub_backend, pubsub_emulator
from tests.backends.sftp import SftpBackend, sftp_openssh_backend, ssh_client_keys, sshd
from tests.counting_sink import counting_sink, settled_count
from tests.harness import DaemonProcess, bodies, wait_for, write_config
from tests.servers.ssh_keys import KeySet
from tests.servers.vsftpd import vsftpd_certs, vsftpd_factory

__all__ = [
    "pubsub_backend",
    "pubsub_emulator",
    "sftp_openssh_backend",
    "ssh_client_keys",
    "sshd",
    "vsftpd_certs",
    "vsftpd_factory",
]


def digests(values: Any) -> set[str]:
    return {hashlib.sha256(v).hexdigest() for v in values}


def source(**over: Any) -> dict[str, Any]:
    """A file source on ``in`` that deletes what it delivered."""
    return {"instance": "remote", "path": "in", "poll_interval": "200ms", "min_age": "0s", "after": "delete", **over}


async def run_until(cfg: Path, done: Any, limit: float = 60) -> DaemonProcess:
    """``conveyor run`` until ``done()``; stopped with SIGTERM, exit code 0 asserted."""
    d = DaemonProcess(cfg).start()
    try:
        await wait_for(lambda: d.proc is not None and (d.proc.poll() is not None or done()), limit)
        assert d.proc is not None and d.proc.poll() is None, f"the daemon exited:\n{d.text()[-3000:]}"
    finally:
        assert d.stop() == 0, d.text()[-3000:]
    return d


@pytest.mark.parametrize("key", ["rsa-pem", "ed25519"])
@pytest.mark.parametrize("host_check", ["md5-pin", "known_hosts"])
async def test_sftp_key_login_on_openssh(
    sftp_openssh_backend: SftpBackend, ssh_client_keys: KeySet, tmp_path: Path, key: str, host_check: str
) -> None:
    """A private key file, no password; the host key checked by an MD5 pin of its RSA key or
    by a known_hosts file holding its ed25519 key."""
    fb = sftp_openssh_backend
    files = {f"in/k{i}.csv": os.urandom(3000 + i) for i in range(5)}
    for p, data in files.items():
        fb.put(p, data)
    if key == "rsa-pem":
        assert "BEGIN RSA PRIVATE KEY" in ssh_client_keys.keys[key].read_text()
    if host_check == "md5-pin":
        hostkey: dict[str, Any] = {"host_fingerprint": md5_fp(fb.host_blob("rsa"))}
    else:
        kh = tmp_path / "known_hosts"
        kh.write_text(f"[127.0.0.1]:{fb.port} ssh-ed25519 {base64.b64encode(fb.host_blob('ed25519')).decode()}\n")
        hostkey = {"host_fingerprint": None, "known_hosts": str(kh)}
    inst = fb.instance_config(password=None, private_key_file=str(ssh_client_keys.keys[key]), **hostkey)
    out = tmp_path / "out"
    cfg = write_config(
        tmp_path, {"remote": inst}, {"f": {"source": source(), "target": {"type": "directory", "path": str(out)}}}
    )
    await run_until(cfg, lambda: len(bodies(out)) == len(files) and fb.names("in") == [])
    assert digests(bodies(out).values()) == digests(files.values())


@pytest.mark.parametrize(("tls", "passive"), [("implicit", True), ("none", False)], ids=["implicit-ftps", "active-ftp"])
async def test_vsftpd(vsftpd_factory: Any, tmp_path: Path, tls: str, passive: bool) -> None:
    """Implicit FTPS (``implicit_ssl=YES``, TLS from the first byte) and plain FTP in active
    mode (the server connects back for each data channel), downloads and an after-move."""
    # Active mode with passive mode switched off at the server: only active transfers can work.
    srv = vsftpd_factory(tls, extra=None if passive else {"pasv_enable": "NO"})
    files = {f"k{i}.bin": os.urandom(20_000 + i) for i in range(5)}
    for name, data in files.items():
        srv.put(f"in/{name}", data)
    out = tmp_path / "out"
    cfg = write_config(
        tmp_path,
        {"remote": srv.config(passive=passive)},
        {"f": {"source": source(after={"move": "done"}), "target": {"type": "directory", "path": str(out)}}},
    )
    d = await run_until(
        cfg,
        lambda: (
            len(bodies(out)) == len(files) and sorted(p.name for p in (srv.root / "done").glob("*")) == sorted(files)
        ),
    )
    assert digests(bodies(out).values()) == digests(files.values())
    assert not any((srv.root / "in").iterdir())
    if tls == "implicit":
        assert "implicit_ssl=YES" in (srv.workdir / "vsftpd.conf").read_text()
    assert "error" not in {r.get("level") for r in d.logs()}, [r for r in d.logs() if r.get("level") == "error"]


async def test_pubsub_target_fed_by_a_local_folder(pubsub_backend: PubsubBackend, tmp_path: Path) -> None:
    """Files from a local folder published to a topic; read back with a plain pull."""
    emu = pubsub_backend.emu
    topic, sub = f"{pubsub_backend.topic}-files", f"{pubsub_backend.topic}-files-sub"
    emu.create(topic, sub)
    disk = tmp_path / "disk"
    (disk / "in").mkdir(parents=True)
    files = {f"p{i}.json": f'{{"n": {i}}}'.encode() + os.urandom(100) for i in range(20)}
    for name, data in files.items():
        (disk / "in" / name).write_bytes(data)
    cfg = write_config(
        tmp_path,
        {"remote": {"type": "local", "root": str(disk)}, "gcp": pubsub_backend.instance_config()},
        {"f": {"source": source(), "target": {"instance": "gcp", "topic": topic}}},
    )
    got: dict[bytes, Any] = {}

    async def all_published() -> bool:
        await asyncio.to_thread(emu.pull_into, sub, got)
        return len(got) >= len(files)

    d = DaemonProcess(cfg).start()
    try:
        await wait_for(all_published, 60, 0.2)
        await wait_for(lambda: not any((disk / "in").iterdir()), 30)
    finally:
        assert d.stop() == 0, d.text()[-3000:]
    assert sorted(got) == sorted(files.values())
    m = got[files["p3.json"]]
    assert m.attributes["conveyor_flow"] == "f" and m.attributes["conveyor_source"] == "local:remote"


async def test_sigterm_with_deliveries_in_flight(tmp_path: Path) -> None:
    """SIGTERM while the target holds four deliveries: they finish and are settled (their files
    deleted), the daemon exits 0, and after a restart the rest arrive with nothing sent twice."""
    disk = tmp_path / "disk"
    (disk / "in").mkdir(parents=True)
    files = {f"t{i:02}.dat": os.urandom(1000) + bytes([i]) for i in range(30)}
    for name, data in files.items():
        (disk / "in" / name).write_bytes(data)
    async with counting_sink() as sink:
        sink.hold = asyncio.Event()
        cfg = write_config(
            tmp_path,
            {"remote": {"type": "local", "root": str(disk)}},
            {"f": {"source": source(), "target": {"type": "http", "url": sink.url}, "max_in_flight": 4}},
            shutdown_timeout="60s",
        )
        d = DaemonProcess(cfg).start()
        await wait_for(lambda: sink.open == 4, 30)
        d.signal(signal.SIGTERM)
        await wait_for(lambda: any(str(r.get("msg", "")).startswith("waiting up to") for r in d.logs()), 20)
        assert sink.open == 4 and sink.answered == [], "still in flight when the stop began"
        sink.hold.set()
        # No second signal (that would stop the wait for deliveries): the drain ends by itself.
        await wait_for(lambda: d.proc is not None and d.proc.poll() is not None, 30)
        assert d.stop() == 0, d.text()[-3000:]
        first = sink.distinct()
        assert first == 4, f"{first} answered: the four in flight, and no new delivery began during the stop"
        assert settled_count(tmp_path / "state.db", "f") == first
        assert len(list((disk / "in").iterdir())) == len(files) - first
        d = DaemonProcess(cfg).start()
        try:
            await wait_for(lambda: sink.distinct() == len(files) and not any((disk / "in").iterdir()), 60)
        finally:
            assert d.stop() == 0
    assert sink.digests() == digests(files.values())
    assert max(sink.copies().values()) == 1, "nothing delivered twice after the restart"
