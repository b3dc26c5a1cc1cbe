"""A file instance (local, sftp, ftp) as a target: upload under a temp name, then rename."""

from __future__ import annotations

from conveyor.config.base import FileTargetConfig
from conveyor.errors import Rejected
from conveyor.interfaces import FileSystem
from conveyor.names import UnsafeName, target_name
from conveyor.payload.payload import Payload


class UploadTarget:
    """Uploads each payload to ``path/filename`` on a file instance."""

    def __init__(self, flow: str, config: FileTargetConfig, fs: FileSystem) -> None:
        self.flow = flow
        self.config = config
        self.fs = fs
        self.chmod = int(config.chmod, 8) if config.chmod else None

    def remote_path(self, payload: Payload) -> str:
        """Where the payload goes, relative to the instance root: the name cannot leave the folder,
        takes at most 255 bytes, and follows ``unsafe_names``. Raises Rejected for a name that
        policy refuses."""
        try:
            name = target_name(
                self.config.filename, payload.id, payload.name, self.flow, unsafe=self.config.unsafe_names
            )
        except UnsafeName as e:
            raise Rejected(str(e), instance=self.config.instance) from None
        folder = self.config.path.strip("/")
        return f"{folder}/{name}" if folder else name

    async def deliver(self, payload: Payload) -> None:
        """Upload; ``exists: skip`` counts as delivered (the far side already has a file there)."""
        await self.fs.upload(payload.body, self.remote_path(payload), exists=self.config.exists, chmod=self.chmod)

    async def close(self) -> None:
        """The instance owns the connections."""
