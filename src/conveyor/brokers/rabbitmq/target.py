"""Publish a flow's payloads to RabbitMQ: persistent, mandatory, with publisher confirms awaited.

One channel per target, opened lazily and again after it is lost. Publishes are pipelined: each
``deliver`` queues its frames and awaits only its own confirm, so the up-to-``max_in_flight``
deliveries the flow runtime runs at once are all in flight on the wire together.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from aiormq.abc import DeliveredMessage
from pamqp.commands import Basic

from conveyor import traces
from conveyor.brokers.rabbitmq.config import RabbitTargetConfig
from conveyor.brokers.rabbitmq.errors import map_error
from conveyor.brokers.rabbitmq.source import broker_added
from conveyor.errors import NotFound, Rejected, Transient
from conveyor.names import name_fields
from conveyor.payload.payload import Payload
from conveyor.stopping import Abortable, Aborted

if TYPE_CHECKING:
    import aiormq.abc

    from conveyor.brokers.rabbitmq.instance import RabbitInstance

log = logging.getLogger("conveyor.rabbitmq")

MAX_BODY = 128 * 1024 * 1024
"""RabbitMQ's default max_message_size: a larger body could never be published."""


class _Fields(dict[str, Any]):
    """Template fields; a missing one names itself in the error."""

    def __missing__(self, key: str) -> Any:
        raise KeyError(key)


