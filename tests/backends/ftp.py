"""FTP/FTPS backends for the shared behaviour suite: pyftpdlib in process (plain, explicit and
implicit TLS) and Debian's vsftpd (explicit TLS with ``require_ssl_reuse=YES``).

Each server serves a folder on local disk, so the side door (put/exists/read/names) works on
that folder directly. Fixtures: ``ftp_pyftpdlib_backend``, ``ftps_explicit_pyftpdlib_backend``,
``ftps_implicit_pyftpdlib_backend``, ``ftps_explicit_vsftpd_backend`` (a fresh server each).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.backends.base import put_file
from tests.servers.pyftpd import PyFtpd, ftp_certs, pyftpd_factory
from tests.servers.vsftpd import Vsftpd, vsftpd_certs, vsftpd_factory

__all__ = [
    "FtpBackend",
    "ftp_certs",
    "ftp_instance",
    "ftp_pyftpdlib_backend",
    "ftps_explicit_pyftpdlib_backend",
    "ftps_explicit_vsftpd_backend",
    "ftps_implicit_pyftpdlib_backend",
    "pyftpd_factory",
    "vsftpd_certs",
    "vsftpd_factory",
]


class FtpBackend:
    """A real FTP server and the local folder behind the instance's root."""

    def __init__(self, name: str, server: PyFtpd | Vsftpd) -> None:
        self.name = name
        self.server = server
        self.folder = server.root
        self._owner = (server.uid, server.gid) if isinstance(server, Vsftpd) else None

    def instance_config(self, **over: Any) -> dict[str, Any]:
        """``instances.<name>`` mapping (CA pinned via ca_file for FTPS); ``over`` replaces keys."""
        return self.server.config(**over)

    def _chown(self, p: Path) -> None:
        if self._owner is not None:
            os.chown(p, *self._owner)

    def put(self, path: str, data: bytes, mtime: float | None = None) -> None:
        """Create a file at ``path`` (relative to the root), making folders as needed."""
        put_file(self.folder, path, data, mtime, self._chown)

    def exists(self, path: str) -> bool:
        """Whether a file exists at ``path``."""
        return (self.folder / path).is_file()

    def read(self, path: str) -> bytes:
        """A file's content."""
        return (self.folder / path).read_bytes()

    def names(self, path: str) -> list[str]:
        """File names in a folder; [] when it is missing."""
        d = self.folder / path
        return sorted(p.name for p in d.iterdir() if p.is_file()) if d.is_dir() else []


@pytest.fixture
def ftp_pyftpdlib_backend(pyftpd_factory: Any) -> Iterator[FtpBackend]:
    """Plain FTP on an in-process pyftpdlib server."""
    yield FtpBackend("ftp-pyftpdlib", pyftpd_factory("none"))


@pytest.fixture
def ftps_explicit_pyftpdlib_backend(pyftpd_factory: Any) -> Iterator[FtpBackend]:
    """Explicit FTPS (AUTH TLS, PROT P) on pyftpdlib."""
    yield FtpBackend("ftps-explicit-pyftpdlib", pyftpd_factory("explicit"))


@pytest.fixture
def ftps_implicit_pyftpdlib_backend(pyftpd_factory: Any) -> Iterator[FtpBackend]:
    """Implicit FTPS (TLS from the first byte) on pyftpdlib."""
    yield FtpBackend("ftps-implicit-pyftpdlib", pyftpd_factory("implicit"))


@pytest.fixture
def ftps_explicit_vsftpd_backend(vsftpd_factory: Any) -> Iterator[FtpBackend]:
    """Explicit FTPS on vsftpd with session reuse required (skipped when vsftpd or root is missing)."""
    yield FtpBackend("ftps-explicit-vsftpd", vsftpd_factory("explicit"))


def ftp_instance(config: dict[str, Any], spool_dir: Path, name: str = "ftp-test") -> tuple[Any, Any, Any]:
    """A conveyor FtpInstance for ``config``, with its status board and a prepared spool."""
    from conveyor.interfaces import Context
    from conveyor.payload import Spool
    from conveyor.status import StatusBoard
    from conveyor.transfer.ftp.config import FtpConfig
    from conveyor.transfer.ftp.instance import FtpInstance

    spool = Spool(spool_dir, threshold=1024 * 1024)
    spool.prepare()
    status = StatusBoard()
    inst = FtpInstance(name, FtpConfig.model_validate(config), Context(spool=spool, status=status))
    return inst, status, spool
