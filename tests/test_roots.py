"""Where SFTP and FTP paths start, on servers that do not chroot their users.

Without ``root:`` (or with ``root: ~``) paths are relative to the folder the login lands in,
as OpenSSH sftp, curl and lftp resolve them; a relative root is relative to that folder; an
absolute root means what it says, from the first operation after start-up on.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from conveyor.interfaces import Context
from conveyor.payload import Spool, stable_id
from conveyor.status import StatusBoard
from tests.harness import DaemonProcess, bodies, sidecars, wait_for, write_config
from tests.servers.homeuser import HOME_USER, HomeUser, home_user
from tests.servers.ssh_keys import KeySet
from tests.servers.sshd import USER, Sshd, sshd_available, start_sshd
from tests.servers.vsftpd import Vsftpd, vsftpd_certs, vsftpd_factory

__all__ = ["home_user", "vsftpd_certs", "vsftpd_factory"]


@pytest.fixture(scope="module")
def home_sshd(ssh_client_keys: KeySet) -> Iterator[Sshd]:
    """An sshd (no chroot) that also lets ``conveyor-home`` log in."""
    why = sshd_available()
    if why:
        pytest.skip(why)
    srv = start_sshd(ssh_client_keys, users=(USER, HOME_USER))
    try:
        yield srv
    finally:
        srv.stop()
        shutil.rmtree(srv.base, ignore_errors=True)


def instance_config(kind: str, user: HomeUser, server: Any, **over: Any) -> dict[str, Any]:
    """An sftp or ftp instance logging in as ``user``; a None value in ``over`` drops the key."""
    creds = {"username": user.name, "password": user.password}
    cfg: dict[str, Any] = server.instance_config(**creds) if kind == "sftp" else server.config(**creds)
    cfg.pop("root", None)
    cfg.update(over)
    return {k: v for k, v in cfg.items() if v is not None}


@pytest.fixture(params=["sftp", "ftp"])
def server(request: pytest.FixtureRequest) -> tuple[str, Any]:
    """An SFTP or FTP server that does not chroot its users."""
    if request.param == "sftp":
        return "sftp", request.getfixturevalue("home_sshd")
    return "ftp", request.getfixturevalue("vsftpd_factory")(chroot=False)


def trouble(d: DaemonProcess) -> str | None:
    """The first error the daemon logged, if any."""
    return next((r["msg"] for r in d.logs() if r.get("level") == "error"), None)


def conveyor(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "conveyor", *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("root", ["absolute", "relative"])
async def test_ftp_first_uploads_and_downloads_use_the_root(
    vsftpd_factory: Any, home_user: HomeUser, tmp_path: Path, root: str
) -> None:
    """40 uploads and 10 downloads start together right after start-up: every path is under the root."""
    srv: Vsftpd = vsftpd_factory(chroot=False)
    assert not Path("/inbound").exists()
    home_user.mkdir("partner")
    for i in range(10):
        home_user.put(f"partner/outbound/d{i:02}.csv", b"down %d\n" % i)
    drop = tmp_path / "drop"
    drop.mkdir()
    for i in range(40):
        (drop / f"u{i:02}.csv").write_bytes(b"up %d\n" % i)
    legacy = instance_config(
        "ftp", home_user, srv, root=str(home_user.home / "partner") if root == "absolute" else "partner"
    )
    instances = {"legacy": legacy, "drop": {"type": "local", "root": str(drop)}}
    fast = {"poll_interval": "100ms", "min_age": "0s"}
    flows = {
        "up": {
            "source": {"instance": "drop", **fast},
            "target": {"instance": "legacy", "path": "inbound"},
            "retry": {"attempts": 1},
        },
        "down": {
            "source": {"instance": "legacy", "path": "outbound", **fast},
            "target": {"type": "directory", "path": str(tmp_path / "got")},
            "retry": {"attempts": 1},
        },
    }
    d = DaemonProcess(write_config(tmp_path, instances, flows)).start()
    inbound = home_user.home / "partner" / "inbound"
    try:

        def settled() -> bool:
            arrived = len(list(inbound.glob("u*.csv"))) if inbound.exists() else 0
            return (arrived == 40 and len(bodies(tmp_path / "got")) == 10) or trouble(d) is not None

        await wait_for(settled, 60)
    finally:
        assert d.stop() == 0
    assert trouble(d) is None
    assert sorted(p.name for p in inbound.iterdir()) == [f"u{i:02}.csv" for i in range(40)]
    assert len(bodies(tmp_path / "got")) == 10
    assert not Path("/inbound").exists()


async def test_no_root_means_the_login_folder(server: tuple[str, Any], home_user: HomeUser, tmp_path: Path) -> None:
    """``path: outbound`` without ``root:`` is the home's outbound folder; ids are from relative paths."""
    kind, srv = server
    a = home_user.put("outbound/a.csv", b"a,1\n")
    minute = (int(time.time()) // 60 - 1) * 60  # what FTP LIST shows (no seconds) is the whole mtime
    os.utime(a, (minute, minute))
    home_user.put("outbound/b.csv", b"b,22\n")
    home_user.put("top.txt", b"home\n")
    got = tmp_path / "got"
    flows = {
        "pull": {
            "source": {"instance": "partner", "path": "outbound", "poll_interval": "100ms", "min_age": "0s"},
            "target": {"type": "directory", "path": str(got), "filename": "{name}"},
        }
    }
    cfg = write_config(tmp_path, {"partner": instance_config(kind, home_user, srv)}, flows)
    d = DaemonProcess(cfg).start()
    try:
        await wait_for(lambda: len(bodies(got)) == 2 or trouble(d), 30)
    finally:
        assert d.stop() == 0
    assert trouble(d) is None
    assert bodies(got) == {"a.csv": b"a,1\n", "b.csv": b"b,22\n"}
    ids = {m["name"]: m["id"] for m in sidecars(got)}
    assert ids["a.csv"] == stable_id("partner", "outbound/a.csv", 4, float(minute))

    ls = conveyor("ls", "-c", str(cfg), "partner", "outbound")
    assert ls.returncode == 0, ls.stderr
    assert ls.stderr.splitlines()[0] == f"partner: {home_user.home}/outbound"
    assert [line.split()[-1] for line in ls.stdout.splitlines()] == ["outbound/a.csv", "outbound/b.csv"]
    top = conveyor("ls", "-c", str(cfg), "partner")
    assert top.returncode == 0, top.stderr
    assert top.stderr.splitlines()[0] == f"partner: {home_user.home}"
    assert [line.split()[-1] for line in top.stdout.splitlines()] == ["top.txt"]
    check = conveyor("check", "--connect", "-c", str(cfg))
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"root {home_user.home}" in check.stdout
    # The flow's line names the server folder its path resolves to, below the login folder.
    flow_line = next(line for line in check.stdout.splitlines() if "flow pull" in line)
    assert f"{home_user.home}/outbound" in flow_line, check.stdout


async def test_explicit_root_keeps_ids(server: tuple[str, Any], home_user: HomeUser, tmp_path: Path) -> None:
    """The same file under an explicit absolute root and under the default root has the same id."""
    kind, srv = server
    home_user.put("outbound/a.csv", b"a,1\n")
    got: dict[str, str] = {}
    for label, over in (("explicit", {"root": str(home_user.home)}), ("default", {})):
        out = tmp_path / label / "got"
        flows = {
            "pull": {
                "source": {"instance": "partner", "path": "outbound", "poll_interval": "100ms", "min_age": "0s"},
                "target": {"type": "directory", "path": str(out), "filename": "{name}"},
            }
        }
        (tmp_path / label).mkdir()
        d = DaemonProcess(
            write_config(tmp_path / label, {"partner": instance_config(kind, home_user, srv, **over)}, flows)
        ).start()
        try:

            def arrived(out: Path = out, d: DaemonProcess = d) -> object:
                return len(sidecars(out)) == 1 or trouble(d)

            await wait_for(arrived, 30)
        finally:
            assert d.stop() == 0
        got[label] = sidecars(out)[0]["id"]
    assert got["explicit"] == got["default"]


def _runtime(kind: str, cfg: dict[str, Any], tmp_path: Path) -> Any:
    from conveyor.registry import all_specs

    spec = all_specs()[kind]
    return spec.load_factory()(
        "partner",
        spec.instance_model.model_validate(cfg),
        Context(spool=Spool(tmp_path / "spool"), status=StatusBoard()),
    )


@pytest.mark.parametrize(
    ("spelling", "expect"),
    [
        (None, "{home}/outbound"),
        ("root: ~", "{home}/outbound"),
        ("root: ''", "{home}/outbound"),
        ("root: '~/'", "{home}/outbound"),
        ("root: ~/data", "{home}/data/outbound"),
        ("root: data/", "{home}/data/outbound"),
        ("root: ./data", "{home}/data/outbound"),
        ("root: /", "/outbound"),
        ("root: '{home}/abs'", "{home}/abs/outbound"),
    ],
)
async def test_root_spellings(
    server: tuple[str, Any], home_user: HomeUser, tmp_path: Path, spelling: str | None, expect: str
) -> None:
    """``resolve`` names the absolute server folder a relative path stands for."""
    kind, srv = server
    cfg = instance_config(kind, home_user, srv)
    if spelling is not None:
        cfg.update(yaml.safe_load(spelling.format(home=home_user.home)))
    rt = _runtime(kind, cfg, tmp_path)
    try:
        assert await rt.resolve("outbound") == expect.format(home=home_user.home)
        assert await rt.resolve("") == posixpath.dirname(expect.format(home=home_user.home))
    finally:
        await rt.close()


def test_root_tilde_of_another_user_is_refused() -> None:
    from conveyor.transfer.sftp.config import SftpConfig

    with pytest.raises(ValueError, match="root"):
        SftpConfig.model_validate(
            {
                "type": "sftp",
                "host": "h",
                "username": "u",
                "password": "p",
                "host_key_check": "off",
                "root": "~bob/data",
            }
        )
