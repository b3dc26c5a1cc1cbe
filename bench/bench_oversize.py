"""Peak RSS of the daemon while a RabbitMQ queue holds messages over ``max_message_size``.

A queue with a dead-letter exchange gets ``--big`` messages of ``--size`` MiB (RabbitMQ takes up
to 128 MiB by default) and 20 small ones; the daemon consumes it into a directory target with the
default limits. Printed: the daemon's peak RSS (VmHWM), the bodies it delivered, and the messages
the broker dead-lettered. Run it with ``CONVEYOR_COMPAT=public`` to see aiormq's public path,
which receives each oversize body whole before refusing it.

    python bench/bench_oversize.py [--big 3] [--size 100] [--url amqp://guest:guest@127.0.0.1:5672/]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import uuid
from pathlib import Path

import aio_pika

from common import Daemon, wait_until, write_config


async def publish(url: str, queue: str, dead: str, big: int, size: int) -> None:
    """The queue (dead-lettering into ``dead``) with ``big`` large and 20 small messages."""
    async with await aio_pika.connect(url) as conn:
        ch = await conn.channel()
        await ch.declare_queue(dead)
        await ch.declare_queue(queue, arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dead})
        body = os.urandom(size * 1024 * 1024)
        for i in range(big):
            await ch.default_exchange.publish(aio_pika.Message(body, message_id=f"big-{i}"), routing_key=queue)
        for i in range(20):
            await ch.default_exchange.publish(aio_pika.Message(b"small %d" % i, message_id=f"s-{i}"), routing_key=queue)


async def counts(url: str, *queues: str) -> list[int]:
    """Ready messages on each queue."""
    async with await aio_pika.connect(url) as conn:
        ch = await conn.channel()
        return [(await ch.declare_queue(q, passive=True)).declaration_result.message_count or 0 for q in queues]


async def delete(url: str, *queues: str) -> None:
    """Remove the queues."""
    async with await aio_pika.connect(url) as conn:
        ch = await conn.channel()
        for q in queues:
            await ch.queue_delete(q)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--big", type=int, default=3, help="large messages")
    ap.add_argument("--size", type=int, default=100, help="MiB per large message")
    ap.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/")
    args = ap.parse_args()
    tag = uuid.uuid4().hex[:8]
    queue, dead = f"bench-oversize-{tag}", f"bench-oversize-{tag}.dlq"
    asyncio.run(publish(args.url, queue, dead, args.big, args.size))
    folder = Path(tempfile.mkdtemp(prefix="conveyor-oversize-"))
    out = folder / "out"
    instances = {"mq": {"type": "rabbitmq", "url": args.url}}
    flows = {"f": {"source": {"instance": "mq", "queue": queue}, "target": {"type": "directory", "path": str(out)}}}
    daemon = Daemon(write_config(folder, instances, flows))
    try:

        def bodies() -> int:
            return len([p for p in out.glob("*") if not p.name.endswith(".meta.json")]) if out.exists() else 0

        wait_until(lambda: bodies() >= 20 and asyncio.run(counts(args.url, queue)) == [0], 300, 0.5)
        peak = daemon.status("VmHWM")
    finally:
        daemon.stop()
    _, dead_count = asyncio.run(counts(args.url, queue, dead))
    asyncio.run(delete(args.url, queue, dead))
    print(
        f"{args.big} x {args.size} MiB + 20 small messages: peak RSS {peak / 1024:.0f} MiB, "
        f"{bodies()} bodies delivered, {dead_count} dead-lettered "
        f"(aiormq path: {'public' if os.environ.get('CONVEYOR_COMPAT') == 'public' else 'private if it fits'})"
    )


if __name__ == "__main__":
    main()
