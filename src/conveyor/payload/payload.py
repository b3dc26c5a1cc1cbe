"""A payload: one file or message moving through a flow, and its metadata document."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from conveyor.names import NameValues
from conveyor.payload.body import Body
from conveyor.payload.timestamps import utc_iso


@dataclass
class Payload:
    """One file or message moving through a flow."""

    id: str
    flow: str
    source_instance: str
    source_type: str
    body: Body
    name: str | None = None
    file: dict[str, Any] | None = None
    message: dict[str, Any] | None = None
    received_at: str = field(default_factory=utc_iso)
    content_type: str = "application/octet-stream"
    folder: str = ""
    """A file's folder below its source's ``path`` ('' at its top): the ``{path}`` of target templates."""
    mtime: float | None = None
    """A file's modification time as listed (seconds since the epoch), for ``{mtime}`` and
    ``preserve_mtime``; None for messages."""
    lineage: tuple[dict[str, Any], ...] = ()
    """For a payload a flow's steps derived: one entry per step it went through (parent id,
    step index and kind, archive member), oldest first; empty for what a source handed over."""

    def name_values(self) -> NameValues:
        """What target ``filename`` and ``path`` templates may use of this payload."""
        msg = self.message or {}
        attrs = msg.get("attributes") if self.source_type == "pubsub" else None
        headers = msg.get("headers") if self.source_type == "rabbitmq" else None
        return NameValues(
            id=self.id,
            flow=self.flow,
            name=self.name,
            folder=self.folder,
            received=datetime.fromisoformat(self.received_at),
            mtime=None if self.mtime is None else datetime.fromtimestamp(self.mtime, UTC),
            attrs=attrs if isinstance(attrs, dict) else None,
            headers=headers if isinstance(headers, dict) else None,
        )

    async def metadata(self) -> dict[str, Any]:
        """The metadata document every target delivers beside the body (a file, headers, attributes).

        It holds the payload's id, flow, source (instance and type) and ``received_at``; the body's
        size and SHA-256 (computed here if not known yet); the name; and the source's details:
        ``file`` for file sources, ``message`` for brokers, the other one ``None``.
        """
        return self.metadata_with(await self.body.digest())

    def metadata_with(self, sha256: str) -> dict[str, Any]:
        """The metadata document, given the body's digest (for callers that hash while copying)."""
        doc: dict[str, Any] = {
            "id": self.id,
            "flow": self.flow,
            "source": {"instance": self.source_instance, "type": self.source_type},
            "received_at": self.received_at,
            "size": self.body.size,
            "sha256": sha256,
            "name": self.name,
            "file": self.file,
            "message": self.message,
        }
        if self.lineage:
            doc["lineage"] = list(self.lineage)
        return doc


def stable_id(*parts: object) -> str:
    """A 32-hex-digit id derived from the parts (file id: instance, path, size, mtime)."""
    h = hashlib.sha256()
    for p in parts:
        h.update(repr(p).encode())
        h.update(b"\0")
    return h.hexdigest()[:32]
