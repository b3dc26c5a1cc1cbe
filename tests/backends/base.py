"""What the shared behaviour suite needs from each connector's test backend.

A backend starts (or reuses) a real server, and gives the suite an instance config plus
a side door to put and inspect files or messages without going through conveyor.
Each connector registers its backends in ``tests/backends/__init__.py``'s ``FILE_BACKENDS`` /
``MESSAGE_BACKENDS`` via ``tests/conftest.py``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol


class FileBackend(Protocol):
    """A real file server (or local folder) the suite can drop files on."""

    name: str
    """e.g. 'local', 'sftp-asyncssh', 'sftp-openssh', 'ftp-pyftpdlib', 'ftps-explicit-vsftpd'."""

    def instance_config(self) -> dict[str, Any]:
        """The `instances.<name>` mapping for a conveyor config (type, host, port, credentials, root...)."""
        ...

    def put(self, path: str, data: bytes, mtime: float | None = None) -> None:
        """Create a file at `path` (relative to the instance root), making folders as needed."""
        ...

    def exists(self, path: str) -> bool:
        """Whether a file exists at `path` (relative to the root)."""
        ...

    def read(self, path: str) -> bytes:
        """The content of a file (relative to the root)."""
        ...

    def names(self, path: str) -> list[str]:
        """File names in a folder (relative to the root); [] if the folder is missing."""
        ...


class MessageBackend(Protocol):
    """A real broker the suite can publish to and inspect."""

    name: str

    def instance_config(self) -> dict[str, Any]:
        """The `instances.<name>` mapping for a conveyor config."""
        ...

    def source_config(self) -> dict[str, Any]:
        """The flow `source` mapping minus `instance` (queue or subscription, prefetch, max_attempts)."""
        ...

    async def publish(self, bodies: list[bytes]) -> None:
        """Publish messages onto what `source_config` consumes."""
        ...

    async def pending(self) -> int:
        """Messages still waiting (not acked) on the queue/subscription; 0 when all were consumed."""
        ...


def put_file(
    folder: Path, path: str, data: bytes, mtime: float | None = None, chown: Callable[[Path], None] | None = None
) -> Path:
    """Create ``folder/path``, making folders as needed; ``chown`` gives each new folder and the
    file to the server's user (servers that drop privileges must be able to delete them)."""
    p = folder / path
    missing = [d for d in reversed(p.parents) if d.is_relative_to(folder) and not d.exists()]
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    if chown is not None:
        for d in missing:
            chown(d)
        chown(p)
    if mtime is not None:
        os.utime(p, (mtime, mtime))
    return p
