"""SFTP backends for the shared behaviour suite (and the sftp tests): asyncssh and OpenSSH servers.

Both servers serve a folder on local disk, so the side door (put/exists/read/names) works
on that folder directly. Fixtures: ``sftp_asyncssh_backend`` (a fresh in-process server per
test), ``sftp_openssh_backend`` (a fresh folder on the session's sshd), and the same sshd reached
the ways partners' servers are: ``sftp_socks5_backend`` (through microsocks) and
``sftp_jump_backend`` (through a second sshd as the jump host).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.backends.base import put_file
from tests.servers.asyncssh_server import AsyncsshSftpServer, asyncssh_server, ssh_client_keys
from tests.servers.proxies import ProxyServer, start_proxy
from tests.servers.sshd import Sshd, jump_sshd, sshd

__all__ = [
    "SftpBackend",
    "asyncssh_server",
    "jump_sshd",
    "sftp_asyncssh_backend",
    "sftp_folder",
    "sftp_jump_backend",
    "sftp_openssh_backend",
    "sftp_socks5_backend",
    "ssh_client_keys",
    "sshd",
]


class SftpBackend:
    """A real SFTP server and the local folder behind one instance's root."""

    def __init__(
        self, name: str, server: AsyncsshSftpServer | Sshd, folder: Path, root: str, route: dict[str, Any] | None = None
    ) -> None:
        self.name = name
        self.route = route or {}
        """``proxy`` / ``jump`` settings every instance of this backend gets."""
        self.server = server
        self.folder = folder
        """The local folder the instance's ``root`` points at."""
        self.root = root
        self._owner = (server.uid, server.gid) if isinstance(server, Sshd) else None

    @property
    def port(self) -> int:
        """The server's port."""
        return self.server.port

    def host_blob(self, kind: str) -> bytes:
        """The server's public host key blob: 'ed25519' or 'rsa'."""
        return self.server.host_blob(kind)

    def instance_config(self, **over: Any) -> dict[str, Any]:
        """``instances.<name>`` mapping: password auth, ed25519 SHA256 pinned; ``over`` replaces keys
        (a None value removes one)."""
        return self.server.instance_config(**{"root": self.root, **self.route, **over})

    def _chown(self, p: Path) -> None:
        if self._owner is not None:
            os.chown(p, *self._owner)

    def put(self, path: str, data: bytes, mtime: float | None = None) -> None:
        """Create a file at ``path`` (relative to the root), making folders as needed."""
        put_file(self.folder, path, data, mtime, self._chown)

    def mkdir(self, path: str, mode: int = 0o755) -> Path:
        """Create a folder (relative to the root) owned by the server's user."""
        p = self.folder / path
        p.mkdir(parents=True, exist_ok=True)
        p.chmod(mode)
        self._chown(p)
        return p

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
async def sftp_asyncssh_backend(asyncssh_server: AsyncsshSftpServer) -> AsyncIterator[SftpBackend]:
    """A fresh in-process asyncssh SFTP server; the instance root is its whole folder."""
    yield SftpBackend("sftp-asyncssh", asyncssh_server, asyncssh_server.root, "/")


def sftp_folder(server: Sshd, name: str = "sftp-openssh", route: dict[str, Any] | None = None) -> SftpBackend:
    """A fresh folder on an OpenSSH sshd, owned by its user, as an instance root; ``route``: the
    ``proxy`` / ``jump`` settings to reach it by."""
    d = Path(tempfile.mkdtemp(dir=server.root))
    d.chmod(0o755)
    server.chown(d)
    return SftpBackend(name, server, d, str(d), route)


@pytest.fixture
def sftp_openssh_backend(sshd: Sshd) -> Iterator[SftpBackend]:
    """A fresh folder on the session's OpenSSH sshd, used as the instance root."""
    b = sftp_folder(sshd)
    try:
        yield b
    finally:
        shutil.rmtree(b.folder, ignore_errors=True)


@pytest.fixture
def sftp_socks5_backend(sshd: Sshd) -> Iterator[SftpBackend]:
    """The session's sshd reached through a SOCKS5 proxy (microsocks, with username auth)."""
    proxy: ProxyServer = start_proxy("socks5")
    b = sftp_folder(sshd, "sftp-socks5", {"proxy": proxy.url()})
    try:
        yield b
    finally:
        proxy.remove()
        shutil.rmtree(b.folder, ignore_errors=True)


@pytest.fixture
def sftp_jump_backend(sshd: Sshd, jump_sshd: Sshd) -> Iterator[SftpBackend]:
    """The session's sshd reached through a second sshd as the jump host."""
    b = sftp_folder(sshd, "sftp-jump", {"jump": [jump_sshd.hop_config()]})
    try:
        yield b
    finally:
        shutil.rmtree(b.folder, ignore_errors=True)
