"""pyftpdlib FTP/FTPS servers run in a thread of the test process, on random loopback ports.

TLS uses pyOpenSSL (``TLS_FTPHandler``) with certificates made by trustme. Variants are
handler subclasses: implicit TLS, LIST only (no MLSD/MLST), a PASV reply announcing an
unroutable address, a short idle timeout (421), and a data channel cut after N bytes.
"""

from __future__ import annotations

import errno
import os
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trustme
from OpenSSL import SSL
from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.exceptions import _FileReadWriteError
from pyftpdlib.filesystems import AbstractedFS
from pyftpdlib.handlers import DTPHandler, FTPHandler, TLS_DTPHandler, TLS_FTPHandler
from pyftpdlib.ioloop import IOLoop
from pyftpdlib.log import logger
from pyftpdlib.servers import FTPServer

USER = "conveyor"
PASSWORD = "s3cret-ftp"


@dataclass
class Certs:
    """A CA and a server certificate for 127.0.0.1 / ::1 / localhost, as files."""

    ca_file: Path
    chain_file: Path
    """Server key + certificate chain, PEM (what pyftpdlib and vsftpd load)."""
    cert_file: Path
    key_file: Path
    fingerprint: str
    """SHA-256 of the server certificate (DER), hex."""


def make_certs(directory: Path, name: str = "ftp") -> Certs:
    """Issue a fresh CA and server certificate with trustme."""
    import hashlib

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "::1", "localhost")
    directory.mkdir(parents=True, exist_ok=True)
    ca_file = directory / f"{name}-ca.pem"
    chain = directory / f"{name}-chain.pem"
    cert_file = directory / f"{name}-cert.pem"
    key_file = directory / f"{name}-key.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    cert.private_key_and_cert_chain_pem.write_to_path(str(chain))
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    der = ssl.PEM_cert_to_DER_cert(cert.cert_chain_pems[0].bytes().decode())
    return Certs(ca_file, chain, cert_file, key_file, hashlib.sha256(der).hexdigest())


@dataclass
class PyFtpd:
    """A running pyftpdlib server and the folder it serves."""

    root: Path
    port: int
    tls: str
    certs: Certs | None
    handler: type[Any]
    server: FTPServer
    thread: threading.Thread
    stop_flag: threading.Event = field(default_factory=threading.Event)
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

    def stop(self) -> None:
        """Stop serving and close every connection."""
        self.stop_flag.set()
        self.thread.join(10)


class _CutDTP(DTPHandler):
    """Sends at most ``cut_after`` bytes of the first download, then drops the connection."""

    cut_after = 0
    cuts_left = [1]

    def send(self, data: Any) -> int:
        if self.cuts_left[0] > 0 and self.tot_bytes_sent + len(data) > self.cut_after:
            self.cuts_left[0] -= 1
            self.close()
            return 0
        return int(super().send(data))


