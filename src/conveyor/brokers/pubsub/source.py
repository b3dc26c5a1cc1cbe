"""Streaming pull from a Pub/Sub subscription, bridged from the client library's threads into asyncio.

How the two sides meet:

- The library calls our callback on its scheduler's thread pool (bounded). The callback only
  posts the message to the event loop (``call_soon_threadsafe``) and returns, so the pool
  never blocks and the library's lease management (its own leaser thread) keeps running.
- The loop-side queue is bounded by flow control: the library hands us at most
  ``max_messages`` / ``max_bytes`` not-yet-settled messages, and holds the rest (leased) itself.
  ``emit`` blocking (backpressure) therefore stops intake after that many, with no unbounded buffer.
- Leases of every message handed to us are extended by the library until it is acked or nacked,
  up to ``max_lease_duration``, so a slow delivery is not redelivered meanwhile.
- With message ordering, the library hands over the next message of an ordering key only
  after the previous one is settled; the queue is FIFO and ``run`` emits in arrival order.

Stream errors: the library reopens the stream once after a retryable error (Pub/Sub closes
streams routinely); a second retryable error within the instance ``timeout`` ends the stream
and ``run`` raises Transient, so the supervisor backs off and /status shows it. NotFound,
PermissionDenied and credential errors end it at once (Permanent).

Settling after the stream ended (the flow's stop, an error): the library's dispatcher is gone,
so ack/nack go out as unary Acknowledge / ModifyAckDeadline(0) calls with the message's ack id.
Leases are no longer extended then: an ack that arrives after the lease lapsed is ignored by
Pub/Sub and the message comes again, with the same id, which the state store skips.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import grpc  # type: ignore[import-untyped]
from google.api_core import exceptions as gexc
from google.cloud import pubsub_v1

from conveyor._compat import pubsub as pubsub_compat
from conveyor.brokers.pubsub.config import PubsubSourceConfig
from conveyor.brokers.pubsub.errors import map_error, short_error
from conveyor.errors import ConveyorError, NotFound, Transient
from conveyor.interfaces import Inbound
from conveyor.payload.body import Body
from conveyor.payload.payload import Payload
from conveyor.payload.timestamps import utc_iso
from conveyor.stopping import StopSignal

if TYPE_CHECKING:
    from conveyor.brokers.pubsub.instance import PubsubInstance

log = logging.getLogger("conveyor.pubsub")
_END = object()

PARK_SECONDS = 600
"""How long a message that failed for good stays away, on a subscription without a dead-letter
policy, before Pub/Sub offers it again (Pub/Sub's longest ack deadline)."""
ACK_CHUNK = 1000
"""Ack ids per unary Acknowledge call (a request stays well under Pub/Sub's 512 KB limit)."""


class _Handoff:
    """Library threads put, the event loop gets, in order. Unbounded in type, bounded by flow control.

    A thread wakes the loop only when the loop may be waiting (one ``call_soon_threadsafe`` per
    burst, not per message): under load the loop drains many messages per wake-up.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._items: collections.deque[Any] = collections.deque()
        self._ready = asyncio.Event()
        self._signalled = False

    def put(self, item: Any) -> None:
        """From any thread; raises RuntimeError when the loop is closed."""
        self._items.append(item)
        if not self._signalled:
            self._signalled = True
            self._loop.call_soon_threadsafe(self._ready.set)

    async def get(self) -> Any:
        """The next item, waiting for one."""
        while True:
            if self._items:
                return self._items.popleft()
            self._signalled = False
            if self._items:  # appended between the check and the reset: no wake-up was scheduled
                continue
            self._ready.clear()
            if self._items:
                continue
            await self._ready.wait()

    def empty(self) -> bool:
        """Nothing waiting."""
        return not self._items

    def get_nowait(self) -> Any:
        """The next item; IndexError when empty."""
        return self._items.popleft()

    def put_nowait(self, item: Any) -> None:
        """From the loop."""
        self._items.append(item)
        self._ready.set()


class _Stream:
    """One streaming pull: its future, whether it still settles messages, and its error history."""

    def __init__(self, source: PubsubSource, loop: asyncio.AbstractEventLoop) -> None:
        self.source = source
        self.loop = loop
        self.queue = _Handoff(loop)  # bounded by flow control, see module doc
        self.future: Any = None
        self.open = True
        self.last_error = 0.0
        self.last_exc: BaseException | None = None
        self._lock = threading.Lock()

    # -- library threads ------------------------------------------------------------------------
    def on_message(self, message: Any) -> None:
        """The subscriber callback: hand over to the loop and return at once."""
        try:
            self.queue.put(message)
        except RuntimeError:  # the loop is closed: give the message back now
            message.nack()

    def on_done(self, _future: Any) -> None:
        self.open = False
        with contextlib.suppress(RuntimeError):
            self.queue.put(_END)

    def should_recover(self, error: BaseException) -> bool:
        """Reopen after one retryable error; a second one within ``timeout`` gives up to the supervisor."""
        if isinstance(error, grpc.RpcError):
            error = gexc.from_grpc_error(error)  # type: ignore[no-untyped-call]
        self.last_exc = error
        now = time.monotonic()
        with self._lock:
            recent = now - self.last_error < self.source.instance.config.timeout
            self.last_error = now
        inst = self.source.instance
        text = short_error(error)
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(inst.ctx.status.flow_error, self.source.flow, f"stream error: {text}")
        if recent:
            log.warning("%s: streaming pull failed again (%s): ending the stream for a backoff", inst.name, text)
            return False
        log.info("%s: streaming pull interrupted (%s): reopening", inst.name, text)
        return True


class PubsubSource:
    """A streaming-pull consumer on one subscription for one flow."""

    def __init__(self, instance: PubsubInstance, flow: str, cfg: PubsubSourceConfig) -> None:
        self.instance = instance
        self.flow = flow
        self.cfg = cfg
        self.path = instance.subscription_path(cfg.subscription)
        self._streams: set[_Stream] = set()
        self._stopping = False
        self.exactly_once = False
        self.dead_letter = False
        self.ack_deadline = 10

    async def run(self, emit: Callable[[Inbound], Awaitable[None]], stop: StopSignal) -> None:
        """Pull and emit until cancelled, ``stop`` is set or the stream fails (then Transient/Permanent)."""
        if stop.is_set():
            return  # a stopped flow stays stopped
        inst = self.instance
        self._stopping = False
        client = await inst.subscriber()
        try:
            if self.cfg.create_subscription is not None:
                await self._ensure_subscription(client)
            sub = await inst.call(client.get_subscription, request={"subscription": self.path}, path=self.path)
        except ConveyorError as e:
            self._report(e)
            raise
        self.exactly_once = bool(sub.enable_exactly_once_delivery)
        self.dead_letter = bool(sub.dead_letter_policy.dead_letter_topic)
        self.ack_deadline = max(10, int(sub.ack_deadline_seconds or 10))
        stream = _Stream(self, asyncio.get_running_loop())
        self._streams.add(stream)
        withdraw: Callable[[], None] | None = None
        try:
            stream.future = self._subscribe(client, stream)
            stream.future.add_done_callback(stream.on_done)
            withdraw = stop.on_set(self._stop_intake)  # the stream exists now: a stop can end it
            inst.report(None)
            log.info("%s: pulling %s for flow %s", inst.name, self.path, self.flow)
            while True:
                item = await stream.queue.get()
                if item is _END:
                    break
                if self._stopping:
                    await self._release(stream, item)
                    continue
                await emit(self._inbound(stream, item))
        finally:
            if withdraw is not None:
                withdraw()
            self._streams.discard(stream)
            stream.open = False
            if stream.future is not None and not stream.future.done():
                stream.future.cancel()  # non-blocking: the library shuts down in its own thread
            await self._release_queued(stream)
        self._raise_stream_end(stream)

    def _subscribe(self, client: Any, stream: _Stream) -> Any:
        flow_control = pubsub_v1.types.FlowControl(
            max_messages=self.cfg.max_messages,
            max_bytes=self.cfg.max_bytes,
            max_lease_duration=int(self.cfg.max_lease_duration),
            # Leases are extended in steps of the subscription's ack deadline (the library's default is 60 s):
            # after a crash, what we held comes back after that deadline, as the subscription promises.
            max_duration_per_lease_extension=self.ack_deadline,
        )
        request = {"subscription": self.path}
        return pubsub_compat.streaming_pull(
            client,
            self.path,
            flow_control,
            stream.on_message,
            should_recover=stream.should_recover,
            probe=lambda: self.instance.call(client.get_subscription, request=request, retry=None, path=self.path),
            interval=self.instance.config.timeout / 2,
        )

    def _raise_stream_end(self, stream: _Stream) -> None:
        future = stream.future
        if future is None or not future.done() or self._stopping or future.cancelled():
            return
        error = future.exception()
        if error is None:
            return
        if type(error) is Exception and not any(error.args):
            # The library wraps "no exception" as Exception(None) when a reopen fails: use the stream's last error.
            error = stream.last_exc or Transient("streaming pull ended unexpectedly")
        err = map_error(self.instance.name, error, path=self.path)
        if isinstance(err, NotFound) and self.cfg.create_subscription is not None:
            # The subscription vanished under us (an emulator restart): the next run re-creates it.
            err = Transient(f"subscription disappeared: {err.message}", instance=self.instance.name, path=self.path)
        self._report(err)
        raise err from None

    def _report(self, err: ConveyorError) -> None:
        """A missing subscription is the flow's problem (the server answered); anything else the instance's."""
        if isinstance(err, NotFound):
            self.instance.report(None)
            self.instance.ctx.status.flow_error(self.flow, err)
        else:
            self.instance.report(err)

    def _inbound(self, stream: _Stream, message: Any) -> Inbound:
        attrs = dict(message.attributes)
        meta = {
            "id": message.message_id,
            "attributes": attrs,
            "publish_time": utc_iso(message.publish_time),
            "ordering_key": message.ordering_key or None,
            "delivery_attempt": message.delivery_attempt,
        }
        payload = Payload(
            id=message.message_id,
            flow=self.flow,
            source_instance=self.instance.name,
            source_type="pubsub",
            body=Body.from_bytes(message.data),
            name=_safe_name(attrs.get("name")),
            message=meta,
            content_type=attrs.get("content_type") or attrs.get("content-type") or "application/octet-stream",
        )

        async def ack() -> None:
            await self._ack(stream, message)

        async def nack(requeue: bool) -> None:
            await self._nack(stream, message, requeue)

        return Inbound(
            payload=payload,
            ack=ack,
            nack=nack,
            delivery_count=message.delivery_attempt,
            acks=self,
            token=(stream, message),
        )

    async def ack_many(self, tokens: Sequence[Any]) -> None:
        """Ack several deliveries together: on the stream, the library sends the acks of a moment
        in one request (exactly-once: their confirmations awaited together); once the stream is
        gone, one Acknowledge call per ACK_CHUNK messages."""
        gone = [m.ack_id for s, m in tokens if not s.open]
        live = [m for s, m in tokens if s.open]
        if self.exactly_once and live:
            results = await asyncio.gather(
                *(asyncio.wrap_future(m.ack_with_response()) for m in live), return_exceptions=True
            )
            errors = [r for r in results if isinstance(r, BaseException)]
            if errors:
                raise map_error(self.instance.name, errors[0], path=self.path) from None
        else:
            for m in live:
                m.ack()
        if gone:
            client = await self.instance.subscriber()
            for i in range(0, len(gone), ACK_CHUNK):
                await self.instance.call(
                    client.acknowledge, subscription=self.path, ack_ids=gone[i : i + ACK_CHUNK], path=self.path
                )

    async def _ack(self, stream: _Stream, message: Any) -> None:
        if not stream.open:
            client = await self.instance.subscriber()
            await self.instance.call(
                client.acknowledge, subscription=self.path, ack_ids=[message.ack_id], path=self.path
            )
        elif self.exactly_once:
            # Only exactly-once subscriptions confirm acks; there, a failed ack means a redelivery.
            try:
                await asyncio.wrap_future(message.ack_with_response())
            except Exception as e:
                raise map_error(self.instance.name, e, path=self.path) from None
        else:
            message.ack()

    async def _nack(self, stream: _Stream, message: Any, requeue: bool) -> None:
        if not requeue and not self.dead_letter:
            # Pub/Sub has no reject. A nack would bring the message straight back, in a loop, and an
            # ack would delete a message that was never delivered (a message is acked only once delivered).
            # So it is parked: taken out of our lease management with the longest ack deadline.
            # Pub/Sub offers it again every PARK_SECONDS; while the ledger says failed it is parked
            # again, and once a ledger retry resets it, its next offer is delivered. The
            # subscription's message retention (7 days by default) is the limit.
            log.warning(
                "%s: message %s failed for good and the subscription %s has no dead-letter policy: "
                "it stays in the subscription (offered again every %ds; retry it in the ledger)",
                self.instance.name,
                message.message_id,
                self.path,
                PARK_SECONDS,
            )
            await self._park(stream, message)
            return
        await self._release(stream, message)

    async def _park(self, stream: _Stream, message: Any) -> None:
        if stream.open:
            message.drop()  # first: the library's leaser must not extend it again
            message.modify_ack_deadline(PARK_SECONDS)
            return
        await self._release_ids([message.ack_id], PARK_SECONDS)

    async def _release(self, stream: _Stream, message: Any) -> None:
        """Give a message back for redelivery (nack: ack deadline 0)."""
        if stream.open:
            message.nack()
            return
        await self._release_ids([message.ack_id])

    async def _release_queued(self, stream: _Stream) -> None:
        ids = []
        while not stream.queue.empty():
            item = stream.queue.get_nowait()
            if item is not _END:
                ids.append(item.ack_id)
        failed = (
            stream.future is not None
            and stream.future.done()
            and not stream.future.cancelled()
            and stream.future.exception() is not None
        )
        if ids and not failed:  # after a stream error the server is likely unreachable: let the leases lapse
            try:
                await asyncio.wait_for(self._release_ids(ids), 5)
            except Exception as e:  # their leases lapse anyway; redelivery just comes later
                log.debug("%s: releasing %d queued messages failed: %s", self.instance.name, len(ids), e)

    async def _release_ids(self, ack_ids: list[str], seconds: int = 0) -> None:
        """Unary ModifyAckDeadline (the stream is gone): 0 gives the messages back now."""
        client = await self.instance.subscriber()
        await self.instance.call(
            client.modify_ack_deadline,
            subscription=self.path,
            ack_ids=ack_ids,
            ack_deadline_seconds=seconds,
            path=self.path,
        )

    async def _ensure_subscription(self, client: Any) -> None:
        cs = self.cfg.create_subscription
        assert cs is not None
        inst = self.instance
        admin = await inst.admin()
        topic = inst.topic_path(cs.topic)
        request: dict[str, Any] = {
            "name": self.path,
            "topic": topic,
            "ack_deadline_seconds": int(cs.ack_deadline),
            "enable_message_ordering": cs.enable_message_ordering,
        }
        if cs.dead_letter_topic:
            request["dead_letter_policy"] = {
                "dead_letter_topic": inst.topic_path(cs.dead_letter_topic),
                "max_delivery_attempts": cs.max_delivery_attempts or 5,
            }

        def create(timeout: float) -> None:
            for name in [topic, *([inst.topic_path(cs.dead_letter_topic)] if cs.dead_letter_topic else [])]:
                with contextlib.suppress(gexc.AlreadyExists):
                    admin.create_topic(name=name, timeout=timeout)
            try:
                client.create_subscription(request=request, timeout=timeout)
                log.info("%s: created subscription %s on %s", inst.name, self.path, topic)
            except gexc.AlreadyExists:
                pass

        await inst.call(create, path=self.path)

    async def probe(self) -> str:
        """What ``run`` will find, changing nothing (for ``check --connect``): the subscription exists,
        or ``create_subscription:`` will create it. NotFound (or AuthError) otherwise."""
        inst, cs = self.instance, self.cfg.create_subscription
        client = await inst.subscriber()
        try:
            sub = await inst.call(client.get_subscription, request={"subscription": self.path}, path=self.path)
        except NotFound:
            if cs is None:
                raise NotFound(
                    "no such subscription (add `create_subscription:` to have it created)",
                    instance=inst.name,
                    path=self.path,
                ) from None
            return f"does not exist; created at start on topic {inst.topic_path(cs.topic)}"
        if sub.topic == "_deleted-topic_":
            return "exists, but its topic was deleted: nothing new will arrive"
        return f"exists, on topic {sub.topic}"

    def _stop_intake(self) -> None:
        """Stop pulling; messages already emitted still settle (by unary calls, see the module doc)."""
        self._stopping = True
        for stream in list(self._streams):
            # Give back what was handed over but not emitted while the dispatcher still runs.
            while not stream.queue.empty():
                item = stream.queue.get_nowait()
                if item is _END:
                    stream.queue.put_nowait(_END)
                    break
                item.nack()
            if stream.future is not None:
                stream.future.cancel()


def _safe_name(name: str | None) -> str | None:
    """A producer's ``name`` attribute, only when it is a plain file name. Whole: a target cuts a
    long name to fit, keeping two long names apart (a cut here would make them one name)."""
    if not name or name in (".", "..") or any(c in name for c in "/\\\0") or any(ord(c) < 32 for c in name):
        return None
    return name
