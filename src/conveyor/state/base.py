"""The state store interface, shared by the SQLite and PostgreSQL stores.

An item is one file or message a flow has seen, keyed by (flow, payload id). Its
``state`` is pending → in_flight → delivered | failed; ``settled`` records that the
source-side completion (a file's ``after`` action, a message's ack) was done too, so
after a crash between "delivered" and "settled" the completion is finished, not the
delivery repeated.
"""

from __future__ import annotations

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
        }


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

    async def delivered(self, flow: str, id: str) -> None:
        """The target confirmed the item."""
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

    async def list(self, flow: str, state: str | None, limit: int = 100, offset: int = 0) -> list[Item]:
        """Items of a flow, newest first."""
        ...

    async def retry(self, flow: str, id: str) -> bool:
        """Make a failed item deliverable again; False if it is not failed."""
        ...

    async def forget(self, flow: str, id: str) -> bool:
        """Drop an item so its file is taken again; False if unknown."""
        ...

    async def prune(self, older_than: float) -> int:
        """Delete settled rows last updated before ``older_than`` (epoch seconds)."""
        ...


@runtime_checkable
class SharesClaims(Protocol):
    """A store that several replicas use at once: they list the same files and race for claims."""

    shared: bool
    """Whether several processes use this store at once."""
