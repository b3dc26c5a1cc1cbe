"""The state store interface, shared by the SQLite and PostgreSQL stores.

An item is one file or message a flow has seen, keyed by (flow, payload id). Its
``state`` is pending → in_flight → delivered | failed; ``settled`` records that the
source-side completion (a file's ``after`` action, a message's ack) was done too, so
after a crash between "delivered" and "settled" the completion is finished, not the
delivery repeated.

A flow with a ``targets:`` list also records each target's delivery of an item (a
:class:`TargetItem`): the item is ``delivered`` only once every target it was routed to has
it, and a later attempt sends only to the targets that do not. An item routed to no target
is ``delivered`` with ``no_target`` set.

A flow whose steps split a file into messages records how far the split got (a
:class:`Progress`), so a redo after a crash goes on from there rather than from the start.
A ``collect`` step keeps each batch it writes in the same records (its file name and member ids,
under a target key of its own) until its messages are all delivered.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class Item:
    """One ledger row."""

    flow: str
    id: str
    state: str
    attempts: int
    last_error: str | None
    settled: bool
    name: str | None
    path: str | None
    size: int | None
    mtime: float | None
    owner: str | None
    first_seen: float
    updated: float
    no_target: bool = False
    """Delivered without a target: no ``when:`` of the flow's targets matched it."""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready view for the ledger endpoint."""
        return {
            "id": self.id,
            "state": self.state,
            "attempts": self.attempts,
            "last_error": self.last_error,
            "settled": self.settled,
            "name": self.name,
            "path": self.path,
            "size": self.size,
            "mtime": self.mtime,
            "owner": self.owner,
            "first_seen": self.first_seen,
            "updated": self.updated,
            "no_target": self.no_target,
        }


@dataclass(frozen=True)
class TargetItem:
    """One target's delivery of one item (flows with a ``targets:`` list)."""

    target: str
    state: str
    """delivered, or failed (its last try failed; the item's own state says whether it is tried again)."""
    attempts: int
    last_error: str | None
    updated: float

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready view for the ledger endpoint."""
        return {"state": self.state, "attempts": self.attempts, "last_error": self.last_error, "updated": self.updated}


@dataclass(frozen=True)
class Progress:
    """How far a ``split`` step got through one item: ``position`` records confirmed of the
    input whose derived id is ``mark`` (an item's steps may split several inputs, one at a time)."""

    mark: str
    position: int


class StateStore(Protocol):
    """Durable per-item state. Every write is committed before its call returns."""

    owner: str
    """This replica's name, recorded on the items it claims."""

    async def open(self) -> None:
        """Create or migrate the schema; make in-flight items of a dead run claimable again."""
        ...

    async def close(self) -> None:
        """Flush and close."""
        ...

    async def get_many(self, flow: str, ids: list[str]) -> dict[str, Item]:
        """The known items among ``ids``."""
        ...

    async def claim(
        self, flow: str, id: str, info: dict[str, Any], lease: float, *, takeover: bool = False
    ) -> Item | None:
        """Mark the item in flight for this replica and count an attempt.

        Returns None when the item is delivered, failed for good, or held by another
        replica whose lease has not expired; the caller must not deliver it then.
        ``info`` may hold name, path, size, mtime. ``takeover``: the source itself hands an
        item to one consumer at a time (a broker), so another replica's live lease is stale
        (that replica died or lost its channel) and does not stop the claim; this replica's
        own in-flight claim still does.
        """
        ...

    async def claim_many(
        self, flow: str, ids: Sequence[str], lease: float, *, takeover: bool = False
    ) -> dict[str, Item | None]:
        """:meth:`claim` for a batch of items (no ``info``), in one write: id -> its claim, or None
        where :meth:`claim` would have refused it. An id given twice is claimed once."""
        ...

    async def delivered_many(self, flow: str, ids: Sequence[str]) -> None:
        """:meth:`delivered` for a batch of items (one target each), in one durable write."""
        ...

    async def settled_many(self, flow: str, ids: Sequence[str]) -> None:
        """:meth:`settled` for a batch of items, in one write."""
        ...

    async def delivered(self, flow: str, id: str, *, no_target: bool = False, targets: Sequence[str] = ()) -> None:
        """The target confirmed the item (every target it was routed to; ``no_target``: it matched none).
        ``targets``: targets of a ``targets:`` list whose confirmation is recorded with it, in one write."""
        ...

    async def target_delivered(self, flow: str, id: str, target: str) -> None:
        """One target of a ``targets:`` list confirmed the item (durable before returning: it is
        never sent to that target again)."""
        ...

    async def target_failed(self, flow: str, id: str, target: str, error: str) -> None:
        """One target of a ``targets:`` list failed the item (the item's own record says what next)."""
        ...

    async def targets(self, flow: str, ids: list[str]) -> dict[str, dict[str, TargetItem]]:
        """Each target's record of the items among ``ids`` that have any: id -> target -> record."""
        ...

    async def settled(self, flow: str, id: str) -> None:
        """The source-side completion (after action, ack) is done."""
        ...

    async def failed(self, flow: str, id: str, error: str, *, final: bool) -> None:
        """A delivery attempt failed; ``final`` makes the item ``failed`` (no more automatic tries)."""
        ...

    async def release(self, flow: str, id: str) -> None:
        """Give an in-flight item back (shutdown, or the source will hand it over again)."""
        ...

    async def search(self, flows: list[str], text: str | None, state: str | None, limit: int) -> list[Item]:
        """Items of ``flows`` whose id is ``text`` or whose name or path contains it (any case),
        in ``state`` if given: failed items first, then newest first."""
        ...

    async def counts(self, flows: list[str], states: list[str]) -> dict[str, dict[str, int]]:
        """How many items each of ``flows`` has in each of ``states``: {flow: {state: n}}."""
        ...

    async def list(self, flow: str, state: str | None, limit: int = 100, offset: int = 0) -> list[Item]:
        """Items of a flow, newest first."""
        ...

    async def arrivals(self, flow: str, since: float, limit: int) -> int:
        """How many items the flow first saw at or after ``since`` (epoch seconds), in any
        state, counting no further than ``limit``."""
        ...

    async def retry(self, flow: str, id: str) -> bool:
        """Make a failed item deliverable again; False if it is not failed."""
        ...

    async def forget(self, flow: str, id: str) -> bool:
        """Drop an item (and its targets' and progress records) so its file is taken again; False if unknown."""
        ...

    async def prune(self, older_than: float) -> int:
        """Delete settled rows last updated before ``older_than`` (epoch seconds), with their targets'
        and progress records."""
        ...

    async def progress(self, flow: str, id: str, target: str) -> Progress | None:
        """How far a split of the item got for ``target`` ('' for a flow's one target), if recorded."""
        ...

    async def set_progress(self, flow: str, id: str, target: str, progress: Progress) -> None:
        """Record how far a split of the item got (durable before returning)."""
        ...

    async def progress_of(self, flow: str, target: str) -> dict[str, Progress]:
        """Every progress record of ``flow`` for ``target``: id -> record (a collect step's batches)."""
        ...

    async def drop_progress(self, flow: str, id: str, target: str) -> None:
        """Forget one progress record (durable before returning)."""
        ...


@runtime_checkable
class SharesClaims(Protocol):
    """A store that several replicas use at once: they list the same files and race for claims."""

    shared: bool
    """Whether several processes use this store at once."""