class RabbitTarget:
    """Publishes each payload to ``exchange`` with ``routing_key`` (:class:`conveyor.interfaces.Target`)."""

    def __init__(self, instance: RabbitInstance, flow: str, config: RabbitTargetConfig) -> None:
        self.instance = instance
        self.flow = flow
        self.config = config
        self._raw: aiormq.abc.AbstractChannel | None = None
        self._ch: Any = None
        self._lock = asyncio.Lock()
        self._where = f"exchange '{config.exchange}'" if config.exchange else "default exchange"
        self._publishing: dict[Abortable[Any], aiormq.abc.AbstractChannel] = {}
        """Publishes under way now, and the channel each publishes on."""

    def _error(self, e: BaseException) -> Exception:
        return map_error(e, instance=self.instance.name, address=self.instance.address, path=self._where)

    async def _channel(self) -> aiormq.abc.AbstractChannel:
        raw = self._raw
        if raw is not None and not raw.is_closed:
            return raw
        async with self._lock:
            raw = self._raw
            if raw is not None and not raw.is_closed:
                return raw
            ch = await self.instance.channel(confirms=True, path=self._where)
            try:
                if self.config.exchange:
                    # A typo in the exchange name fails here, once, not on every publish.
                    async with asyncio.timeout(self.instance.config.timeout):
                        await ch.declare_exchange(self.config.exchange, passive=True)
                raw = await ch.get_underlay_channel()
            except BaseException as e:
                if not ch.is_closed:
                    await ch.close()
                if isinstance(e, asyncio.CancelledError):
                    raise
                raise self._error(e) from None
            raw.closing.add_done_callback(functools.partial(self._closed, raw))
            self._ch, self._raw = ch, raw
            return raw

    def _closed(self, raw: aiormq.abc.AbstractChannel, _: object) -> None:
        """Abort the publishes still waiting on a channel that has closed.

        aiormq rejects the confirms of a closed channel, but not a publisher blocked on the dead
        connection's full write queue, nor those queued behind it on the channel's lock: seen
        with a broker restarted under load (tests/test_restarts.py), they waited forever, each
        holding a delivery slot and its source item. :meth:`deliver` turns this abort into
        Transient, so the delivery is retried on a new channel.
        """
        for publish, ch in list(self._publishing.items()):
            if ch is raw:
                publish.abort()

    def routing_key(self, payload: Payload) -> str:
        """The routing key template filled from the payload (Rejected when it needs a field the payload lacks)."""
        tpl = self.config.routing_key
        if "{" not in tpl:
            return tpl
        msg = payload.message or {}
        fields = _Fields(name_fields(payload.id, payload.name, payload.flow))
        fields.update(
            source=payload.source_instance,
            queue=msg.get("queue") or "",
            exchange=msg.get("exchange") or "",
            routing_key=msg.get("routing_key") or "",
            headers=_Fields(msg.get("headers") or {}),
        )
        try:
            return tpl.format_map(fields)
        except (KeyError, IndexError) as e:
            raise Rejected(
                f"routing_key '{tpl}' needs {e} which payload {payload.id} does not have",
                instance=self.instance.name,
                path=self._where,
            ) from None

    async def _headers(self, payload: Payload) -> dict[str, Any]:
        cfg = self.config
        headers: dict[str, Any] = {}
        if cfg.copy_headers and payload.message and isinstance(payload.message.get("headers"), dict):
            headers.update((k, v) for k, v in payload.message["headers"].items() if not broker_added(k))
        headers.update(cfg.headers)
        headers["x-conveyor-id"] = payload.id
        headers["x-conveyor-flow"] = payload.flow
        headers["x-conveyor-source"] = payload.source_instance
        headers["x-conveyor-meta"] = json.dumps(await payload.metadata(), separators=(",", ":"))
        traces.inject(headers)
        return headers

    async def _body(self, payload: Payload) -> bytes:
        body = payload.body
        if body.in_memory:
            return body.data()
        if body.size > MAX_BODY:
            raise Rejected(
                f"body of {body.size} bytes is larger than RabbitMQ accepts ({MAX_BODY})",
                instance=self.instance.name,
                path=self._where,
            )
        return b"".join([c async for c in body.chunks()])

    async def deliver(self, payload: Payload) -> None:
        """Publish and wait for the broker's confirm: Rejected when unroutable, Transient on nack or loss."""
        cfg = self.config
        rk = self.routing_key(payload)
        props = Basic.Properties(
            content_type=payload.content_type,
            delivery_mode=2 if cfg.persistent else 1,
            headers=await self._headers(payload),
            message_id=payload.id,
            timestamp=datetime.now(UTC),
        )
        data = await self._body(payload)
        raw = await self._channel()
        publish: Abortable[Any] = Abortable()
        self._publishing[publish] = raw  # no await between the channel check and the publish
        try:
            result = await publish.run(
                raw.basic_publish(  # type: ignore[call-arg]
                    data, exchange=cfg.exchange, routing_key=rk, properties=props, mandatory=cfg.mandatory, wait=False
                )
            )
        except Aborted:
            raise Transient(
                "channel closed while publishing (connection lost); retrying",
                instance=self.instance.name,
                path=self._where,
            ) from None
        except Exception as e:
            raise self._error(e) from None
        finally:
            del self._publishing[publish]
        if isinstance(result, Basic.Ack):
            return
        if isinstance(result, DeliveredMessage):
            reply = getattr(result.delivery, "reply_text", "NO_ROUTE")
            raise Rejected(
                f"unroutable: no queue bound to {self._where} for routing key '{rk}' ({reply})",
                instance=self.instance.name,
                path=self._where,
            )
        raise Transient(
            f"the broker did not take the message ({type(result).__name__}); retrying",
            instance=self.instance.name,
            path=self._where,
        )

    async def probe(self) -> str:
        """Whether publishing can work, changing nothing (for ``check --connect``): the exchange
        exists, or on the default exchange the queue a fixed routing key names. NotFound otherwise."""
        cfg, inst = self.config, self.instance
        if cfg.exchange:
            if await inst.passive_declare("exchange", cfg.exchange) is None:
                raise NotFound(
                    "no such exchange (conveyor does not declare exchanges: create it on the broker)",
                    instance=inst.name,
                    path=self._where,
                )
            return "exists"
        if "{" in cfg.routing_key:
            return f"routing key template '{cfg.routing_key}': the queues it names are not checked"
        if await inst.passive_declare("queue", cfg.routing_key) is None:
            fate = "rejected as unroutable" if cfg.mandatory else "dropped by the broker (mandatory: false)"
            raise NotFound(
                f"no queue '{cfg.routing_key}' to route to: every message would be {fate}",
                instance=inst.name,
                path=self._where,
            )
        return f"queue '{cfg.routing_key}' exists"

    async def close(self) -> None:
        """Close this target's channel (the shared connection stays for other flows)."""
        ch, self._ch, self._raw = self._ch, None, None
        if ch is not None and not ch.is_closed:
            try:
                await asyncio.wait_for(ch.close(), 5)
            except Exception as e:
                log.debug("closing publisher channel: %r", e)
