"""A collect flow's messages taken in batches: no task, claim, record or ack per message.

A broker flow whose first step is ``collect`` and that has one target hands each message
straight to the step's current batch (the flow's slots still bound how many are held). Each
batch is one delivery of the flow: once due, its messages are claimed in one state-store write,
its file goes to the target with the flow's retries, and then its messages are recorded
``delivered`` in one durable write, acked together and recorded settled in one write (see
:mod:`conveyor.steps.collect` for the manifest kept around the file).

A message the batch path does not take (one whose batch's file is in place already, one that is
not a record of the file's format, every message while traces are sent) goes the per-message
way, which handles those cases.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine, Sequence
from typing import TYPE_CHECKING, Any

from conveyor.config.base import MessageSourceConfig
from conveyor.errors import Permanent
from conveyor.interfaces import AcksMany, Inbound
from conveyor.payload.payload import Payload
from conveyor.redact import redact
from conveyor.state.base import Item
from conveyor.steps.collect import Collector, NotWritten

if TYPE_CHECKING:
    from conveyor.flows.runner import FlowRunner
    from conveyor.steps import StepsTarget

log = logging.getLogger("conveyor.flow")


class BatchIntake:
    """The batch path of one collect flow (the :class:`~conveyor.steps.collect.BatchHooks`)."""

    def __init__(
        self, runner: FlowRunner, steps: StepsTarget, collector: Collector, config: MessageSourceConfig
    ) -> None:
        self.runner = runner
        self.deliverer = runner.deliverer
        self.store = runner.deliverer.store
        self.status = runner.status
        self.flow = runner.name
        self.steps = steps
        self.collector = collector
        self.config = config
        self._started: dict[str, float] = {}
        """Claimed member id -> when its batch was claimed."""
        self._held: dict[int, bool] = {}
        """id() of each message held -> whether it still holds its flow slot (it holds a tail unit too)."""
        collector.batched(self)

    async def add(self, inbound: Inbound) -> bool:
        """Put the message in a batch (or hand it back when the flow is stopping): True; False
        when the per-message path is to deliver it."""
        runner = self.runner
        gate = runner.gate
        if gate is not None and gate.check() is not None and not await gate.wait(runner.stop):
            await inbound.nack(True)
            return True
        if not await runner._tail.acquire():
            await inbound.nack(True)  # stopping: straight back to the broker
            return True
        if not await runner._slots.acquire():
            runner._tail.release()
            await inbound.nack(True)
            return True
        payload = inbound.payload
        try:
            await self.collector.ready()
            if self.collector.written(payload.id):
                raise _Single
            record = await self.collector.record(payload)
        except Exception:  # _Single, Permanent, a failed load: the per-message path reports it
            runner._slots.release()
            runner._tail.release()
            return False
        payload.body.release()  # the record holds its bytes now
        self._held[id(inbound)] = True
        self.collector.put(payload, record, inbound)
        return True

    # -- the hooks the collect step calls ---------------------------------------------
    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run a batch's work among the flow's deliveries (a drain waits for it)."""
        task = asyncio.create_task(self._guard(work), name=f"{self.flow}:collect")
        self.runner._tasks.add(task)
        task.add_done_callback(self.runner._tasks.discard)

    async def _guard(self, work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self.runner.errors += 1
            log.warning("collect batch: %s", redact(str(e)), extra={"flow": self.flow})
            self.status.flow_error(self.flow, e)

    async def claim(self, members: dict[str, list[Any]]) -> dict[str, Item]:
        """Claim the batch's messages in one write; settle those the ledger refuses as the
        per-message path does (acked when delivered before, rejected when failed for good)."""
        got = await self.store.claim_many(self.flow, list(members), self.deliverer.lease, takeover=True)
        claimed = {id: item for id, item in got.items() if item is not None}
        refused = [id for id, item in got.items() if item is None]
        if refused:
            known = await self.store.get_many(self.flow, refused)
            await asyncio.gather(*(self._unclaimed(id, members[id], known.get(id)) for id in refused))
        now = time.monotonic()
        for id in claimed:
            self.status.delivery_started(self.flow, id)
            self._started[id] = now
        return claimed

    async def _unclaimed(self, id: str, inbounds: list[Inbound], known: Item | None) -> None:
        try:

            async def complete() -> None:
                await _ack_all(inbounds)

            async def give_up(final: bool) -> None:
                for i in inbounds:
                    await i.nack(not final)

            await self.deliverer.unclaimed(id, complete=complete, give_up=give_up, known=known)
        finally:
            self._free(inbounds)

    async def send(self, payload: Payload) -> None:
        """The batch's file to the target, with the flow's retries and deadline."""
        result = await self.deliverer.send(payload, through=self.steps.after_collect)
        if not result.delivered:
            raise NotWritten(result.error or "failed", result.final)

    async def written(self, members: dict[str, list[Any]], claimed: dict[str, Item]) -> None:
        """Record the messages delivered (one durable write), ack them together, record them settled."""
        ids = list(members)
        inbounds = [i for group in members.values() for i in group]
        self._free_slots(inbounds)  # the target is free for the next batch
        try:
            await self.store.delivered_many(self.flow, ids)
        except BaseException:
            # Not recorded: the messages go back, and come again to a batch marked written.
            await asyncio.shield(self._give_back(members, claimed))
            raise
        try:
            await _ack_all(inbounds)
            await self.store.settled_many(self.flow, ids)
        finally:
            now = time.monotonic()
            for id, group in members.items():
                started = self._started.pop(id, now)
                self.status.delivery_ended(self.flow, id, "delivered", group[0].payload.body.size, now - started)
            self._free(inbounds)

    async def failed(
        self, members: dict[str, list[Any]], claimed: dict[str, Item] | None, error: BaseException
    ) -> None:
        """The file is not in place: each claimed message's attempt recorded as failed (for good
        when the error is final or it was tried ``max_attempts`` times) and it is requeued or
        rejected; on a stop, or before the claim, every message is simply handed back."""
        inbounds = [i for group in members.values() for i in group]
        self._free_slots(inbounds)
        message = redact(str(error) or type(error).__name__)
        if claimed is None or isinstance(error, asyncio.CancelledError):
            if not isinstance(error, asyncio.CancelledError):
                log.warning("a batch of %d messages handed back: %s", len(members), message, extra={"flow": self.flow})
                self.status.flow_error(self.flow, message)
            await self._give_back(members, claimed)
            return
        final_error = isinstance(error, Permanent) or getattr(error, "final", False)
        self.status.flow_error(self.flow, message)

        async def one(id: str, group: list[Inbound]) -> None:
            item = claimed.get(id)
            final = final_error
            if item is not None:
                tries = max(item.attempts, max(i.delivery_count or 0 for i in group))
                final = final or tries >= self.config.max_attempts
                await self.store.failed(self.flow, id, message, final=final)
            for i in group:
                await i.nack(not final)
            outcome = "failed" if final else "released"
            self.status.delivery_ended(self.flow, id, outcome, 0, time.monotonic() - self._started.pop(id, 0.0))

        try:
            await asyncio.gather(*(one(id, group) for id, group in members.items()))
        finally:
            self._free(inbounds)

    async def _give_back(self, members: dict[str, list[Any]], claimed: dict[str, Item] | None) -> None:
        """Release the claims and requeue every message (a stop; a failed record)."""
        inbounds = [i for group in members.values() for i in group]
        try:
            if claimed:
                await asyncio.gather(*(self.store.release(self.flow, id) for id in claimed), return_exceptions=True)
            for i in inbounds:
                await i.nack(True)
        except Exception as e:
            log.warning("could not hand a batch back: %s", redact(str(e)), extra={"flow": self.flow})
        finally:
            for id in claimed or ():
                started = self._started.pop(id, None)
                if started is not None:
                    self.status.delivery_ended(self.flow, id, "released", 0, time.monotonic() - started)
            self._free(inbounds)

    def _free_slots(self, inbounds: Sequence[Inbound]) -> None:
        """The target is done with these messages: give back their flow slots (once each)."""
        held, slots = self._held, self.runner._slots
        for i in inbounds:
            if held.get(id(i)):
                held[id(i)] = False
                slots.release()

    def _free(self, inbounds: Sequence[Inbound]) -> None:
        """These messages are settled: give back what they still hold (once each)."""
        held, runner = self._held, self.runner
        for i in inbounds:
            slot = held.pop(id(i), None)
            if slot is None:
                continue
            if slot:
                runner._slots.release()
            runner._tail.release()


class _Single(Exception):
    """The message goes the per-message way."""


async def _ack_all(inbounds: Sequence[Inbound]) -> None:
    """Ack the messages, each source's together where it can (one multiple-ack on RabbitMQ)."""
    groups: dict[int, tuple[AcksMany, list[Any]]] = {}
    singles: list[Inbound] = []
    for i in inbounds:
        if i.acks is not None:
            groups.setdefault(id(i.acks), (i.acks, []))[1].append(i.token)
        else:
            singles.append(i)
    for acks, tokens in groups.values():
        await acks.ack_many(tokens)
    if singles:
        await asyncio.gather(*(i.ack() for i in singles))
