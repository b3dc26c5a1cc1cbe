"""Settling RabbitMQ deliveries: at most once each, only on the channel that delivered them, acks coalesced.

Rules this module keeps:

* A delivery is settled (acked, requeued or rejected) at most once; a second call is ignored.
  (Settling a delivery tag twice is a channel error that would take every other in-flight
  message down with it.)
* A delivery tag means something only on its own channel. When that channel has closed, the
  broker has already put the message back; an ack is then dropped, never sent on another channel
  (where the same tag number names a different message).
* Acks are coalesced: acks made in the same event-loop turn go out as one ``basic.ack multiple``
  covering the oldest run of settled deliveries, plus single acks for any settled out of order.
  Rejects go out at once, and a delivery counts as settled for the multiple-ack only after its
  reject frame is queued, so a multiple ack can never cover a message that is being rejected.
* A batch acked together (:meth:`Acker.ack_many`) goes out the same way at once: one
  ``basic.ack multiple`` up to its highest tag when every older unsettled delivery of the channel
  is in it, single acks for the rest.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import aiormq
import aiormq.abc

log = logging.getLogger("conveyor.rabbitmq")

_SEND_ERRORS = (aiormq.exceptions.AMQPError, aiormq.exceptions.ChannelInvalidStateError, ConnectionError)


class Acker:
    """The settle state of one consumer channel."""

    def __init__(self, channel: aiormq.abc.AbstractChannel, on_settled: Callable[[], None]) -> None:
        self.channel = channel
        self._on_settled = on_settled
        self._order: deque[int] = deque()
        """Delivery tags not yet known to be settled, oldest first (bounded by the prefetch)."""
        self._done: set[int] = set()
        """Tags settled by a frame already queued (single ack, reject)."""
        self._pending: set[int] = set()
        """Tags acked by the flow whose ack frame is not queued yet."""
        self._flushing = False
        self._lock = asyncio.Lock()

    def received(self, tag: int) -> None:
        """Record a delivery as it arrives (every one, emitted or not: a multiple ack would cover it)."""
        self._order.append(tag)

    def delivery(self, tag: int) -> Delivery:
        """The settle callbacks for one delivery."""
        return Delivery(self, tag)

    async def ack(self, tag: int) -> None:
        self._pending.add(tag)
        if self._flushing:
            return  # the flusher of this turn takes it
        self._flushing = True
        try:
            await asyncio.sleep(0)  # let the other acks of this turn join
            await self.flush()
        finally:
            self._flushing = False

    async def ack_many(self, tokens: Sequence[Any]) -> None:
        """Ack these deliveries (their :class:`Delivery` objects) together; each at most once."""
        for d in tokens:
            if d._settle("ack"):
                self._pending.add(d._tag)
        if self._pending:
            await self.flush()

    async def flush(self) -> None:
        """Queue ack frames for every pending ack (run before the channel is closed on purpose)."""
        async with self._lock:  # one flusher at a time: frames must leave in the order they were computed
            await self._flush()

    async def _flush(self) -> None:
        order, done, pending = self._order, self._done, self._pending
        ch = self.channel
        while pending:
            last = None
            while order and (order[0] in pending or order[0] in done):
                tag = order.popleft()
                if tag in pending:
                    pending.discard(tag)
                    last = tag
                else:
                    done.discard(tag)
            singles = sorted(pending)
            pending.clear()
            done.update(singles)
            if ch.is_closed:
                log.debug(
                    "%d acks dropped: their channel is closed (the broker redelivers them)",
                    len(singles) + (last is not None),
                )
                return
            try:
                if last is not None:
                    await ch.basic_ack(last, multiple=True, wait=False)
                for tag in singles:
                    await ch.basic_ack(tag, wait=False)
            except _SEND_ERRORS as e:
                log.debug("acks not sent (%r): the broker will redeliver those messages", e)
                return

    async def reject(self, tag: int, requeue: bool) -> None:
        if self.channel.is_closed:
            log.debug("nack of delivery %d dropped: its channel is closed", tag)
            return
        try:
            await self.channel.basic_reject(tag, requeue=requeue, wait=False)
        except _SEND_ERRORS as e:
            log.debug("nack of delivery %d not sent (%r): the broker will redeliver it", tag, e)
        self._done.add(tag)


class Delivery:
    """One delivered message's ``ack`` / ``nack(requeue)``: settled at most once, only on its own channel."""

    __slots__ = ("_acker", "_tag", "settled")

    def __init__(self, acker: Acker, tag: int) -> None:
        self._acker = acker
        self._tag = tag
        self.settled = False

    async def ack(self) -> None:
        """Acknowledge: the broker forgets the message."""
        if self._settle("ack"):
            await self._acker.ack(self._tag)

    async def nack(self, requeue: bool) -> None:
        """Return the message to the queue (``requeue``), or reject it so the queue's dead-letter exchange
        takes it."""
        if self._settle("nack"):
            await self._acker.reject(self._tag, requeue)

    def _settle(self, what: str) -> bool:
        if self.settled:
            log.debug("%s of delivery %d ignored: already settled", what, self._tag)
            return False
        self.settled = True
        self._acker._on_settled()
        if self._acker.channel.is_closed:
            # An ack on a dead channel is not an ack: the broker has already put the message back.
            log.debug("%s of delivery %d dropped: its channel is closed", what, self._tag)
            return False
        return True
