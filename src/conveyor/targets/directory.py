"""The ``directory`` target: body, then ``<name>.meta.json``, each appearing atomically.

Order of a delivery: both written under temporary names → one (group) sync so the bytes
are durable → rename the body, then the sidecar → one (group) sync so the names are
durable → delivered. A reader that sees the sidecar may read the body. A payload id that
is already there (its sidecar names the same id) is not written again.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import uuid
from pathlib import Path

from conveyor.errors import NoSpace, Permanent, Rejected, Transient
from conveyor.names import name_fields, render, sanitise
from conveyor.payload import Payload, disk_full
from conveyor.targets.config import DirectoryTargetConfig
from conveyor.targets.fsync import GroupSync

_SYNCS: dict[str, GroupSync] = {}


def _group_sync(folder: Path) -> GroupSync:
    key = str(folder)
    gs = _SYNCS.get(key)
    if gs is None:
        gs = _SYNCS[key] = GroupSync(key)
    return gs


class DirectoryTarget:
    """Writes payloads into a local folder."""

    def __init__(self, flow: str, config: DirectoryTargetConfig) -> None:
        self.flow = flow
        self.config = config
        self.folder = Path(config.path)
        self._ready = False

    def file_name(self, payload: Payload) -> str:
        """The body's file name for a payload (sanitised: it cannot leave the folder)."""
        fields = name_fields(payload.id, payload.name, self.flow)
        fields = {k: sanitise(v, payload.id) for k, v in fields.items()}
        return sanitise(render(self.config.filename, fields), payload.id)

    async def deliver(self, payload: Payload) -> None:
        """Write the body and sidecar; returns when both are durable."""
        try:
            await self._deliver(payload)
        except OSError as e:
            if disk_full(e):
                raise NoSpace(f"target folder {self.folder} is full", path=str(self.folder)) from None
            if isinstance(e, PermissionError):
                raise Permanent(f"cannot write into {self.folder}: permission denied", path=str(self.folder)) from None
            raise Transient(f"writing into {self.folder} failed: {e.strerror or e}", path=str(self.folder)) from None

    async def _deliver(self, payload: Payload) -> None:
        if not self._ready:
            await asyncio.to_thread(self.folder.mkdir, parents=True, exist_ok=True)
            self._ready = True
        name = self.file_name(payload)
        dest = self.folder / name
        meta_path = self.folder / f"{name}.meta.json"
        if self.config.sidecar:
            existing = await asyncio.to_thread(_sidecar_id, meta_path)
            if existing == payload.id and dest.exists():
                return  # already delivered: the same id written twice leaves one copy
            if existing is not None and existing != payload.id:
                if self.config.exists == "fail":
                    raise Rejected(f"{name} already holds payload {existing}", path=str(dest))
                if self.config.exists == "skip":
                    return
        elif dest.exists() and self.config.exists != "replace":
            if self.config.exists == "fail":
                raise Rejected(f"{name} already exists", path=str(dest))
            return
        tag = uuid.uuid4().hex[:12]
        tmp_body = self.folder / f".{name[:200]}.{tag}.tmp"
        tmp_meta = self.folder / f".{name[:200]}.{tag}.meta.tmp"
        try:
            # Copy and hash at once: both read the same (cached) bytes.
            _, meta = await asyncio.gather(asyncio.to_thread(_write_body, payload, tmp_body), payload.metadata())
            await asyncio.to_thread(tmp_meta.write_bytes, json.dumps(meta, indent=2).encode() + b"\n")
            sync = _group_sync(self.folder) if self.config.fsync else None
            if sync:
                await sync.sync()
            await asyncio.to_thread(os.replace, tmp_body, dest)
            if self.config.sidecar:
                await asyncio.to_thread(os.replace, tmp_meta, meta_path)
            if sync:
                await sync.sync()
        finally:
            for p in (tmp_body, tmp_meta):
                if p.exists():
                    p.unlink(missing_ok=True)

    async def close(self) -> None:
        """Nothing to release."""


def _sidecar_id(path: Path) -> str | None:
    try:
        data = json.loads(path.read_bytes())
    except (FileNotFoundError, ValueError):
        return None
    value = data.get("id") if isinstance(data, dict) else None
    return value if isinstance(value, str) else None


def _write_body(payload: Payload, dest: Path) -> None:
    body = payload.body
    if body.in_memory:
        dest.write_bytes(body.bytes())
        return
    assert body.path is not None
    if body.owned:
        # A spool file is ours alone: on the same file system a hard link costs nothing,
        # whatever the size. (Never for a source file read in place: a later write to it
        # would change the delivered copy too.)
        try:
            os.link(body.path, dest)
            return
        except OSError:
            pass
    shutil.copyfile(body.path, dest)  # uses sendfile/copy_file_range: no user-space copies
