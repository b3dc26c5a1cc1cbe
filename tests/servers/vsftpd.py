"""Debian's vsftpd, started by the tests on a random loopback port with its own config file.

Needs root (vsftpd drops privileges per session) and ``apt-get install -y vsftpd``. Logins use
a local system user, ``conveyor-ftp``, created on first use with a known password; the session
is chrooted into the served folder (``chroot=False``: no chroot, a login lands in the user's home
and paths are the server's own). FTPS keeps vsftpd's default ``require_ssl_reuse=YES``; with
``client_ca`` it also requires a client certificate signed by that CA (``require_cert=YES``,
``validate_cert=YES``), on the control connection and on every data connection.
vsftpd 3.0.3 has no ``ssl_tlsv1_2``/``ssl_tlsv1_3`` switches: it offers TLS 1.2 and 1.3 (its
``ssl_tlsv1=YES`` covers every TLS 1.x), so the tests pick the version from the client side.
"""

from __future__ import annotations

import contextlib
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
from tests.servers.procs import descendants
from tests.servers.pyftpd import Certs, make_certs

VSFTPD = "/usr/sbin/vsftpd"
USER = "conveyor-ftp"
PASSWORD = "vs-Secret-42"


def available() -> str | None:
    """Why vsftpd tests cannot run here, or None."""
    if not os.path.exists(VSFTPD):
        return "vsftpd is not installed (apt-get install -y vsftpd)"
    if os.geteuid() != 0:
        return "vsftpd tests need root (a system user and privilege separation)"
    return None


def ensure_user() -> pwd.struct_passwd:
    """Create the login user once (a shell listed in /etc/shells, as vsftpd's PAM config wants)."""
    try:
        return pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--no-create-home", "--home-dir", "/", "--shell", "/bin/sh", USER],
            check=True,
            capture_output=True,
        )
        subprocess.run(["chpasswd"], input=f"{USER}:{PASSWORD}\n", text=True, check=True, capture_output=True)
        return pwd.getpwnam(USER)


@dataclass
class Vsftpd:
    """A running vsftpd and the folder its user is chrooted into."""

    root: Path
    port: int
    tls: str
    certs: Certs | None
    proc: subprocess.Popen[bytes]
    workdir: Path
    uid: int
    gid: int
    host: str = "127.0.0.1"

    def config(self, **overrides: Any) -> dict[str, Any]:
        """An ``instances.<name>`` mapping for conveyor."""
        cfg: dict[str, Any] = {
            "type": "ftp",
            "host": self.host,
            "port": self.port,
            "username": USER,
            "password": PASSWORD,
            "tls": self.tls,
            "root": "/",
            "timeout": "5s",
        }
        if self.tls != "none" and self.certs is not None:
            cfg["ca_file"] = str(self.certs.ca_file)
        cfg.update(overrides)
        return {k: v for k, v in cfg.items() if v is not None}

    def own(self, path: Path) -> None:
        """Give a file or folder the FTP user (files made by the test as root)."""
        os.chown(path, self.uid, self.gid)

    def put(self, rel: str, data: bytes) -> Path:
        """Write ``data`` at ``rel`` below the server's root, the file and any folder made for it
        owned by the FTP user."""
        p = self.root / rel
        for d in reversed([*p.parents]):
            if d.is_relative_to(self.root) and not d.exists():
                d.mkdir()
                self.own(d)
        p.write_bytes(data)
        self.own(p)
        return p

    def session_pids(self) -> list[int]:
        """vsftpd's per-session processes: every descendant of the listener we started."""
        return descendants(self.proc.pid)

    def stop(self) -> None:
        """Stop the listener (its sessions die with it) and remove the folders."""
        for pid in self.session_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()  # else a ResourceWarning, an error under pytest's filterwarnings
        shutil.rmtree(self.workdir, ignore_errors=True)


