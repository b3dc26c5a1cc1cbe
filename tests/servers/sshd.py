"""OpenSSH sshd for tests: a private sshd on a random loopback port, its own host keys and config.

Needs root and Debian's ``openssh-server`` (``/usr/sbin/sshd``). Logins go to a system user
``conveyor-test`` (created with useradd if missing, password set with chpasswd each session),
because sshd will not let root log in to a password/SFTP test safely and ``UsePAM no``
checks the real shadow password. ``Subsystem sftp internal-sftp``; no PAM, no chroot.
The served folder is a fresh directory under /tmp owned by that user; tests use its absolute
path as the instance ``root``.
"""

from __future__ import annotations

import base64
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.servers.ops import free_port
from tests.servers.ssh_keys import KeySet, make_host_keys

SSHD = "/usr/sbin/sshd"
USER = "conveyor-test"
PASSWORD = "conveyor-Test-pw1"


def ensure_user() -> pwd.struct_passwd:
    """Create the test user if missing and (re)set its password."""
    try:
        pw = pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--shell", "/bin/sh", "--no-create-home", USER], check=True, capture_output=True
        )
        pw = pwd.getpwnam(USER)
    subprocess.run(["chpasswd"], input=f"{USER}:{PASSWORD}\n", text=True, check=True, capture_output=True)
    return pw