def start_pyftpd(
    root: Path,
    *,
    tls: str = "none",
    certs: Certs | None = None,
    mlsd: bool = True,
    epsv: bool = True,
    masquerade: str | None = None,
    idle_timeout: float | None = None,
    cut_after: int | None = None,
    tls_max: str | None = None,
    rename_overwrites: bool = True,
    host: str = "127.0.0.1",
    full_after: int | None = None,
    full_reply: str = "452 Transfer aborted. No space left on device",
) -> PyFtpd:
    """Start a server in a thread; call ``stop()`` when done."""
    root.mkdir(parents=True, exist_ok=True)
    auth = DummyAuthorizer()
    auth.add_user(USER, PASSWORD, str(root), perm="elradfmwMT")
    base: type[Any] = FTPHandler if tls == "none" else TLS_FTPHandler
    attrs: dict[str, Any] = {
        "authorizer": auth,
        "banner": "pyftpdlib test server",
        "passive_ports": None,
        "permit_foreign_addresses": False,
        "auth_failed_timeout": 0.1,
    }
    cmds = dict(base.proto_cmds)
    if not mlsd:
        cmds.pop("MLSD", None)
        cmds.pop("MLST", None)
    if not epsv:
        cmds.pop("EPSV", None)
    attrs["proto_cmds"] = cmds
    if masquerade:
        attrs["masquerade_address"] = masquerade
    if idle_timeout is not None:
        attrs["timeout"] = idle_timeout
    if tls != "none":
        assert certs is not None
        attrs.update(
            certfile=str(certs.chain_file),
            keyfile=str(certs.chain_file),
            ssl_context=None,
            tls_control_required=True,
            tls_data_required=True,
        )
        opts = SSL.OP_NO_SSLv2 | SSL.OP_NO_SSLv3 | SSL.OP_NO_COMPRESSION
        if tls_max == "1.2":
            opts |= SSL.OP_NO_TLSv1_3
        attrs["ssl_options"] = opts
        if tls == "implicit":
            attrs["handle"] = _implicit_handle
    if cut_after is not None:
        dtp = type(
            "CutDTP",
            (_CutDTP, TLS_DTPHandler if tls != "none" else DTPHandler),
            {"cut_after": cut_after, "cuts_left": [1]},
        )
        attrs["dtp_handler"] = dtp
        attrs["use_sendfile"] = False  # sendfile() would bypass the cutting send()
    if not rename_overwrites:
        attrs["ftp_RNTO"] = _rnto_refusing_overwrite
    if full_after is not None:
        attrs["abstracted_fs"] = type("FullFS", (_FullFS,), {"room": full_after})
        attrs["dtp_handler"] = type(
            "FullDTP", (_FullDTP, TLS_DTPHandler if tls != "none" else DTPHandler), {"full_reply": full_reply}
        )
    handler = type("TestHandler", (base,), attrs)
    server = FTPServer((host, 0), handler, ioloop=IOLoop())  # own loop: one server per thread
    port = server.address[1]
    stop = threading.Event()

    def serve() -> None:
        try:
            while not stop.is_set():
                server.ioloop.loop(timeout=0.05, blocking=False)
        finally:
            server.close_all()

    thread = threading.Thread(target=serve, name=f"pyftpd-{port}", daemon=True)
    thread.start()
    return PyFtpd(root, port, tls, certs, handler, server, thread, stop, host)


class _FullFS(AbstractedFS):
    """A disk with ``room`` bytes left per file: a write past it fails with ENOSPC, which
    pyftpdlib answers with "426 No space left on device; transfer aborted"."""

    room = 0

    def open(self, filename: str, mode: str) -> Any:
        f = super().open(filename, mode)
        return _Filling(f, self.room) if "w" in mode or "a" in mode else f


class _FullDTP:
    """Answers a failed write with ``full_reply``, as real servers do (ProFTPD "452 Transfer
    aborted. No space left on device", vsftpd "451 Failure writing to local file."); pyftpdlib
    itself would say "426 None; transfer aborted." (it loses the errno)."""

    full_reply = ""

    def handle_error(self) -> None:
        try:
            raise  # the exception being handled, as pyftpdlib's own handle_error does
        except _FileReadWriteError:
            self._resp = (self.full_reply, logger.warning)
            self.close()  # type: ignore[attr-defined]
        except Exception:
            super().handle_error()  # type: ignore[misc]


class _Filling:
    def __init__(self, f: Any, room: int) -> None:
        self._f, self._room = f, room
        self.name, self.closed = f.name, False

    def write(self, data: bytes) -> int:
        if len(data) > self._room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._room -= len(data)
        return int(self._f.write(data))

    def close(self) -> None:
        self.closed = True
        self._f.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


def _rnto_refusing_overwrite(self: Any, path: str) -> None:
    # Like IIS and FileZilla Server: no rename onto an existing file.
    if os.path.exists(path):
        self._rnfr = None
        self.respond("550 File exists.")
        return
    FTPHandler.ftp_RNTO(self, path)


def _implicit_handle(self: Any) -> None:
    # Implicit FTPS: TLS from the first byte, then the banner (pyftpdlib only knows AUTH TLS).
    self.secure_connection(self.ssl_context)
    TLS_FTPHandler.handle(self)


@pytest.fixture(scope="session")
def ftp_certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """One CA + server certificate for every FTPS test server of the session."""
    return make_certs(tmp_path_factory.mktemp("ftp-certs"))


@pytest.fixture
def pyftpd_factory(tmp_path: Path, ftp_certs: Certs) -> Iterator[Any]:
    """``make(tls=..., **variant)`` starts a pyftpdlib server serving ``tmp_path/served``; all stop at teardown."""
    servers: list[PyFtpd] = []

    def make(tls: str = "none", **kw: Any) -> PyFtpd:
        # The first serves tmp_path/remote, where the shared suite expects a backend's files.
        root = kw.pop("root", tmp_path / ("remote" if not servers else f"remote{len(servers)}"))
        srv = start_pyftpd(root, tls=tls, certs=ftp_certs if tls != "none" else None, **kw)
        servers.append(srv)
        return srv

    yield make
    for s in servers:
        s.stop()
