"""A file instance (local, sftp, ftp) as a target: upload under a temp name, then rename."""

from __future__ import annotations

import posixpath

from conveyor import companions
from conveyor.config.base import FileTargetConfig
from conveyor.errors import Rejected
from conveyor.interfaces import FileSystem
from conveyor.names import (
    NAME_MAX,
    MissingField,
    Template,
    UnsafeName,
    name_bytes,
    split_folder,
    target_folder,
    target_name,
)
from conveyor.payload.body import Body
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
        """Upload; ``exists: skip`` counts as delivered (the far side already has a file there).
        Then the checksum file and the done file, each under a temp name and renamed: a reader
        that sees one finds the data complete. A crash before them leaves the payload undelivered
        in the ledger, so the redo writes them."""
        path = self.remote_path(payload)
        mtime = payload.mtime if self.config.preserve_mtime else None
        wrote = await self.fs.upload(payload.body, path, exists=self.config.exists, chmod=self.chmod, mtime=mtime)
        # Data skipped (already there): its companions are written where missing, never replaced.
        exists = "replace" if wrote else "skip"
        folder, name = posixpath.split(path)
        algorithm = self.config.checksum
        if algorithm is not None:
            digest = await companions.digest(payload.body, algorithm)
            line = Body.from_bytes(companions.checksum_line(digest, name))
            await self.fs.upload(
                line, self._beside(folder, name, "{name}." + algorithm), exists=exists, chmod=self.chmod
            )
        if self.config.done_file is not None:
            marker = self._beside(folder, name, self.config.done_file)
            await self.fs.upload(Body.from_bytes(b""), marker, exists=exists, chmod=self.chmod)

    def _beside(self, folder: str, name: str, template: str) -> str:
        companion = companions.render(template, name)
        if name_bytes(companion) > NAME_MAX:
            raise Rejected(f"{companion[:100]!r}...: longer than {NAME_MAX} bytes", instance=self.config.instance)
        return posixpath.join(folder, companion)

    async def close(self) -> None:
        """The instance owns the connections."""
