"""Consume a RabbitMQ queue into a flow: manual acks, prefetch, settle-once, no ack on a dead channel.

The hot path talks to aiormq's channel under aio-pika directly: one small record per message
(no aio-pika ``IncomingMessage`` wrapper, no extra task per message beyond aiormq's own), and
acks are coalesced and queued for the writer without waiting for the socket drain
(:mod:`conveyor.brokers.rabbitmq.settle`). An ack for a message whose
channel has closed is dropped (the broker redelivers it, and the state store recognises the id):
an ack sent on any other channel would be a protocol error or, worse, ack someone else's message.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import aiormq
from aiormq.abc import DeliveredMessage

from conveyor._compat import aiormq as aiormq_compat
from conveyor.brokers.rabbitmq.config import RabbitSourceConfig
from conveyor.brokers.rabbitmq.errors import map_error
from conveyor.brokers.rabbitmq.settle import Acker
from conveyor.errors import ConveyorError, NoSpace, NotFound, Transient
from conveyor.interfaces import Inbound
from conveyor.payload.body import Body
from conveyor.payload.payload import Payload, stable_id
from conveyor.payload.timestamps import utc_iso
from conveyor.stopping import StopSignal

if TYPE_CHECKING:
    from aio_pika.abc import AbstractChannel

    from conveyor.brokers.rabbitmq.instance import RabbitInstance

log = logging.getLogger("conveyor.rabbitmq")

# Headers the broker adds or changes on redelivery / dead-lettering: never part of a message's identity.
_BROKER_HEADERS = ("x-death", "x-first-death-", "x-last-death-", "x-delivery-count", "x-received-from")


def broker_added(name: str) -> bool:
    """Whether a header is one the broker sets (x-death, x-delivery-count...), not the publisher."""
    return name.startswith(_BROKER_HEADERS)


def json_safe(value: Any) -> Any:
    """An AMQP field value as JSON: tables and arrays recursed, bytes as text (or base64), times as ISO."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        try:
            return raw.decode()
        except UnicodeDecodeError:
            return "base64:" + base64.b64encode(raw).decode()
    if isinstance(value, datetime):
        return utc_iso(value)
    if isinstance(value, Decimal):
        return str(value)
    return str(value)


NOT_DECLARED = " (the queue is checked, not created: add `declare:` to create it)"


class _Stop:
    """Inbox marker: the flow's stop signal was set."""


class _Drained:
    """Inbox marker: every emitted message has been settled."""


