"""The daemon on uvloop, as ``pip install 'conveyor[uvloop]'`` runs it, on real servers.

The rest of the suite runs its daemons on asyncio's own loop (tests/conftest.py); uvloop
differs where conveyor reaches below the public API: it keeps a protocol's ``data_received``
from connection time (the SFTP receive path in ``conveyor._compat.asyncssh``), and its TLS
transports resume sessions differently (FTPS data channels on a server with
``require_ssl_reuse=YES``).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from tests.backends.sftp import SftpBackend, sftp_openssh_backend, sshd
from tests.harness import DaemonProcess, bodies, wait_for, write_config
from tests.servers.vsftpd import vsftpd_certs, vsftpd_factory

__all__ = ["sftp_openssh_backend", "sshd", "vsftpd_certs", "vsftpd_factory"]

pytest.importorskip("uvloop", reason="the test extra installs uvloop")


def source(**over: Any) -> dict[str, Any]:
    return {"instance": "remote", "path": "in", "poll_interval": "200ms", "min_age": "0s", "after": "delete", **over}


async def deliver_on_uvloop(cfg: Path, out: Path, files: dict[str, bytes]) -> DaemonProcess:
    """``conveyor run`` with the event loop left to its default until every file is in ``out``."""
    d = DaemonProcess(cfg, env={"CONVEYOR_EVENT_LOOP": ""}).start()
    try:
        await wait_for(
            lambda: d.proc is not None and (d.proc.poll() is not None or len(bodies(out)) == len(files)), 120
        )
        assert d.proc is not None and d.proc.poll() is None, f"the daemon exited:\n{d.text()[-3000:]}"
    finally:
        assert d.stop() == 0, d.text()[-3000:]
    got = {hashlib.sha256(v).hexdigest() for v in bodies(out).values()}
    assert got == {hashlib.sha256(v).hexdigest() for v in files.values()}
    assert "event loop uvloop" in d.text()
    assert "error" not in {r.get("level") for r in d.logs()}, [r for r in d.logs() if r.get("level") == "error"]
    return d


async def test_sftp_on_openssh(sftp_openssh_backend: SftpBackend, tmp_path: Path) -> None:
    """A large file over AES-GCM (the receive path's own handling) and small ones, intact."""
    fb = sftp_openssh_backend
    files = {
        "in/large.bin": os.urandom(48 * 1024 * 1024 + 3),
        **{f"in/s{i}.bin": os.urandom(5000 + i) for i in range(3)},
    }
    for p, data in files.items():
        fb.put(p, data)
    inst = fb.instance_config(algorithms={"ciphers": ["aes128-gcm@openssh.com"]})
    out = tmp_path / "out"
    cfg = write_config(
        tmp_path, {"remote": inst}, {"f": {"source": source(), "target": {"type": "directory", "path": str(out)}}}
    )
    await deliver_on_uvloop(cfg, out, files)


async def test_explicit_ftps_with_session_reuse_on_vsftpd(vsftpd_factory: Any, tmp_path: Path) -> None:
    """vsftpd with ``require_ssl_reuse=YES``: listing, a small download and one in segments
    over several data channels, each resuming the control channel's TLS session."""
    srv = vsftpd_factory("explicit")
    assert "require_ssl_reuse=YES" in (srv.workdir / "vsftpd.conf").read_text()
    files = {"large.bin": os.urandom(40 * 1024 * 1024 + 1), "small.bin": os.urandom(7000)}
    for name, data in files.items():
        srv.put(f"in/{name}", data)
    out = tmp_path / "out"
    cfg = write_config(
        tmp_path,
        {"remote": srv.config(streams=4, max_connections=4)},
        {"f": {"source": source(), "target": {"type": "directory", "path": str(out)}}},
    )
    await deliver_on_uvloop(cfg, out, files)
