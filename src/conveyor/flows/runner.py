"""One flow at run time: its source under the supervisor, its deliveries bounded and drained."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from conveyor import traces
from conveyor.config.base import MessageSourceConfig
from conveyor.flows import slots
from conveyor.flows.delivery import Deliverer
from conveyor.flows.intake import IntakeGate
from conveyor.interfaces import Forgets, Inbound, MessageSource, PollsOnDemand, Source, Submit
from conveyor.redact import redact
from conveyor.status import StatusBoard
from conveyor.stopping import StopSignal
from conveyor.supervisor import SOURCE_BACKOFF, supervise

if TYPE_CHECKING:
    from conveyor.flows.collecting import BatchIntake

log = logging.getLogger("conveyor.flow")

TAIL = 4
"""Deliveries whose target confirmed may finish their completion (store record, after action,
ack) beside the next ones: up to TAIL times max_in_flight per flow are under way in all."""


class FlowRunner:
    """Runs one flow until stopped.

    At most ``max_in_flight`` payloads are in delivery at once; a source that has more
    waits (backpressure), so a slow target slows intake instead of filling memory.
    """

    def __init__(
        self,
        name: str,
        *,
        max_in_flight: int,
        status: StatusBoard,
        deliverer: Deliverer,
        on_close: Callable[[], Awaitable[None]],
        files: Callable[[Submit], Source] | None = None,
        messages: tuple[MessageSource, MessageSourceConfig] | None = None,
        gate: IntakeGate | None = None,
        once: float | None = None,
    ) -> None:
        """Give ``files`` (the file source, built around this runner's :meth:`submit`) or
        ``messages`` (a broker consumer and its flow's source config), not both. While ``gate``
        is shut (low disk space), :meth:`submit` waits. With ``once`` (idle seconds, ``run --once``)
        the flow polls its folder once, or consumes until nothing came for that long, delivers what
        it took and ends (see :meth:`run`)."""
        self.name = name
        self.once = once
        self.errors = 0
        """Deliveries that ended in an error, and source errors (``run --once``'s exit code)."""
        self._last_activity = 0.0
        self.gate = gate
        self.status = status
        self.deliverer = deliverer
        self._slots = Capacity(max_in_flight)
        self._tail = Capacity(max_in_flight * TAIL)
        self._tasks: set[asyncio.Task[None]] = set()
        self.stop = StopSignal()
        """The soft stop, handed to the source: set when the flow stops taking work."""
        self._on_close = on_close
        self.message_source: MessageSource | None = None
        self.message_config: MessageSourceConfig | None = None
        self._batches: BatchIntake | None = None
        """A collect flow's batch path (set up at the first message)."""
        self._batches_checked = False
        self.source: Source
        if messages is not None and files is None:
            self.message_source, self.message_config = messages
            self.source = _Consumer(messages[0], self.on_message)
        elif files is not None and messages is None:
            self.source = files(self.submit)
        else:
            raise TypeError(f"flow {name}: give a file source or a message source")

    async def run(self) -> None:
        """Run the source under the supervisor until it returns after the soft stop, or is cancelled."""
        st = self.status.flows[self.name]
        st.state = "running"
        if self.once is not None:
            await self._run_once(self.once)
            return

        def on_error(e: BaseException, delay: float) -> None:
            st.state = "backoff"
            st.retry_at = time.time() + delay
            self.status.flow_error(self.name, e)

        def on_recover() -> None:
            st.state = "running"

        try:
            await supervise(
                f"flow {self.name}",
                lambda: self.source.run(self.stop),
                backoff=SOURCE_BACKOFF,
                on_error=on_error,
                on_recover=on_recover,
                log_extra={"flow": self.name},
                stop=self.stop,
            )
        finally:
            st.state = "stopped"

    async def _run_once(self, idle: float) -> None:
        """``run --once``: take what there is, deliver it, end. No restarts: a source error is
        counted and ends the flow (the next run starts over; the ledger keeps what was done)."""
        st = self.status.flows[self.name]
        try:
            if self.message_source is not None:
                watcher = asyncio.create_task(self._stop_when_idle(idle), name=f"{self.name}:idle")
                try:
                    await self.source.run(self.stop)
                finally:
                    watcher.cancel()
            else:
                run_once = getattr(self.source, "run_once", None)
                await (run_once(self.stop) if run_once is not None else self.source.run(self.stop))
            await self.finish()
            st.state = "done"
        except asyncio.CancelledError:
            st.state = "stopped"
            raise
        except Exception as e:
            self.errors += 1
            st.state = "failed"
            self.status.flow_error(self.name, e)
            log.error("%s", redact(str(e) or type(e).__name__), extra={"flow": self.name})
            self.stop_intake()
            await self.finish()

    async def _stop_when_idle(self, idle: float) -> None:
        """Stop intake once no message came and none was in delivery for ``idle`` seconds."""
        loop = asyncio.get_running_loop()
        self._last_activity = loop.time()
        instance = self.message_config.instance if self.message_config is not None else None
        while True:
            # Waits on the flow's stop signal, so a stop ends the watch at once.
            if await self.stop.wait(min(0.25, idle / 4) if idle > 0 else 0.05):
                return
            connected = self.status.instances.get(instance) if instance else None
            # The idle time counts from the connection: a slow login must not pass for an empty queue.
            if self._tasks or connected is None or connected.state != "up":
                self._last_activity = loop.time()
            elif loop.time() - self._last_activity >= idle:
                log.info("nothing came for %gs: done", idle, extra={"flow": self.name})
                self.stop_intake()
                return

    async def finish(self) -> None:
        """Wait for every delivery under way, however long its retries take."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    def forgotten(self, id: str) -> None:
        """Told of an id the ledger API forgot: a file source then lists that file afresh (a broker
        needs no telling: it offers the message again, or it is gone)."""
        if isinstance(self.source, Forgets):
            self.source.forgotten(id)

    def poll_now(self) -> bool:
        """Ask a file source to list at once; False for a source that does not poll (a broker)."""
        if isinstance(self.source, PollsOnDemand):
            self.source.poll_now()
            return True
        return False

    async def submit(self, key: str, work: Callable[[], Awaitable[None]]) -> bool:
        """Start one delivery when a slot is free; False once the flow is stopping (also when
        the stop comes while it waits for a slot)."""
        gate = self.gate
        if gate is not None and gate.check() is not None and not await gate.wait(self.stop):
            return False
        if not await self._tail.acquire():
            return False
        if not await self._slots.acquire():
            self._tail.release()
            return False
        task = asyncio.create_task(self._guard(key, work), name=f"{self.name}:{key}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _guard(self, key: str, work: Callable[[], Awaitable[None]]) -> None:
        freed = False

        def free() -> None:
            nonlocal freed
            if not freed:
                freed = True
                self._slots.release()

        slots.bind(free)  # this task's own context: create_task copied it
        try:
            await work()
        except asyncio.CancelledError:
            raise
        except Exception as e:
            # The item stays as the store has it; the source offers it again later.
            self.errors += 1
            log.warning("%s: %s", key, redact(str(e)), extra={"flow": self.name, "payload_id": key})
            self.status.flow_error(self.name, e)
        finally:
            free()
            self._tail.release()

    async def on_message(self, inbound: Inbound) -> None:
        """The emit callback for broker sources."""
        assert self.message_config is not None
        cfg = self.message_config
        self._last_activity = asyncio.get_running_loop().time()
        if not self._batches_checked:
            self._batches_checked = True
            self._batches = self._batch_intake()
        batches = self._batches
        if batches is not None and await batches.add(inbound):
            return

        async def give_up(final: bool) -> None:
            await inbound.nack(not final)

        payload = inbound.payload
        arrived = time.time() if traces.enabled() else 0.0

        async def work() -> None:
            try:
                with traces.payload_span(payload.id, self.name, payload.name, payload.body.size, payload) as root:
                    traces.received(payload, arrived)
                    outcome = await self.deliverer.process(
                        payload,
                        {"name": payload.name},
                        complete=inbound.ack,
                        give_up=give_up,
                        max_attempts=cfg.max_attempts,
                        broker_count=inbound.delivery_count,
                    )
                    root.outcome(outcome)
            finally:
                payload.body.release()

        if not await self.submit(inbound.payload.id, work):
            await inbound.nack(True)  # stopping: hand it straight back to the broker

    def _batch_intake(self) -> BatchIntake | None:
        """The batch path, for a collect flow with one target (traces record each message on
        the per-message path, so a flow that sends them keeps it)."""
        from conveyor.steps import StepsTarget

        d = self.deliverer
        if type(d) is not Deliverer or not isinstance(d.target, StepsTarget) or traces.enabled():
            return None
        collector = d.target.collector
        if collector is None or self.message_config is None:
            return None
        from conveyor.flows.collecting import BatchIntake

        return BatchIntake(self, d.target, collector, self.message_config)

    def stop_intake(self) -> None:
        """The soft stop: the source takes nothing new and ``submit`` refuses (a source blocked
        in it gets False at once and hands its item back)."""
        self._tail.close()
        self._slots.close()
        self.stop.set()
        for target in self.deliverer.all_targets():
            stopping = getattr(target, "stopping", None)
            if stopping is not None:
                stopping()  # a collect step writes its partial batch now rather than after max_wait

    async def drain(self, timeout: float) -> None:  # noqa: ASYNC109 (a deadline, not a cancel scope)
        """Two-phase stop: take no new work and let deliveries finish for ``timeout`` seconds,
        then cancel what remains (those items are released for redelivery)."""
        self.stop_intake()
        pending = set(self._tasks)
        if pending:
            log.info("waiting up to %.0fs for %d deliveries", timeout, len(pending), extra={"flow": self.name})
            _, still = await asyncio.wait(pending, timeout=timeout)
            for t in still:
                t.cancel()
            if still:
                log.warning(
                    "%d deliveries did not finish in time; released for redelivery",
                    len(still),
                    extra={"flow": self.name},
                )
                await asyncio.wait(still, timeout=10.0)

    def abort(self) -> None:
        """Stop waiting: cancel every delivery now (each releases its item for redelivery)."""
        self.stop_intake()
        for t in list(self._tasks):
            t.cancel()

    async def close(self) -> None:
        """Release the target."""
        await self._on_close()

    @property
    def in_flight(self) -> int:
        """Deliveries under way."""
        return len(self._tasks)


class _Consumer:
    """A broker consumer bound to its flow's intake."""

    def __init__(self, source: MessageSource, emit: Callable[[Inbound], Awaitable[None]]) -> None:
        self._source = source
        self._emit = emit

    async def run(self, stop: StopSignal) -> None:
        """Consume until the flow stops, the task is cancelled or the connection drops."""
        await self._source.run(self._emit, stop)


class Capacity:
    """A counting semaphore that can be closed: once closed, :meth:`acquire` returns False at
    once and wakes every waiter with False, so a source blocked on a full flow sees the stop
    without a second waiter beside each acquire."""

    __slots__ = ("_free", "_waiters", "closed")

    def __init__(self, n: int) -> None:
        self._free = n
        self._waiters: collections.deque[asyncio.Future[bool]] = collections.deque()
        self.closed = False

    async def acquire(self) -> bool:
        """Take one unit, waiting for one; False (nothing taken) once closed."""
        if self.closed:
            return False
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return True
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.result():
                self.release()  # granted in the same turn as the cancel: pass it on
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        """Give one unit back, to the longest waiter if there is one."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(True)
                return
        self._free += 1

    def close(self) -> None:
        """Refuse every acquire from now on, the waiting ones included."""
        self.closed = True
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(False)
