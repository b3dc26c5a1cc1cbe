"""The RabbitMQ backend for the shared behaviour suite: a fresh durable queue per test, in a vhost of
the real broker made for the test module (tests/servers/rabbitmq.py).

``pending()`` counts ready *and* unacknowledged messages, from ``rabbitmqctl list_queues``
(about 0.7 s a call): a passive queue.declare only reports ready ones, so a consumer that
received messages but never acked them would look done. Without rabbitmqctl it falls back to the
passive declare.
"""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import pytest

from tests.servers.rabbitmq import Vhost, rabbit_vhost_fixture, ready_count

__all__ = ["RabbitBackend", "rabbit_vhost_fixture", "rabbitmq_backend"]


class RabbitBackend:
    """One durable classic queue on the test vhost."""

    name = "rabbitmq"

    def __init__(self, vhost: Vhost, queue: str) -> None:
        self.vhost = vhost
        self.queue = queue

    def instance_config(self) -> dict[str, Any]:
        """``instances.<name>`` for the broker, in the test vhost."""
        return self.vhost.instance_config()

    def source_config(self) -> dict[str, Any]:
        """``flows.<f>.source`` minus ``instance``."""
        return {"queue": self.queue, "prefetch": 50, "max_attempts": 3}

    async def publish(self, bodies: list[bytes]) -> None:
        """Publish persistent messages (no message_id: ids come from the body hash) with confirms."""
        async with await aio_pika.connect(self.vhost.url) as conn:
            ch = await conn.channel()
            await asyncio.gather(
                *(
                    ch.default_exchange.publish(
                        aio_pika.Message(b, delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key=self.queue
                    )
                    for b in bodies
                )
            )

    async def pending(self) -> int:
        """Messages on the queue not yet acked (ready + unacknowledged)."""
        if shutil.which("rabbitmqctl"):
            counts = await asyncio.to_thread(self.vhost.counts)
            if self.queue in counts:
                return counts[self.queue]
        return await ready_count(self.vhost, self.queue)


@pytest.fixture
async def rabbitmq_backend(rabbit_vhost: Vhost) -> AsyncIterator[RabbitBackend]:
    """A fresh queue for one test; deleted afterwards."""
    queue = rabbit_vhost.q(f"suite-{uuid.uuid4().hex[:10]}")
    async with await aio_pika.connect(rabbit_vhost.url) as conn:
        ch = await conn.channel()
        await ch.declare_queue(queue, durable=True)
    yield RabbitBackend(rabbit_vhost, queue)
    async with await aio_pika.connect(rabbit_vhost.url) as conn:
        ch = await conn.channel()
        await ch.queue_delete(queue)