def start_vsftpd(
    tls: str = "none",
    certs: Certs | None = None,
    idle_timeout: int = 300,
    extra: dict[str, str] | None = None,
    chroot: bool = True,
    client_ca: Path | None = None,
) -> Vsftpd:
    """Start vsftpd in the foreground (``background=NO``) on a free loopback port."""
    user = ensure_user()
    work = Path(tempfile.mkdtemp(prefix="conveyor-vsftpd-"))
    os.chmod(work, 0o755)  # the session runs as the FTP user and must reach its root
    root = work / "served"
    root.mkdir()
    os.chown(root, user.pw_uid, user.pw_gid)
    port = free_port()
    pasv = free_port()
    conf = {
        "listen": "YES",
        "listen_ipv6": "NO",
        "listen_address": "127.0.0.1",
        "listen_port": str(port),
        "background": "NO",
        "anonymous_enable": "NO",
        "local_enable": "YES",
        "write_enable": "YES",
        "local_umask": "022",
        "chroot_local_user": "YES",
        "allow_writeable_chroot": "YES",
        "local_root": str(root),
        "pasv_enable": "YES",
        "pasv_min_port": str(pasv),
        "pasv_max_port": str(min(pasv + 40, 65535)),
        "port_enable": "YES",
        "connect_from_port_20": "NO",
        "seccomp_sandbox": "NO",
        "secure_chroot_dir": "/var/run/vsftpd/empty",
        "pam_service_name": "vsftpd",
        "userlist_enable": "NO",
        "xferlog_enable": "NO",
        "idle_session_timeout": str(idle_timeout),
        "data_connection_timeout": "30",
        "max_per_ip": "50",
        "max_clients": "50",
        "use_localtime": "NO",
        "dual_log_enable": "NO",
        "syslog_enable": "NO",
        "vsftpd_log_file": str(work / "vsftpd.log"),
    }
    if not chroot:
        conf["chroot_local_user"] = "NO"
        del conf["local_root"], conf["allow_writeable_chroot"]
    if tls != "none":
        assert certs is not None
        shutil.copy(certs.cert_file, work / "cert.pem")
        shutil.copy(certs.key_file, work / "key.pem")
        conf.update(
            {
                "ssl_enable": "YES",
                "rsa_cert_file": str(work / "cert.pem"),
                "rsa_private_key_file": str(work / "key.pem"),
                "force_local_logins_ssl": "YES",
                "force_local_data_ssl": "YES",
                "require_ssl_reuse": "YES",
                "ssl_tlsv1": "YES",
                "ssl_sslv2": "NO",
                "ssl_sslv3": "NO",
                "ssl_ciphers": "HIGH",
                "implicit_ssl": "YES" if tls == "implicit" else "NO",
            }
        )
        if client_ca is not None:
            shutil.copy(client_ca, work / "client-ca.pem")
            os.chmod(work / "client-ca.pem", 0o644)
            conf.update(
                {
                    "ssl_request_cert": "YES",
                    "require_cert": "YES",
                    "validate_cert": "YES",
                    "ca_certs_file": str(work / "client-ca.pem"),
                }
            )
    conf.update(extra or {})
    conf_file = work / "vsftpd.conf"
    conf_file.write_text("".join(f"{k}={v}\n" for k, v in conf.items()))
    os.chmod(conf_file, 0o600)
    proc = subprocess.Popen([VSFTPD, str(conf_file)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while True:
        if proc.poll() is not None:
            out = proc.stdout.read().decode() if proc.stdout else ""
            shutil.rmtree(work, ignore_errors=True)
            raise RuntimeError(f"vsftpd exited with {proc.returncode}: {out}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("vsftpd did not start listening") from None
            time.sleep(0.05)
    return Vsftpd(root, port, tls, certs, proc, work, user.pw_uid, user.pw_gid)


@pytest.fixture(scope="session")
def vsftpd_certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """The CA and certificate the vsftpd servers of this session present."""
    return make_certs(tmp_path_factory.mktemp("vsftpd-certs"), "vsftpd")


@pytest.fixture
def vsftpd_factory(vsftpd_certs: Certs) -> Iterator[Any]:
    """``make(tls=..., idle_timeout=..., extra=..., chroot=..., client_ca=...)`` starts a vsftpd;
    all are stopped at teardown."""
    reason = available()
    if reason:
        pytest.skip(reason)
    servers: list[Vsftpd] = []

    def make(tls: str = "none", **kw: Any) -> Vsftpd:
        srv = start_vsftpd(tls, vsftpd_certs if tls != "none" else None, **kw)
        servers.append(srv)
        return srv

    yield make
    for s in servers:
        s.stop()
