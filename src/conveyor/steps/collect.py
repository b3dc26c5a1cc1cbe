"""``collect``: a broker flow's messages gathered into files, one file per batch.

Each message's delivery waits in the batch it joined; the batch is written once it holds
``max_messages`` messages or ``max_bytes`` bytes, or ``max_wait`` after its first message came.
Writing a batch goes in this order:

1. its manifest (the file's name and the ids of its messages, in order) is recorded in the
   state store;
2. the file goes through the flow's later steps to the target (temp name, then rename);
3. the manifest is marked written;
4. every member's delivery returns, and each is recorded ``delivered`` and acked as usual.

A crash before 3 acks nothing: the broker hands the messages over again, and a message whose
id a manifest names goes back into that batch, which is written again under the same name once
all its messages are back (or ``max_wait`` after the first came back, with those there are;
the manifest is recorded anew first), replacing whatever the crash left. A message of a batch
marked written is delivered already: it returns at once. Written manifests are dropped once
the ledger has each of their messages ``delivered``.

A batch is held in memory (each message's bytes, as the broker's unacked messages are) and its
file is built in the spool, on disk past the spool threshold.

A flow with one target takes its messages in batches (:meth:`Collector.batched`): a message joins
its batch unclaimed, and the batch's messages are claimed in the state store together once the
batch is complete (one write), recorded ``delivered`` together once the file is in place and the
manifest marked written (one durable write), then acked together (one multiple-ack where the
broker allows) — the same order as above, one write per step instead of one per message. The
batch's manifest is dropped right after, its messages being ``delivered`` in the ledger.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from conveyor.clock import zone
from conveyor.config.steps import Collect, check_collect_name
from conveyor.errors import Permanent, Transient
from conveyor.payload.body import Body
from conveyor.payload.payload import Payload, stable_id
from conveyor.payload.spool import Spool
from conveyor.payload.timestamps import utc_iso
from conveyor.state.base import Item, Progress, StateStore

log = logging.getLogger("conveyor.steps")

TARGET_KEY = "collect:"
"""The state store keeps a flow's batch manifests as progress records under this target key
(followed by the target's name in the ledger)."""
OPEN, WRITTEN = 0, 1
"""A manifest's state, its progress record's position."""
HURRY = 0.2
"""Once the flow stops taking messages, partial batches are written after this long."""
PIECE = 1024 * 1024
"""Records are joined into pieces of about this many bytes on their way into the spool."""

CONTENT_TYPES = {"ndjson": "application/x-ndjson", "csv": "text/csv", "concat": "application/octet-stream"}


@dataclass(frozen=True)
class Manifests:
    """Where a flow's batches are recorded: the state store, under (flow, batch id, target key)."""

    store: StateStore
    flow: str
    target: str


class NotWritten(Exception):
    """A batch's file could not be delivered (``final``: no more automatic attempts)."""

    def __init__(self, message: str, final: bool) -> None:
        super().__init__(message)
        self.final = final


class BatchHooks(Protocol):
    """What a flow that takes its messages in batches does around each batch's file (see the
    module docstring). ``members``: message id -> the flow's handles of its deliveries."""

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run a batch's work as one of the flow's deliveries (from its first message on)."""
        ...

    async def claim(self, members: dict[str, list[Any]]) -> dict[str, Item]:
        """Claim the members; settle those the ledger refuses. Returns the claimed ones."""
        ...

    async def send(self, payload: Payload) -> None:
        """Deliver the batch's file to the target, with the flow's retries; NotWritten if it failed."""
        ...

    async def written(self, members: dict[str, list[Any]], claimed: dict[str, Item]) -> None:
        """The file is in place, its manifest marked written: record the members delivered, ack them."""
        ...

    async def failed(
        self, members: dict[str, list[Any]], claimed: dict[str, Item] | None, error: BaseException
    ) -> None:
        """The file is not in place (``claimed`` None: not claimed yet): give the messages back."""
        ...


@dataclass
class _Batch:
    start: float
    """When its first message came (epoch seconds)."""
    records: dict[str, bytes] = field(default_factory=dict)
    """Member id -> its bytes in the file, in the order they go in."""
    size: int = 0
    done: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    timer: asyncio.TimerHandle | None = None
    writing: bool = False
    expected: tuple[str, ...] = ()
    """A recorded batch written again: its members, in their order."""
    name: str | None = None
    """A recorded batch's file name."""
    key: str | None = None
    """A recorded batch's manifest id."""
    members: dict[str, list[Any]] = field(default_factory=dict)
    """Taken in batches: member id -> the flow's handles of its deliveries (a copy may come twice)."""
    ready: asyncio.Future[None] | None = None
    """Taken in batches: set once the batch is to be written (its work waits on it)."""


class Collector:
    """Gathers the messages given to :meth:`add` into batches and hands each batch's file to ``send``."""

    def __init__(
        self,
        config: Collect,
        index: int,
        spool: Spool,
        manifests: Manifests | None,
        send: Callable[[Payload], Awaitable[None]],
        timezone: str | None = None,
    ) -> None:
        """``timezone``: the IANA zone of ``{batch_start}`` in file names (the flow's; default UTC)."""
        self.config = config
        self.zone = zone(timezone) if timezone else UTC
        self.index = index
        self.spool = spool
        self.manifests = manifests
        self._send = send
        self._parts = check_collect_name(config.name_template)
        self._open: _Batch | None = None
        self._again: dict[str, _Batch] = {}
        """Recorded batches being rebuilt, by manifest id."""
        self._member: dict[str, tuple[str, int]] = {}
        """Message id -> (manifest id, state) for every recorded batch."""
        self._recorded: dict[str, tuple[str, tuple[str, ...], int]] = {}
        """Manifest id -> (file name, members, state)."""
        self._loaded: asyncio.Task[None] | None = None
        self._writes: set[asyncio.Task[None]] = set()
        self._hurry = False
        self._origin = ("", "")
        """The source's instance and type, named in the files' metadata."""
        self._hooks: BatchHooks | None = None

    def batched(self, hooks: BatchHooks) -> None:
        """Take messages in batches through :meth:`put` (see the module docstring)."""
        self._hooks = hooks

    # -- intake -------------------------------------------------------------------
    async def ready(self) -> None:
        """Load the recorded manifests (first use, or after a failed try)."""
        loaded = self._loaded
        if loaded is None or (loaded.done() and (loaded.cancelled() or loaded.exception() is not None)):
            loaded = self._loaded = asyncio.ensure_future(self._load())  # first use, or the last try failed
        if not loaded.done():
            await asyncio.shield(loaded)
        loaded.result()

    def written(self, id: str) -> bool:
        """Whether a manifest marked written names the message (its file is in place already)."""
        known = self._member.get(id)
        return known is not None and known[1] == WRITTEN

    async def record(self, payload: Payload) -> bytes:
        """The message's bytes as they go into the file; Permanent for one that cannot."""
        return await self._record(payload)

    def put(self, payload: Payload, record: bytes, member: Any) -> None:
        """Taken in batches (after :meth:`ready`, for a message not :meth:`written`): put the
        message, as ``record``, in a batch; the hooks settle ``member`` once the batch is done."""
        batch = self._join(payload, record)
        batch.members.setdefault(payload.id, []).append(member)
        if self._full(batch):
            self._write(batch)

    def _join(self, payload: Payload, record: bytes) -> _Batch:
        self._origin = (payload.source_instance, payload.source_type)
        batch = self._batch_for(payload.id, self._member.get(payload.id), len(record))
        if payload.id in batch.records:  # the same message twice in one batch (a broker's copy)
            batch.size -= len(batch.records[payload.id])
        batch.records[payload.id] = record
        batch.size += len(record)
        return batch

    async def add(self, payload: Payload) -> None:
        """Put the message in a batch; return once that batch's file is delivered."""
        await self.ready()
        if self.written(payload.id):
            return  # its batch's file is in place already: only its ack was lost
        record = await self._record(payload)
        if self._hooks is not None:
            # Taken in batches, a message comes this way only when its file is in place; one whose
            # manifest went meanwhile goes back to the broker and joins a batch when it comes again.
            raise Transient(f"steps[{self.index}] collect: the message is taken again in a batch")
        batch = self._join(payload, record)
        if self._full(batch):
            self._write(batch)
        done = batch.done
        try:
            await asyncio.shield(done)
        except asyncio.CancelledError:
            # Stopping: a message whose batch is not being written yet leaves it (the broker gets it
            # back); one being written stays, and its redelivery finds the batch written.
            if not batch.writing and batch.records.pop(payload.id, None) is not None:
                batch.size -= len(record)
                if not batch.records:
                    self._discard(batch)
            raise

    def _batch_for(self, id: str, known: tuple[str, int] | None, size: int) -> _Batch:
        if known is not None:
            key = known[0]
            batch = self._again.get(key)
            if batch is None or batch.writing:
                name, members, _ = self._recorded[key]
                batch = self._again[key] = _Batch(time.time(), expected=members, name=name, key=key)
                self._start(batch)
            return batch
        batch = self._open
        limit = self.config.max_bytes
        if batch is not None and batch.records and batch.size + size > limit:
            self._write(batch)
            batch = None
        if batch is None:
            batch = self._open = _Batch(time.time())
            self._start(batch)
        return batch

    def _start(self, batch: _Batch) -> None:
        self._arm(batch)
        if self._hooks is not None:  # its work starts now, so a drain waits for it
            batch.ready = asyncio.get_running_loop().create_future()
            self._hooks.spawn(self._deliver(batch))

    def _full(self, batch: _Batch) -> bool:
        if batch.expected:  # only the manifest's messages join it
            return len(batch.records) >= len(batch.expected)
        return len(batch.records) >= self.config.max_messages or batch.size >= self.config.max_bytes

    def _arm(self, batch: _Batch) -> None:
        wait = HURRY if self._hurry else self.config.max_wait
        batch.timer = asyncio.get_running_loop().call_later(wait, self._due, batch)

    def _due(self, batch: _Batch) -> None:
        if not batch.writing and batch.records:
            self._write(batch)

    def _detach(self, batch: _Batch) -> None:
        """The batch takes no more messages: its timer stopped, no longer the one being filled."""
        if batch.timer is not None:
            batch.timer.cancel()
        if batch is self._open:
            self._open = None
        elif batch.key is not None and self._again.get(batch.key) is batch:
            del self._again[batch.key]

    def _discard(self, batch: _Batch) -> None:
        self._detach(batch)
        if not batch.done.done():
            batch.done.cancel()
        if batch.ready is not None and not batch.ready.done():
            batch.ready.cancel()

    def stopping(self) -> None:
        """The flow takes no more messages: write partial batches soon, not after ``max_wait``."""
        self._hurry = True
        for batch in [self._open, *self._again.values()]:
            if batch is not None and not batch.writing and batch.records:
                if batch.timer is not None:
                    batch.timer.cancel()
                self._arm(batch)

    async def _record(self, payload: Payload) -> bytes:
        """The message's bytes as they go into the file; Permanent for one that cannot."""
        body = payload.body
        data = body.data() if body.in_memory else await asyncio.to_thread(Path(str(body.path)).read_bytes)
        fmt = self.config.format
        if fmt == "concat":
            return data
        if fmt == "csv":
            return data if data.endswith(b"\n") else data + b"\n"
        text = data.strip()
        try:
            value = json.loads(text)
        except ValueError as e:
            raise Permanent(f"steps[{self.index}] collect: the message is not one JSON value: {e}") from None
        if b"\n" in text or b"\r" in text:  # pretty-printed: one line in the file
            text = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
        return text + b"\n"

    # -- writing ------------------------------------------------------------------
    def _write(self, batch: _Batch) -> None:
        batch.writing = True
        self._detach(batch)
        if batch.ready is not None:
            if not batch.ready.done():
                batch.ready.set_result(None)
            return
        task = asyncio.create_task(self._deliver(batch), name="collect")
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _deliver(self, batch: _Batch) -> None:
        key = batch.key
        hooks = self._hooks if batch.ready is not None else None
        claimed: dict[str, Item] | None = None
        written = False
        try:
            if hooks is not None:
                assert batch.ready is not None
                await batch.ready
                claimed = await hooks.claim(batch.members)
                for id in [i for i in batch.records if i not in claimed]:  # settled without the file
                    batch.size -= len(batch.records.pop(id))
                    batch.members.pop(id, None)
                if not batch.records:
                    return
            members = tuple(m for m in batch.expected if m in batch.records) if batch.expected else tuple(batch.records)
            key = key or stable_id(self.manifests.flow if self.manifests else "", "collect", members)
            name = batch.name or self._name(batch, key, len(members))
            if batch.expected and members != batch.expected:
                log.warning(
                    "batch %s: %d of its %d messages came back; written with those",
                    name,
                    len(members),
                    len(batch.expected),
                )
            if members != batch.expected:
                await self._manifest(key, name, members, OPEN)
            payload = await self._payload(batch, members, key, name)
            try:
                await (hooks.send(payload) if hooks is not None else self._send(payload))
            finally:
                payload.body.release()
            await self._manifest(key, name, members, WRITTEN)
            written = True
            if hooks is not None:
                assert claimed is not None
                await hooks.written(batch.members, claimed)
                await self._forget(key)  # its messages are all delivered in the ledger now
            batch.done.set_result(None)
        except BaseException as e:
            if (isinstance(e, Permanent) or getattr(e, "final", False)) and key is not None:
                with contextlib.suppress(Exception):  # the batch is given up: its messages may form new ones
                    await self._forget(key)
            if hooks is not None:
                if not batch.writing:  # stopped before it was due: it takes no more messages
                    batch.writing = True
                    self._detach(batch)
                if not written:
                    await asyncio.shield(hooks.failed(batch.members, claimed, e))
            if not batch.done.done():
                batch.done.set_exception(e)
                batch.done.exception()  # retrieved: every member may have left already
            if isinstance(e, asyncio.CancelledError):
                raise
            return
        try:
            await self._sweep(key)
        except Exception as e:  # kept for the next sweep; nothing depends on it now
            log.warning("dropping written batch manifests failed: %s", e)

    def _name(self, batch: _Batch, key: str, count: int) -> str:
        start = datetime.fromtimestamp(batch.start, self.zone)
        flow = self.manifests.flow if self.manifests else ""
        out = []
        for literal, fld, spec in self._parts:
            out.append(literal)
            if fld == "batch_start":
                out.append(start.strftime(spec))
            elif fld == "count":
                out.append(format(count, spec))
            elif fld:
                out.append(format(key if fld == "id" else flow, spec))
        return "".join(out)

    async def _payload(self, batch: _Batch, members: tuple[str, ...], key: str, name: str) -> Payload:
        """The batch's file, built in the spool (on disk past its threshold)."""
        cfg = self.config
        records = [batch.records[m] for m in members]

        def build() -> Body:
            w = self.spool.writer()
            try:
                if cfg.header is not None:
                    w.write(cfg.header.encode() + b"\n")
                piece: list[bytes] = []
                size = 0
                for r in records:
                    piece.append(r)
                    size += len(r)
                    if size >= PIECE:
                        w.write(b"".join(piece))
                        piece, size = [], 0
                if piece:
                    w.write(b"".join(piece))
                return w.finish()
            except BaseException:
                w.abort()
                raise

        total = batch.size
        body = build() if total <= self.spool.threshold else await asyncio.to_thread(build)
        return Payload(
            id=key,
            flow=self.manifests.flow if self.manifests else "",
            source_instance=self._origin[0],
            source_type=self._origin[1],
            body=body,
            name=name,
            content_type=CONTENT_TYPES[cfg.format],
            received_at=utc_iso(datetime.fromtimestamp(batch.start, UTC)),
            lineage=({"step": self.index, "kind": "collect", "count": len(members), "members": list(members)},),
        )

    # -- manifests ----------------------------------------------------------------
    async def _load(self) -> None:
        m = self.manifests
        if m is None:
            return
        for key, p in (await m.store.progress_of(m.flow, m.target)).items():
            doc: dict[str, Any] = json.loads(p.mark)
            self._remember(key, doc["name"], tuple(doc["members"]), p.position)
        for key in [k for k, (_, _, state) in self._recorded.items() if state == WRITTEN]:
            await self._sweep(None, only=key)

    def _remember(self, key: str, name: str, members: tuple[str, ...], state: int) -> None:
        old = self._recorded.get(key)
        if old is not None:
            for id in old[1]:
                self._member.pop(id, None)
        self._recorded[key] = (name, members, state)
        for id in members:
            self._member[id] = (key, state)

    async def _manifest(self, key: str, name: str, members: tuple[str, ...], state: int) -> None:
        m = self.manifests
        if m is not None:
            mark = json.dumps({"name": name, "members": list(members)}, separators=(",", ":"))
            await m.store.set_progress(m.flow, key, m.target, Progress(mark, state))
        self._remember(key, name, members, state)

    async def _forget(self, key: str) -> None:
        old = self._recorded.pop(key, None)
        if old is not None:
            for id in old[1]:
                self._member.pop(id, None)
        m = self.manifests
        if m is not None:
            await m.store.drop_progress(m.flow, key, m.target)

    async def _sweep(self, current: str | None, only: str | None = None) -> None:
        """Drop written manifests whose messages the ledger has all ``delivered`` (but ``current``'s,
        whose members are being recorded right now)."""
        m = self.manifests
        if m is None:
            return
        keys = [only] if only else [k for k, (_, _, s) in self._recorded.items() if s == WRITTEN and k != current]
        for key in keys:
            _, members, _ = self._recorded[key]
            items = await m.store.get_many(m.flow, list(members))
            if all(i.state == "delivered" for i in items.values()) and len(items) == len(members):
                await self._forget(key)

    async def close(self) -> None:
        """Stop the timers and the writes under way (their messages go back to the broker)."""
        for batch in [self._open, *self._again.values()]:
            if batch is not None:
                self._discard(batch)
        for t in list(self._writes):
            t.cancel()
        await asyncio.gather(*self._writes, return_exceptions=True)
        if self._loaded is not None:
            self._loaded.cancel()
