"""The small seams every connector plugs into.

Every live instance is an :class:`Instance`. A file connector (local, sftp, ftp) also
implements :class:`FileSystem`; the core's generic file source and file target do the rest
(listing, matching, stability, state, after actions, temp-name uploads). A broker connector
(rabbitmq, pubsub) is a :class:`BrokerInstance` that makes a :class:`MessageSource` and a
:class:`Target` per flow. What only some connectors can do is a ``runtime_checkable``
protocol of its own (:class:`OpensInPlace`, :class:`ChecksListed`, :class:`Resolves`,
:class:`Probes`, :class:`Located`, :class:`Hops`), asked with ``isinstance``. Connectors never
retry or sleep: they raise :class:`~conveyor.errors.Transient` or :class:`~conveyor.errors.Permanent` and the
supervisor applies backoff.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from conveyor.payload.body import Body
from conveyor.payload.payload import Payload
from conveyor.payload.spool import Spool, SpoolWriter

if TYPE_CHECKING:
    from conveyor.config.base import SourceConfig
    from conveyor.status import StatusBoard
    from conveyor.stopping import StopSignal


@dataclass(frozen=True)
class RemoteFile:
    """One file as a listing shows it. ``path`` is relative to the instance root, '/'-separated."""

    path: str
    size: int
    mtime: float
    """Seconds since the epoch (UTC)."""
    refused: str | None = None
    """Set when the listing shows this entry only to say why it is never taken (a symlink, a
    FIFO): the source reports it once and does not deliver it."""

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

    def list(
        self,
        path: str,
        recursive: bool,
        max_entries: int | None = None,
        descend: Callable[[str], bool] | None = None,
    ) -> AsyncIterator[RemoteFile]:
        """Regular files under ``path`` (streamed: a folder of 100,000 files is not built in memory);
        entries that are never taken (a symlink, a FIFO) may come with ``refused`` set. Past
        ``max_entries`` entries read (files, folders and anything else alike) it raises
        :class:`ListingCut`, so a server that lists without end cannot keep it going. A recursive
        listing goes into a sub-folder only when ``descend`` (given its path, relative to the
        root) is None or says yes, so folders that can hold nothing wanted are never read."""
        ...

    async def download(self, f: RemoteFile, sink: SpoolWriter) -> None:
        """Append the file's bytes from offset ``sink.size`` to the end (so a retry resumes)."""
        ...

    async def upload(
        self, body: Body, path: str, *, exists: str, chmod: int | None, mtime: float | None = None
    ) -> bool:
        """Write ``body`` to ``path`` under a temporary name, then rename into place.

        ``exists`` is replace | fail | skip; returns False when skipped. Parent folders are created.
        ``mtime`` (seconds since the epoch), when given, becomes the file's modification time
        before the rename, where the server lets it be set.
        """
        ...

    async def remove(self, path: str) -> None:
        """Delete a file; a file already gone is not an error."""
        ...

    async def rename(self, src: str, dst: str) -> None:
        """Move a file, creating the destination's folder and replacing what is there."""
        ...


class ListingCut(Exception):
    """A listing reached its ``max_entries``: what it yielded so far is all that is read."""

    def __init__(self, entries: int) -> None:
        super().__init__(f"more than {entries} entries")
        self.entries = entries


def count_entry(n: int, max_entries: int | None) -> int:
    """One more listing entry read: the new count, or :class:`ListingCut` once past ``max_entries``."""
    n += 1
    if max_entries is not None and n > max_entries:
        raise ListingCut(max_entries)
    return n


@runtime_checkable
class Hops(Protocol):
    """An instance reached through several hops (a proxy, jump hosts): ``check --connect`` shows each."""

    def hop_report(self) -> list[str]:
        """One line per hop of the last connect, in order, saying what was verified there."""
        ...


@runtime_checkable
class OpensInPlace(Protocol):
    """A file system whose files can be handed over where they lie, without a copy to the spool."""

    async def open_in_place(self, f: RemoteFile, threshold: int) -> Body:
        """A body reading ``f`` in place (read into memory when smaller than ``threshold``)."""
        ...


