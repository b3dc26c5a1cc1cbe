"""Delivering one payload: claim it in the store, hand it to the target with retries, record
the outcome, then complete it at the source (after action or ack) — in that order, always.

The order is the guarantee: the source-side completion runs only after the target confirmed
and the store recorded ``delivered``. A crash anywhere leaves the item either undelivered
(the source hands it over again) or delivered-but-unsettled (completion is redone, delivery
is not).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from conveyor import traces
from conveyor.errors import ConveyorError, Permanent, describe
from conveyor.flows.slots import target_done
from conveyor.interfaces import Target
from conveyor.payload.payload import Payload
from conveyor.redact import redact
from conveyor.state.base import Item, StateStore, TargetItem
from conveyor.status import StatusBoard
from conveyor.supervisor import Backoff, retrying

log = logging.getLogger("conveyor.flow")


@dataclass(frozen=True)
class Outcome:
    """How a delivery ended."""

    delivered: bool
    final: bool = False
    """For a failure: no more automatic attempts (permanent error, or attempts used up)."""
    error: str | None = None
    no_target: bool = False
    """Delivered to nothing: no target of the flow's ``targets:`` list matched it."""


@dataclass(frozen=True)
class Leg:
    """One target of a flow with a ``targets:`` list, at run time."""

    name: str
    target: Target
    when: Matcher | None = None
    timeout: float | None = None
    """The deliverer's own deadline per try (None: the target keeps its own, or there is none)."""


class Matcher(Protocol):
    """A target's ``when:``."""

    def matches(self, payload: Payload) -> bool:
        """Whether the payload goes to this target."""
        ...