@dataclass
class Sshd:
    """A running sshd; files live under ``root`` (also the instance root)."""

    base: Path
    root: Path
    port: int
    host_keys: dict[str, Path]
    keys: KeySet
    proc: subprocess.Popen[bytes]
    uid: int
    gid: int

    def host_blob(self, keytype: str) -> bytes:
        """The base64-decoded public host key of one type ('ed25519' or 'rsa')."""
        return base64.b64decode(Path(str(self.host_keys[keytype]) + ".pub").read_text().split()[1])

    def chown(self, path: Path) -> None:
        """Give a file or folder made by the tests to the sftp user."""
        os.chown(path, self.uid, self.gid)

    def put(self, path: str, data: bytes, mtime: float | None = None) -> Path:
        """Create a file under the served folder (owned by the sftp user), making folders as needed."""
        from tests.backends.base import put_file

        return put_file(self.root, path, data, mtime, self.chown)

    def instance_config(self, **over: Any) -> dict[str, Any]:
        """An sftp instance mapping (password auth, ed25519 fingerprint pinned) with overrides."""
        from conveyor.transfer.sftp.hostkeys import sha256_fp

        cfg: dict[str, Any] = {
            "type": "sftp",
            "host": "127.0.0.1",
            "port": self.port,
            "username": USER,
            "password": PASSWORD,
            "host_fingerprint": over.get("host_fingerprint") or sha256_fp(self.host_blob("ed25519")),
            "root": str(self.root),
            "timeout": "5s",
            "max_connection_attempts": 1,
        }
        cfg.update(over)
        return {k: v for k, v in cfg.items() if v is not None}

    def hop_config(self, **over: Any) -> dict[str, Any]:
        """A ``jump`` hop mapping for this sshd (password auth, ed25519 fingerprint pinned)."""
        from conveyor.transfer.sftp.hostkeys import sha256_fp

        cfg: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": self.port,
            "username": USER,
            "password": PASSWORD,
            "host_fingerprint": sha256_fp(self.host_blob("ed25519")),
        }
        cfg.update(over)
        return {k: v for k, v in cfg.items() if v is not None}

    def logins(self) -> int:
        """How many logins this sshd accepted (its log says each)."""
        return (self.base / "sshd.log").read_text(errors="replace").count("Accepted ")

    def stop(self) -> None:
        """Stop sshd (the listener and its session children)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def sshd_available() -> str | None:
    """Why sshd tests cannot run here, or None when they can."""
    if not Path(SSHD).exists():
        return f"{SSHD} missing: apt-get install -y openssh-server"
    if os.geteuid() != 0:
        return "the sshd fixture needs root (it creates a test user and runs sshd)"
    return None


def start_sshd(
    keys: KeySet,
    host_key_types: tuple[str, ...] = ("ed25519", "rsa"),
    users: tuple[str, ...] = (USER,),
    extra: tuple[str, ...] = (),
) -> Sshd:
    """Start sshd with fresh host keys, letting ``users`` log in; raise if it does not come up.
    ``extra``: more sshd_config lines (``KexAlgorithms ...``, say); a ``MaxStartups`` or
    ``MaxSessions`` line there replaces the default (sshd keeps the first value it reads)."""
    pw = ensure_user()
    base = Path(tempfile.mkdtemp(prefix="conveyor-sshd-"))
    base.chmod(0o755)  # the sftp user must traverse it to reach root/
    host_keys = make_host_keys(base / "hostkeys", host_key_types)
    root = base / "data"
    root.mkdir()
    os.chown(root, pw.pw_uid, pw.pw_gid)
    auth = base / "authorized_keys"
    auth.write_text(keys.authorized_keys())
    auth.chmod(0o644)
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation directory
    port = free_port()
    said = {line.split()[0] for line in extra if line.strip()}
    config = base / "sshd_config"
    config.write_text(
        "\n".join(
            [
                f"Port {port}",
                "ListenAddress 127.0.0.1",
                *[f"HostKey {p}" for p in host_keys.values()],
                f"PidFile {base}/sshd.pid",
                "UsePAM no",
                "PasswordAuthentication yes",
                "KbdInteractiveAuthentication no",
                "PubkeyAuthentication yes",
                "PermitRootLogin no",
                f"AllowUsers {' '.join(users)}",
                f"AuthorizedKeysFile {auth}",
                "StrictModes no",
                "Subsystem sftp internal-sftp",
                "LogLevel INFO",
                *[limit for limit in ("MaxStartups 100:30:200", "MaxSessions 50") if limit.split()[0] not in said],
                "UseDNS no",
                *extra,
                "",
            ]
        )
    )
    with open(base / "sshd.log", "wb") as log:  # sshd keeps its own copy of the descriptor
        proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited: {(base / 'sshd.log').read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                if s.recv(4).startswith(b"SSH-"):
                    break
        except OSError:
            time.sleep(0.05)
    else:
        proc.kill()
        raise RuntimeError("sshd did not start listening")
    return Sshd(base, root, port, host_keys, keys, proc, pw.pw_uid, pw.pw_gid)


def own_sshd(keys: KeySet, host_key_types: tuple[str, ...], extra: tuple[str, ...]) -> Iterator[Sshd]:
    """A fixture body: an sshd of its own for one test (``extra`` config lines), removed after it."""
    why = sshd_available()
    assert why is None, why
    server = start_sshd(keys, host_key_types=host_key_types, extra=extra)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.base, ignore_errors=True)


_RUNNING: list[Sshd] = []
_JUMP: list[Sshd] = []


def _session_sshd(slot: list[Sshd], keys: KeySet) -> Iterator[Sshd]:
    """A fixture body: the sshd kept in ``slot``, started when missing or stopped."""
    why = sshd_available()
    if why:
        pytest.skip(why)
    if not slot or slot[0].proc.poll() is not None:
        slot[:] = [start_sshd(keys)]
    server = slot[0]
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.base, ignore_errors=True)


@pytest.fixture(scope="session")
def sshd(ssh_client_keys: KeySet) -> Iterator[Sshd]:
    """One OpenSSH sshd for the test session (skips when not root or sshd is missing).

    Shared by every module that imports this fixture (each import is its own session-scoped
    fixture to pytest), stopped when the session ends.
    """
    yield from _session_sshd(_RUNNING, ssh_client_keys)


@pytest.fixture(scope="session")
def jump_sshd(ssh_client_keys: KeySet) -> Iterator[Sshd]:
    """A second OpenSSH sshd for the test session, used as a jump host in front of ``sshd``."""
    yield from _session_sshd(_JUMP, ssh_client_keys)


async def check_sftp(config: dict[str, Any]) -> str:
    """Run ``check`` (connect and log in) on an sftp instance mapping, as instance 'partner'."""
    from conveyor.interfaces import Context
    from conveyor.payload import Spool
    from conveyor.status import StatusBoard
    from conveyor.transfer.sftp.config import SftpConfig
    from conveyor.transfer.sftp.instance import SftpInstance

    cfg = SftpConfig.model_validate(config)
    board = StatusBoard()
    board.add_instance("partner", "sftp", cfg.describe())
    inst = SftpInstance("partner", cfg, Context(spool=Spool(Path("/nonexistent")), status=board))
    try:
        return await inst.check()
    finally:
        await inst.close()
