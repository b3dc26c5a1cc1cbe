"""A file instance (local, sftp, ftp) as a target: upload under a temp name, then rename."""

from __future__ import annotations

from conveyor.config.base import FileTargetConfig
from conveyor.errors import Rejected
from conveyor.interfaces import FileSystem
from conveyor.names import MissingField, Template, UnsafeName, split_folder, target_folder, target_name
from conveyor.payload.payload import Payload


class UploadTarget:
    """Uploads each payload to ``path/filename`` on a file instance."""

    def __init__(self, flow: str, config: FileTargetConfig, fs: FileSystem) -> None:
        self.flow = flow
        self.config = config
        self.fs = fs
        self.chmod = int(config.chmod, 8) if config.chmod else None
        fixed, below = split_folder(config.path)
        self._fixed = fixed.strip("/").removeprefix("./") if fixed.strip("/") != "." else ""
        self._below = Template(below) if below else None
        self._filename = Template(config.filename)

    def remote_path(self, payload: Payload) -> str:
        """Where the payload goes, relative to the instance root: the name cannot leave the folder,
        takes at most 255 bytes, and follows ``unsafe_names``; so does each folder the ``path``
        template adds. Raises Rejected for a name that policy refuses or a field the payload lacks."""
        values = payload.name_values()
        cfg = self.config
        try:
            name = target_name(self._filename, values, unsafe=cfg.unsafe_names, tz=cfg.timezone)
            below = target_folder(self._below, values, unsafe=cfg.unsafe_names, tz=cfg.timezone) if self._below else ""
        except (UnsafeName, MissingField) as e:
            raise Rejected(str(e), instance=cfg.instance) from None
        return "/".join(p for p in (self._fixed, below, name) if p)

    async def deliver(self, payload: Payload) -> None:
        """Upload; ``exists: skip`` counts as delivered (the far side already has a file there)."""
        mtime = payload.mtime if self.config.preserve_mtime else None
        await self.fs.upload(
            payload.body, self.remote_path(payload), exists=self.config.exists, chmod=self.chmod, mtime=mtime
        )

    async def close(self) -> None:
        """The instance owns the connections."""