class Deliverer:
    """Delivers payloads of one flow to its target, with the flow's retry policy."""

    def __init__(
        self,
        flow: str,
        target: Target,
        store: StateStore,
        status: StatusBoard,
        *,
        attempts: int,
        backoff: Backoff,
        timeout: float | None,
        lease: float,
    ) -> None:
        self.flow = flow
        self.target = target
        self.store = store
        self.status = status
        self.attempts = attempts
        self.backoff = backoff
        self.timeout = timeout
        self.lease = lease

    def all_targets(self) -> list[Target]:
        """Every target this deliverer sends to."""
        return [self.target]

    async def send(
        self, payload: Payload, leg: Leg | None = None, *, through: Callable[[Payload], Awaitable[None]] | None = None
    ) -> Outcome:
        """Try the target (``leg``'s, of a ``targets:`` list) up to ``attempts`` times; Permanent
        errors end at once. ``through``: deliver by this call rather than the target's ``deliver``
        (a collect step's file, past the step)."""
        extra: dict[str, Any] = {"flow": self.flow, "payload_id": payload.id}
        target, timeout, to = self.target, self.timeout, ""
        if leg is not None:
            target, timeout, to = leg.target, leg.timeout, f" to {leg.name}"
            extra["target"] = leg.name
        name = payload.name or payload.id
        if self.attempts < 1:
            return Outcome(False, False, "no attempts configured")

        async def once() -> None:
            started = time.monotonic()
            if timeout:
                async with asyncio.timeout(timeout):
                    await (through or target.deliver)(payload)
            else:
                await (through or target.deliver)(payload)
            log.debug("delivered %s%s in %.3fs", name, to, time.monotonic() - started, extra=extra)

        def retry(e: Exception, n: int, delay: float) -> None:
            msg = redact(_describe(e))
            log.warning(
                "delivery of %s%s failed (attempt %d of %d): %s; retrying in %.1fs",
                name,
                to,
                n,
                self.attempts,
                msg,
                delay,
                extra=extra,
            )
            self.status.flow_error(self.flow, f"{leg.name}: {msg}" if leg is not None else msg)
            fs = self.status.flows.get(self.flow)
            if fs is not None:
                fs.retried += 1
            if leg is not None:
                self.status.target_retried(self.flow, leg.name)

        with traces.span("deliver", payload, "target", leg.name if leg is not None else None) as span:
            try:
                await retrying(
                    once,
                    self.backoff,
                    attempts=self.attempts,
                    what="delivery",
                    retry_if=lambda e: not isinstance(e, Permanent),
                    on_retry=retry,
                )
            except Permanent as e:
                msg = redact(str(e))
                log.error("delivery of %s%s failed for good: %s", name, to, msg, extra=extra)
                span.outcome("failed", msg)
                return Outcome(False, True, msg)
            except Exception as e:
                msg = redact(_describe(e))
                log.error("delivery of %s%s failed after %d attempts: %s", name, to, self.attempts, msg, extra=extra)
                span.outcome("failed", msg)
                return Outcome(False, False, msg)
            span.outcome("delivered")
        return Outcome(True)

    async def deliver(self, payload: Payload, item: Item) -> Outcome:
        """Send a claimed payload (``item``: its claim) and, once the target confirmed, record it ``delivered``."""
        result = await self.send(payload)
        if result.delivered:
            # The body is no longer needed and the target is free for the next payload; the
            # durable record and the source-side completion finish beside it.
            payload.body.release()
            target_done()
            await self.store.delivered(self.flow, payload.id)
        return result

    async def process(
        self,
        payload: Payload,
        info: dict[str, Any],
        *,
        complete: Callable[[], Awaitable[None]],
        give_up: Callable[[bool], Awaitable[None]],
        max_attempts: int | None = None,
        broker_count: int | None = None,
        settle_after_complete: bool = True,
        claimed: Item | None = None,
    ) -> str:
        """The whole life of one payload. Returns delivered | failed | skipped | released.

        ``complete`` is the source-side completion (after action, ack); ``give_up(final)``
        returns the item to its source (requeue) or, when final, rejects / sets it aside.
        ``max_attempts`` (broker sources) turns a non-final failure into a final one once
        the item was tried that many times.
        """
        # A broker hands a message to one consumer at a time (max_attempts marks a broker
        # source): a lease left on it by a dead replica must not make us requeue it in a loop.
        item = claimed or await self.store.claim(
            self.flow, payload.id, info, self.lease, takeover=max_attempts is not None
        )
        if item is None:
            return await self.unclaimed(
                payload.id, complete=complete, give_up=give_up, settle_after_complete=settle_after_complete
            )
        self.status.delivery_started(self.flow, payload.id)
        started = time.monotonic()
        outcome = "released"
        try:
            result = await self.deliver(payload, item)
            if result.delivered:
                outcome = "no_target" if result.no_target else "delivered"
                await complete()
                if settle_after_complete:
                    await self.store.settled(self.flow, payload.id)
                return outcome
            final = result.final
            tries = max(item.attempts, broker_count or 0)
            if max_attempts is not None and not final and tries >= max_attempts:
                final = True
            if max_attempts is None:
                final = True  # file sources: the flow's retry policy is the whole budget
            await self.store.failed(self.flow, payload.id, result.error or "failed", final=final)
            self.status.flow_error(self.flow, result.error or "failed")
            outcome = "failed" if final else "released"
            await give_up(final)
            return outcome
        except asyncio.CancelledError:
            # Shutdown deadline passed: give the item back so it is delivered after restart.
            if outcome == "released":
                await asyncio.shield(self._release(payload, give_up))
            raise
        finally:
            self.status.delivery_ended(self.flow, payload.id, outcome, payload.body.size, time.monotonic() - started)

    async def unclaimed(
        self,
        id: str,
        *,
        complete: Callable[[], Awaitable[None]],
        give_up: Callable[[bool], Awaitable[None]],
        settle_after_complete: bool = True,
        known: Item | None = None,
    ) -> str:
        """The claim of ``id`` was refused: finish a lost completion, set a failed item aside, or
        leave it to the replica that holds it. Returns "skipped". ``known``: its row, if just read."""
        if known is None:
            known = (await self.store.get_many(self.flow, [id])).get(id)
        if known is not None and known.state == "delivered":
            await complete()  # delivered before, its completion was lost: finish it now
            if settle_after_complete:
                await self.store.settled(self.flow, id)
            return "skipped"
        if known is not None and known.state == "failed":
            await give_up(True)
            return "skipped"
        await give_up(False)  # another replica holds it
        return "skipped"

    async def _release(self, payload: Payload, give_up: Callable[[bool], Awaitable[None]]) -> None:
        try:
            await self.store.release(self.flow, payload.id)
            await give_up(False)
        except Exception as e:
            log.warning(
                "could not release %s: %s",
                payload.id,
                redact(str(e)),
                extra={"flow": self.flow, "payload_id": payload.id},
            )


