"""An in-process asyncssh SFTP server for tests, serving a local folder.

It has its own ed25519 and RSA host keys, accepts a password and the client keys of
:mod:`tests.servers.ssh_keys`, counts SSH handshakes, and can refuse directory listings
(``refuse_listing``) like servers with "private visibility", or list more than it has
(``more_listing``: entries after the real ones, endless if the generator is).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from tests.servers.ssh_keys import KeySet, make_client_keys

USERNAME = "conveyor"
PASSWORD = "s3cret-pw"


@dataclass
class AsyncsshSftpServer:
    """A running asyncssh SFTP server; its files live under ``root`` on local disk."""

    root: Path
    keys: KeySet
    host_keys: list[asyncssh.SSHKey]
    port: int = 0
    host: str = "127.0.0.1"
    """The loopback address to listen on ('::1' for IPv6)."""
    refuse_listing: bool = False
    more_listing: Callable[[], AsyncIterator[asyncssh.SFTPName]] | None = None
    """Entries every listing goes on with after the folder's own."""
    handshakes: int = 0
    """TCP connections accepted (the host-key probe counts too)."""
    logins: int = 0
    """Authentication attempts (password or public key) the server has seen."""
    server: Any = None
    conns: list[Any] = field(default_factory=list)

    def host_key(self, algorithm: str) -> asyncssh.SSHKey:
        """The host key of one type ('ssh-ed25519' or 'ssh-rsa')."""
        return next(k for k in self.host_keys if k.get_algorithm() == algorithm)

    def host_blob(self, kind: str) -> bytes:
        """The public host key blob of one type: 'ed25519' or 'rsa'."""
        return self.host_key({"ed25519": "ssh-ed25519", "rsa": "ssh-rsa"}[kind]).public_data

    def put(self, path: str, data: bytes, mtime: float | None = None) -> Path:
        """Create a file under the served folder, making folders as needed."""
        p = self.root / path
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        if mtime is not None:
            os.utime(p, (mtime, mtime))
        return p

    async def start(self) -> None:
        """Listen on a random port of ``host``."""
        outer = self
        authorized = [
            asyncssh.import_public_key(Path(str(p) + ".pub").read_text())
            for n, p in self.keys.keys.items()
            if n != "stranger"
        ]

        class Server(asyncssh.SSHServer):
            def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
                outer.handshakes += 1
                outer.conns.append(conn)

            def begin_auth(self, username: str) -> bool:
                return True

            def password_auth_supported(self) -> bool:
                return True

            def validate_password(self, username: str, password: str) -> bool:
                outer.logins += 1
                return username == USERNAME and password == PASSWORD

            def public_key_auth_supported(self) -> bool:
                return True

            def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
                outer.logins += 1
                return username == USERNAME and any(key.public_data == k.public_data for k in authorized)

        class Sftp(asyncssh.SFTPServer):
            def __init__(self, chan: asyncssh.SSHServerChannel[bytes]) -> None:
                super().__init__(chan, chroot=str(outer.root).encode())

            def scandir(self, path: bytes) -> AsyncIterator[asyncssh.SFTPName]:
                if outer.refuse_listing:
                    return _refuse()
                if outer.more_listing is not None:
                    return _chain(super().scandir(path), outer.more_listing())
                return super().scandir(path)

        self.server = await asyncssh.listen(
            self.host,
            self.port,
            server_host_keys=self.host_keys,
            server_factory=Server,
            sftp_factory=Sftp,
            allow_scp=False,
            config=None,
        )
        self.port = self.server.sockets[0].getsockname()[1]

    def drop_all(self) -> None:
        """Close every client connection abruptly (the server keeps listening)."""
        for c in self.conns:
            c.abort()
        self.conns.clear()

    async def stop(self) -> None:
        """Stop listening and close connections."""
        self.drop_all()
        self.server.close()
        await self.server.wait_closed()

    def instance_config(self, **over: Any) -> dict[str, Any]:
        """An sftp instance mapping (password auth, ed25519 fingerprint pinned) with overrides."""
        from conveyor.transfer.sftp.hostkeys import sha256_fp

        cfg: dict[str, Any] = {
            "type": "sftp",
            "host": self.host,
            "port": self.port,
            "username": USERNAME,
            "password": PASSWORD,
            "host_fingerprint": sha256_fp(self.host_key("ssh-ed25519").public_data),
            "root": "/",
            "timeout": "5s",
            "max_connection_attempts": 1,
        }
        cfg.update(over)
        return {k: v for k, v in cfg.items() if v is not None}


async def _refuse() -> AsyncIterator[asyncssh.SFTPName]:
    raise asyncssh.SFTPPermissionDenied("listing is not allowed here")
    yield  # pragma: no cover  (makes this an async generator)


async def _chain(*parts: AsyncIterator[asyncssh.SFTPName]) -> AsyncIterator[asyncssh.SFTPName]:
    for part in parts:
        async for name in part:
            yield name


_HOST_KEYS: list[asyncssh.SSHKey] = []


def host_keys() -> list[asyncssh.SSHKey]:
    """ed25519 + RSA host keys, made once per test process."""
    if not _HOST_KEYS:
        _HOST_KEYS.extend(
            [asyncssh.generate_private_key("ssh-ed25519"), asyncssh.generate_private_key("ssh-rsa", key_size=2048)]
        )
    return _HOST_KEYS


_CLIENT_KEYS: list[KeySet] = []


@pytest.fixture(scope="session")
def ssh_client_keys(tmp_path_factory: pytest.TempPathFactory) -> KeySet:
    """Client keys in every format, shared by both SFTP servers.

    Made once per process: test modules import this fixture, which gives each module its own
    session-scoped copy, and RSA key generation is slow enough to matter.
    """
    if not _CLIENT_KEYS:
        _CLIENT_KEYS.append(make_client_keys(tmp_path_factory.mktemp("ssh-client-keys")))
    return _CLIENT_KEYS[0]


@pytest.fixture
async def asyncssh_server(tmp_path: Path, ssh_client_keys: KeySet) -> AsyncIterator[AsyncsshSftpServer]:
    """A fresh in-process asyncssh SFTP server serving ``tmp_path / 'remote'`` (where the shared
    suite expects a source's files, as with the local backend)."""
    root = tmp_path / "remote"
    root.mkdir()
    srv = AsyncsshSftpServer(root, ssh_client_keys, host_keys())
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()