@runtime_checkable
class ChecksListed(Protocol):
    """A file system that removes or moves a listed file only while its name still holds that
    very file, unchanged: where others can write, a name may be swapped for a link or another
    file, or the file written to, between the listing and the after action."""

    async def remove_listed(self, f: RemoteFile) -> bool:
        """Delete ``f``; False (nothing deleted) when its name holds something else by now."""
        ...

    async def rename_listed(self, f: RemoteFile, dst: str) -> bool:
        """Move ``f`` to ``dst``; False (nothing moved) when its name holds something else by now."""
        ...


@runtime_checkable
class Resolves(Protocol):
    """A remote file system that can name the server folder a relative path stands for."""

    async def resolve(self, path: str) -> str:
        """The absolute server path of ``path`` (below the login folder, say)."""
        ...


@runtime_checkable
class Probes(Protocol):
    """A source or target that can check, without changing anything, that it would work."""

    async def probe(self) -> str:
        """A one-line description of what was found; raise when the first try would fail."""
        ...


@runtime_checkable
class Located(Protocol):
    """A target that names where it writes, for ``check --connect``."""

    where: str


class Target(Protocol):
    """Where a flow delivers. ``deliver`` returns once the far side confirmed."""

    async def deliver(self, payload: Payload) -> None:
        """Deliver one payload; raise Transient to retry later, Permanent/Rejected to fail it."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


@runtime_checkable
class AcksMany(Protocol):
    """A source that acks several of its deliveries at once."""

    async def ack_many(self, tokens: Sequence[Any]) -> None:
        """Ack the deliveries of these tokens (of :class:`Inbound` whose ``acks`` is this object)
        together: as few frames or calls as the broker allows; each at most once, as ``ack``."""
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
    acks: AcksMany | None = None
    """Where this delivery may be acked together with others (``token`` names it there)."""
    token: Any = None


Submit = Callable[[str, Callable[[], Awaitable[None]]], Awaitable[bool]]
"""A flow's intake: start ``work`` for the item keyed ``key`` when a slot is free; False once
the flow is stopping."""


class Source(Protocol):
    """What a flow runs under the supervisor: a file source's poll loop, a broker consumer."""

    async def run(self, stop: StopSignal) -> None:
        """Take work until ``stop`` is set (then let what was handed over settle and return) or
        the task is cancelled; raise Transient when the connection drops."""
        ...


@runtime_checkable
class Forgets(Protocol):
    """A source that remembers which items are done and must be told when the ledger forgets one."""

    def forgotten(self, id: str) -> None:
        """The ledger dropped ``id``: offer that item again."""
        ...


@runtime_checkable
class PollsOnDemand(Protocol):
    """A source that lists on a cadence and can be asked to list at once."""

    def poll_now(self) -> None:
        """List as soon as possible."""
        ...


class MessageSource(Protocol):
    """A queue or subscription. ``run`` consumes until its flow stops, it is cancelled or the connection is lost."""

    async def run(self, emit: Callable[[Inbound], Awaitable[None]], stop: StopSignal) -> None:
        """Consume and call ``emit`` for each message; ``emit`` blocks when the flow is full
        (backpressure). Raise Transient when the connection drops so the supervisor reconnects.

        ``stop`` is the soft stop: once it is set, receive nothing new (basic.cancel, end the
        pull), give back what was received but not emitted, let the emitted messages settle
        as usual, and return. Cancellation is the hard stop: end now."""
        ...


@dataclass
class Context:
    """What the daemon hands to every connector factory."""

    spool: Spool
    status: StatusBoard
    flow_names: list[str] = field(default_factory=list)


@runtime_checkable
class Instance(Protocol):
    """A live instance. File instances also implement :class:`FileSystem`; broker instances
    are :class:`BrokerInstance`."""

    name: str

    async def check(self) -> str:
        """Connect and log in now; return a one-line description. For ``check --connect``."""
        ...

    async def close(self) -> None:
        """Close every connection."""
        ...


@runtime_checkable
class BrokerInstance(Instance, Protocol):
    """A broker instance makes sources and targets for flows."""

    def source(self, flow: str, config: SourceConfig) -> MessageSource:
        """A consumer for one flow."""
        ...

    def target(self, flow: str, config: Any) -> Target:
        """A publisher for one flow."""
        ...
