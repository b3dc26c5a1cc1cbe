"""A file instance (local, sftp, ftp) as a target: upload under a temp name, then rename."""

from __future__ import annotations

from conveyor.config.base import FileTargetConfig
from conveyor.interfaces import FileSystem
from conveyor.names import name_fields, render, sanitise
from conveyor.payload.payload import Payload


class UploadTarget:
    """Uploads each payload to ``path/filename`` on a file instance."""

    def __init__(self, flow: str, config: FileTargetConfig, fs: FileSystem) -> None:
        self.flow = flow
        self.config = config
        self.fs = fs
        self.chmod = int(config.chmod, 8) if config.chmod else None

    def remote_path(self, payload: Payload) -> str:
        """Where the payload goes, relative to the instance root; the name cannot leave the folder."""
        fields = {k: sanitise(v, payload.id) for k, v in name_fields(payload.id, payload.name, self.flow).items()}
        name = sanitise(render(self.config.filename, fields), payload.id)
        folder = self.config.path.strip("/")
        return f"{folder}/{name}" if folder else name

    async def deliver(self, payload: Payload) -> None:
        """Upload; ``exists: skip`` counts as delivered (the far side already has a file there)."""
        await self.fs.upload(payload.body, self.remote_path(payload), exists=self.config.exists, chmod=self.chmod)

    async def close(self) -> None:
        """The instance owns the connections."""
