"""The small seams every connector plugs into.

A file connector (local, sftp, ftp) implements :class:`FileSystem`; the core's generic
file source and file target do the rest (listing, matching, stability, state, after
actions, temp-name uploads). A broker connector (rabbitmq, pubsub) implements
:class:`MessageSource` and a :class:`Target`. Connectors never retry or sleep: they raise
:class:`~conveyor.errors.Transient` or :class:`~conveyor.errors.Permanent` and the
supervisor applies backoff.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from conveyor.payload import Body, Payload, Spool, SpoolWriter

if TYPE_CHECKING:
    from conveyor.config.base import SourceConfig
    from conveyor.status import StatusBoard


@dataclass(frozen=True)
class RemoteFile:
    """One file as a listing shows it. ``path`` is relative to the instance root, '/'-separated."""

    path: str
    size: int
    mtime: float
    """Seconds since the epoch (UTC)."""

    @property
    def name(self) -> str:
        """The last path component."""
        return self.path.rsplit("/", 1)[-1]


@runtime_checkable
class FileSystem(Protocol):
    """A folder tree on a server or disk, relative to the instance's root.

    Paths are '/'-separated and relative to the root (``""`` is the root itself).
    Every method raises Transient for connection trouble and Permanent (NotFound,
    AuthError, ...) for what a retry will not fix.
    """

    async def stat(self, path: str) -> RemoteFile | None:
        """The file at ``path``, or None if there is none (or it is a folder)."""
        ...

    async def is_dir(self, path: str) -> bool:
        """Whether ``path`` is an existing folder."""
        ...

    def list(self, path: str, recursive: bool) -> AsyncIterator[RemoteFile]:
        """Regular files under ``path`` (streamed: a folder of 100,000 files is not built in memory)."""
        ...

    async def download(self, f: RemoteFile, sink: SpoolWriter) -> None:
        """Append the file's bytes from offset ``sink.size`` to the end (so a retry resumes)."""
        ...

    async def upload(self, body: Body, path: str, *, exists: str, chmod: int | None) -> bool:
        """Write ``body`` to ``path`` under a temporary name, then rename into place.

        ``exists`` is replace | fail | skip; returns False when skipped. Parent folders are created.
        """
        ...

    async def remove(self, path: str) -> None:
        """Delete a file; a file already gone is not an error."""
        ...

    async def rename(self, src: str, dst: str) -> None:
        """Move a file, creating the destination's folder and replacing what is there."""
        ...


class Target(Protocol):
    """Where a flow delivers. ``deliver`` returns once the far side confirmed."""

    async def deliver(self, payload: Payload) -> None:
        """Deliver one payload; raise Transient to retry later, Permanent/Rejected to fail it."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


@dataclass
class Inbound:
    """One message handed over by a broker source, with its settle callbacks.

    ``ack`` is called only after the target confirmed and the store recorded delivery;
    ``nack(requeue)`` returns it to the broker (requeue) or rejects it (dead-letter).
    """

    payload: Payload
    ack: Callable[[], Awaitable[None]]
    nack: Callable[[bool], Awaitable[None]]
    delivery_count: int | None = None
    """The broker's own count of deliveries when it keeps one (quorum x-delivery-count, Pub/Sub)."""
    extra: dict[str, Any] = field(default_factory=dict)


class MessageSource(Protocol):
    """A queue or subscription. ``run`` consumes until cancelled or the connection is lost."""

    async def run(self, emit: Callable[[Inbound], Awaitable[None]]) -> None:
        """Consume and call ``emit`` for each message; ``emit`` blocks when the flow is full
        (backpressure). Raise Transient when the connection drops so the supervisor reconnects."""
        ...

    async def stop_intake(self) -> None:
        """Stop receiving new messages (basic.cancel); messages already emitted settle as usual."""
        ...


@dataclass
class Context:
    """What the daemon hands to every connector factory."""

    spool: Spool
    status: StatusBoard
    flow_names: list[str] = field(default_factory=list)


class InstanceRuntime(Protocol):
    """A live instance. File instances also implement :class:`FileSystem`; broker instances
    implement ``source`` and ``target``."""

    name: str

    async def check(self) -> str:
        """Connect and log in now; return a one-line description. For ``check --connect``."""
        ...

    async def close(self) -> None:
        """Close every connection."""
        ...


class BrokerInstance(InstanceRuntime, Protocol):
    """A broker instance makes sources and targets for flows."""

    def source(self, flow: str, config: SourceConfig) -> MessageSource:
        """A consumer for one flow."""
        ...

    def target(self, flow: str, config: Any) -> Target:
        """A publisher for one flow."""
        ...
