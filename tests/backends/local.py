"""The local folder backend for the shared behaviour suite."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.backends.base import put_file


class LocalBackend:
    """A folder on disk served by the ``local`` instance type."""

    name = "local"

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def instance_config(self) -> dict[str, Any]:
        return {"type": "local", "root": str(self.root)}

    def put(self, path: str, data: bytes, mtime: float | None = None) -> None:
        put_file(self.root, path, data, mtime)

    def exists(self, path: str) -> bool:
        return (self.root / path).is_file()

    def read(self, path: str) -> bytes:
        return (self.root / path).read_bytes()

    def names(self, path: str) -> list[str]:
        p = self.root / path
        return sorted(x.name for x in p.iterdir() if x.is_file()) if p.is_dir() else []