class RabbitSource:
    """A consumer of one queue for one flow (:class:`conveyor.interfaces.MessageSource`)."""

    def __init__(self, instance: RabbitInstance, flow: str, config: RabbitSourceConfig) -> None:
        self.instance = instance
        self.flow = flow
        self.config = config
        self._inbox: asyncio.Queue[DeliveredMessage | BaseException | _Stop | _Drained] = asyncio.Queue()
        self._raw: aiormq.abc.AbstractChannel | None = None
        self._tag: str | None = None
        self._stopping = False
        self._outstanding = 0
        self._warned = False

    def _error(self, e: BaseException) -> ConveyorError:
        return map_error(e, instance=self.instance.name, address=self.instance.address, path=self.config.queue)

    async def _setup(self) -> AbstractChannel:
        """Open the channel, check or declare the queue, bind it, set the prefetch."""
        cfg = self.config
        inst = self.instance
        ch = await inst.channel(confirms=False, path=cfg.queue)
        try:
            async with asyncio.timeout(inst.config.timeout):
                await ch.set_qos(prefetch_count=cfg.prefetch)
                if cfg.declare is None:
                    queue = await ch.declare_queue(cfg.queue, passive=True)
                else:
                    args = dict(cfg.declare.arguments)
                    if cfg.declare.type == "quorum":
                        args["x-queue-type"] = "quorum"
                    queue = await ch.declare_queue(cfg.queue, durable=cfg.declare.durable, arguments=args or None)
                    if "x-dead-letter-exchange" not in args and not self._warned:
                        self._warned = True
                        log.warning(
                            "flow %s: queue '%s' is declared without x-dead-letter-exchange: a message "
                            "rejected after max_attempts (%d) is dropped unless a policy sets one",
                            self.flow,
                            cfg.queue,
                            cfg.max_attempts,
                        )
                for b in cfg.bindings:
                    for key in b.routing_key:
                        await queue.bind(b.exchange, routing_key=key)
        except BaseException as e:
            if not ch.is_closed:
                await _close_quietly(ch)
            if isinstance(e, asyncio.CancelledError):
                raise
            err = self._error(e)
            if "NOT_FOUND" in err.message and cfg.declare is None and "queue" in err.message:
                err.message += NOT_DECLARED
            raise err from None
        return ch

    async def run(self, emit: Callable[[Inbound], Awaitable[None]], stop: StopSignal) -> None:
        """Consume until the connection or consumer is lost (Transient), the task is cancelled (the channel
        closes: unacked messages return to the queue), or ``stop`` is set and every emitted message has been
        settled (the consumer is cancelled, prefetched messages go back, the channel closes, run returns)."""
        if stop.is_set():
            return  # a stopped flow stays stopped
        inbox: asyncio.Queue[DeliveredMessage | BaseException | _Stop | _Drained] = asyncio.Queue()
        self._inbox = inbox
        self._outstanding = 0
        self._stopping = False

        def on_stop() -> None:
            self._stopping = True
            inbox.put_nowait(_Stop())

        withdraw = stop.on_set(on_stop)
        try:
            await self._run(inbox, emit)
        finally:
            withdraw()

    async def _run(self, inbox: asyncio.Queue[Any], emit: Callable[[Inbound], Awaitable[None]]) -> None:
        ch = await self._setup()
        raw = await ch.get_underlay_channel()
        aiormq_compat.cap_bodies(raw, self.config.max_message_size)
        self._raw = raw
        acker = Acker(raw, self._settled)
        cfg = self.config
        queue = cfg.queue

        def on_close(fut: asyncio.Future[Any]) -> None:
            exc = None if fut.cancelled() else fut.exception()
            inbox.put_nowait(
                Transient(f"channel to queue '{queue}' closed: {exc!r}", instance=self.instance.name, path=queue)
            )

        def on_cancel(frame: Any) -> None:
            inbox.put_nowait(
                Transient(
                    f"the broker cancelled the consumer of queue '{queue}' (queue deleted, or its node went away)",
                    instance=self.instance.name,
                    path=queue,
                )
            )

        async def on_message(msg: DeliveredMessage) -> None:
            acker.received(msg.delivery.delivery_tag)  # type: ignore[union-attr,arg-type]
            inbox.put_nowait(msg)

        raw.closing.add_done_callback(on_close)
        raw.on_consumer_cancel_callbacks.add(on_cancel)
        try:
            try:
                ok = await raw.basic_consume(queue, on_message, no_ack=False, timeout=self.instance.config.timeout)
            except Exception as e:
                raise self._error(e) from None
            self._tag = ok.consumer_tag
            log.info(
                "flow %s: consuming queue '%s' on %s (prefetch %d)",
                self.flow,
                queue,
                self.instance.address,
                cfg.prefetch,
            )
            await self._consume(inbox, acker, emit)
        finally:
            self._tag = None
            self._raw = None
            raw.on_consumer_cancel_callbacks.discard(on_cancel)
            if not raw.is_closed:
                await acker.flush()  # acks made this very turn go out before the channel closes
                # Closing the channel hands every unacked (prefetched or in-flight) message back to the queue.
                await _close_quietly(ch)

    async def _consume(
        self, inbox: asyncio.Queue[Any], acker: Acker, emit: Callable[[Inbound], Awaitable[None]]
    ) -> None:
        make = self._inbound
        raw = acker.channel
        cfg = self.config
        while True:
            item = await inbox.get()
            if isinstance(item, DeliveredMessage):
                if raw.is_closed:
                    continue  # the close marker follows; this one is back on the queue already
                if self._stopping:
                    # Prefetched but never handed to the flow: give it back now.
                    self._outstanding += 1  # balanced by the _settled() inside nack
                    await acker.delivery(item.delivery.delivery_tag).nack(True)  # type: ignore[union-attr,arg-type]
                    continue
                size = item.header.body_size or len(item.body)
                if size > cfg.max_message_size:
                    self._refuse(item, size)
                    self._outstanding += 1  # balanced by the _settled() inside nack
                    await acker.delivery(item.delivery.delivery_tag).nack(False)  # type: ignore[union-attr,arg-type]
                    continue
                self._outstanding += 1
                # A flow that stops while this waits for a slot refuses it, and the runner nacks it back.
                await emit(make(acker, item))
            elif isinstance(item, BaseException):
                raise item
            elif isinstance(item, _Stop):
                await self._cancel_consumer(raw)
                if self._outstanding == 0:
                    break
            elif isinstance(item, _Drained) and self._outstanding == 0:
                break
        log.info("flow %s: stopped consuming queue '%s'", self.flow, self.config.queue)

    def _refuse(self, msg: DeliveredMessage, size: int) -> None:
        """Say why a message goes to the dead-letter path unread."""
        mid = msg.header.properties.message_id
        self.instance.ctx.status.flow_error(
            self.flow, f"message over max_message_size rejected from queue '{self.config.queue}'"
        )
        log.error(
            "flow %s: message %s from queue '%s' is %d bytes, over max_message_size (%d): rejected without "
            "requeue, to the queue's dead-letter exchange if it has one",
            self.flow,
            repr(mid) if mid else "without a message_id",
            self.config.queue,
            size,
            self.config.max_message_size,
            extra={"flow": self.flow, "instance": self.instance.name, "payload_id": mid},
        )

    async def _cancel_consumer(self, raw: aiormq.abc.AbstractChannel) -> None:
        """basic.cancel: the broker sends no more; what it sent already is nacked as it arrives."""
        tag = self._tag
        if tag is not None and not raw.is_closed:
            try:
                await raw.basic_cancel(tag, timeout=self.instance.config.timeout)
            except Exception as e:
                log.debug("basic.cancel on queue '%s' failed: %r", self.config.queue, e)

    def _settled(self) -> None:
        self._outstanding -= 1
        if self._stopping and self._outstanding == 0:
            self._inbox.put_nowait(_Drained())

    def _inbound(self, acker: Acker, msg: DeliveredMessage) -> Inbound:
        """The payload and settle callbacks of one delivery."""
        props = msg.header.properties
        deliver = msg.delivery
        tag: int = deliver.delivery_tag  # type: ignore[union-attr,assignment]
        headers = props.headers or {}
        queue = self.config.queue
        redelivered = bool(getattr(deliver, "redelivered", False))
        count = headers.get("x-delivery-count")
        # A delivery not flagged redelivered is the first one, whatever the queue type. Quorum queues count the
        # earlier deliveries that were returned in x-delivery-count; classic queues only say "redelivered".
        delivery_count = 1 if not redelivered else int(count) + 1 if isinstance(count, int) else None
        body = msg.body
        digest = hashlib.sha256(body).hexdigest()  # the id's input below, and the metadata's sha256 later
        if props.message_id:
            pid = props.message_id
        else:
            own = sorted((k, repr(json_safe(v))) for k, v in headers.items() if not broker_added(k))
            pid = stable_id(queue, digest, own)
        payload = Payload(
            id=pid,
            flow=self.flow,
            source_instance=self.instance.name,
            source_type="rabbitmq",
            body=self._body(body, digest),
            message={
                "id": props.message_id,
                "queue": queue,
                "headers": json_safe(headers),
                "exchange": msg.exchange,
                "routing_key": msg.routing_key,
                "redelivered": redelivered,
                "publish_time": utc_iso(props.timestamp) if props.timestamp else None,
                "delivery_attempt": delivery_count,
                "correlation_id": props.correlation_id,
                "type": props.message_type,
                "app_id": props.app_id,
            },
            content_type=props.content_type or "application/octet-stream",
        )
        d = acker.delivery(tag)
        return Inbound(payload, d.ack, d.nack, delivery_count, acks=acker, token=d)

    def _body(self, data: bytes, digest: str) -> Body:
        spool = self.instance.ctx.spool
        if len(data) <= spool.threshold:
            return Body(data=data, size=len(data), sha256=digest, owned=False)
        w = spool.writer()
        try:
            w.write(data)
            return w.finish()
        except NoSpace:
            # The bytes are in memory already (AMQP delivers them whole) and prefetch bounds how
            # many there are: keep this one there rather than abort the consumer, whose channel
            # carries the acks of everything in flight.
            w.abort()
            return Body(data=data, size=len(data), sha256=digest, owned=False)
        except BaseException:
            w.abort()
            raise

    async def probe(self) -> str:
        """What ``run`` will find, changing nothing (for ``check --connect``): the queue exists, or
        ``declare:`` will create it, and every binding's exchange exists. NotFound otherwise."""
        cfg, inst = self.config, self.instance
        found = await inst.passive_declare("queue", cfg.queue)
        if found is not None:
            text = f"exists ({found.message_count} ready, {found.consumer_count} consumers)"
        elif cfg.declare is not None:
            text = f"does not exist; declared at start ({cfg.declare.type}{', durable' if cfg.declare.durable else ''})"
        else:
            raise NotFound("no such queue" + NOT_DECLARED, instance=inst.name, path=cfg.queue)
        for exchange in dict.fromkeys(b.exchange for b in cfg.bindings):
            if await inst.passive_declare("exchange", exchange) is None:
                raise NotFound(
                    f"exchange '{exchange}' of bindings: does not exist (bindings need it to exist)",
                    instance=inst.name,
                    path=cfg.queue,
                )
        if cfg.bindings:
            text += f", bound to {', '.join(repr(b.exchange) for b in cfg.bindings)} at start"
        return text


async def _close_quietly(ch: AbstractChannel) -> None:
    try:
        await asyncio.wait_for(ch.close(), 5)
    except Exception as e:
        log.debug("closing channel: %r", e)