def _logged(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("recording a target's outcome failed: %s", redact(str(task.exception())))


def _describe(e: BaseException) -> str:
    if isinstance(e, TimeoutError) and not isinstance(e, ConveyorError):
        return "timed out"
    return describe(e)


class FanOut(Deliverer):
    """Delivers each payload of a flow with a ``targets:`` list to every target whose ``when``
    matches it, the targets side by side, each with the flow's retry policy.

    Each target's confirmation is recorded (durably) on its own, so an item that a target
    failed, or that a crash interrupted, is later sent only to the targets that lack it. The
    item is ``delivered`` — and its source-side completion runs — only once every matching
    target has it; a payload no ``when`` matches is ``delivered`` as ``no_target``.
    """

    def __init__(
        self,
        flow: str,
        legs: list[Leg],
        store: StateStore,
        status: StatusBoard,
        *,
        attempts: int,
        backoff: Backoff,
        lease: float,
    ) -> None:
        super().__init__(
            flow, legs[0].target, store, status, attempts=attempts, backoff=backoff, timeout=None, lease=lease
        )
        self.legs = legs
        for leg in legs:
            status.add_target(flow, leg.name)

    def all_targets(self) -> list[Target]:
        """Every target of the flow's ``targets:`` list."""
        return [leg.target for leg in self.legs]

    async def deliver(self, payload: Payload, item: Item) -> Outcome:
        """Send to each matching target that does not have it yet; record each, then the item."""
        legs = [leg for leg in self.legs if leg.when is None or leg.when.matches(payload)]
        if not legs:
            payload.body.release()
            target_done()
            await self.store.delivered(self.flow, payload.id, no_target=True)
            log.info(
                "%s matched no target: settled without a delivery",
                payload.name or payload.id,
                extra={"flow": self.flow, "payload_id": payload.id},
            )
            return Outcome(True, no_target=True)
        have: dict[str, TargetItem] = {}
        if item.updated != item.first_seen:
            # Claimed before (or retried, or taken again after a crash): some targets may have it.
            # A row this claim inserted has no target records yet, and the read is saved.
            have = (await self.store.targets(self.flow, [payload.id])).get(payload.id, {})
        todo = [leg for leg in legs if getattr(have.get(leg.name), "state", None) != "delivered"]
        records: list[asyncio.Task[None]] = []
        remaining, failures = len(todo), 0
        last: list[str] = []

        async def one(leg: Leg) -> Outcome:
            nonlocal remaining, failures
            result = await self.send(payload, leg)
            remaining -= 1
            failures += not result.delivered
            self.status.target_ended(self.flow, leg.name, result.delivered, result.error)
            if result.delivered and remaining == 0 and failures == 0:
                last.append(leg.name)  # the last of all to confirm: recorded with the item, in one write
                return result
            # Recorded at once, not after the others: while a slow target retries, a crash must
            # not send this one the payload again.
            if result.delivered:
                record = self.store.target_delivered(self.flow, payload.id, leg.name)
            else:
                record = self.store.target_failed(self.flow, payload.id, leg.name, result.error or "failed")
            task = asyncio.ensure_future(record)
            task.add_done_callback(_logged)  # a delivery cancelled meanwhile no longer awaits it
            records.append(task)
            return result

        results = await asyncio.gather(*(one(leg) for leg in todo))
        failed = [(leg, r) for leg, r in zip(todo, results, strict=True) if not r.delivered]
        if not failed:
            payload.body.release()
            target_done()
        await asyncio.gather(*records)  # every target's record is on disk before the item's
        if failed:
            error = "; ".join(f"{leg.name}: {r.error or 'failed'}" for leg, r in failed)
            return Outcome(False, any(r.final for _, r in failed), error)
        await self.store.delivered(self.flow, payload.id, targets=last)
        return Outcome(True)
