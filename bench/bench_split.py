"""A gzip'd CSV split into RabbitMQ messages of 100 records, with publisher confirms:
`conveyor run` (local → decompress → split → rabbitmq) against a plain Python loop doing gzip +
csv + aio-pika publish with confirms (32 awaiting their confirm at once, as the step does), side
by side on the same broker (a fresh vhost), with the daemon's peak RSS.

    python bench/bench_split.py [--size-mib 64] [--batch 100] [--rounds 1]

``--size-mib`` is the CSV's size before gzip (1024 for the 1 GiB figure). Both sides keep up
to 32 messages awaiting their confirm, keep the header line at the top of each
message, and send to a queue capped at 10,000 messages (``x-max-length``, oldest dropped) so
the broker's memory is not what is measured. Rounds alternate; each side's best is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import csv
import gzip
import io
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aio_pika

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.servers.rabbitmq

from tests.servers.rabbitmq import HOST, PASSWORD, PORT, USER, Vhost, create_vhost, delete_vhost

from common import Daemon, table, wait_until, write_config

WINDOW = 32
"""Publishes awaiting their confirm at once, on both sides (the split step's window)."""
CAP: dict[str, Any] = {"x-max-length": 10_000, "x-overflow": "drop-head"}


def make_csv(path: Path, size_mib: int) -> int:
    """A gzip'd CSV of about ``size_mib`` MiB before compression; returns its record count."""
    rnd = random.Random(1)
    words = ["alpha", "bravo", "charlie", "delta", "echo, with a comma", 'quote "q"', "x" * 20]
    n = 0
    written = 0
    with gzip.open(path, "wb", compresslevel=1) as g:
        text = io.TextIOWrapper(g, encoding="utf-8", newline="")
        w = csv.writer(text, lineterminator="\n")
        w.writerow(["id", "customer", "item", "amount", "note"])
        while written < size_mib << 20:
            rows = [
                [
                    n + i,
                    f"cust-{rnd.randrange(10**6)}",
                    rnd.choice(words),
                    f"{rnd.random() * 1000:.2f}",
                    rnd.choice(words),
                ]
                for i in range(10_000)
            ]
            buf = io.StringIO()
            csv.writer(buf, lineterminator="\n").writerows(rows)
            written += len(buf.getvalue())
            text.write(buf.getvalue())
            n += len(rows)
        text.flush()
        text.detach()
    return n


async def declare(v: Vhost, queue: str) -> None:
    async with await aio_pika.connect(v.url) as conn:
        ch = await conn.channel()
        q = await ch.declare_queue(queue, durable=True, arguments=CAP)
        await q.purge()


async def plain_loop(v: Vhost, path: Path, queue: str, batch: int) -> tuple[float, int]:
    """gzip + csv + aio-pika, every confirm awaited (32 at once); (seconds, messages)."""
    sent = 0
    start = time.monotonic()
    async with await aio_pika.connect(v.url) as conn:
        ch = await conn.channel(publisher_confirms=True)
        with gzip.open(path, "rt", encoding="utf-8", newline="") as f:
            reader = csv.reader(f)
            header = next(reader)
            rows: list[list[str]] = []
            window: collections.deque[asyncio.Task[Any]] = collections.deque()

            async def send() -> None:
                nonlocal sent
                buf = io.StringIO()
                w = csv.writer(buf, lineterminator="\n")
                w.writerow(header)
                w.writerows(rows)
                msg = aio_pika.Message(buf.getvalue().encode(), delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
                window.append(asyncio.create_task(ch.default_exchange.publish(msg, routing_key=queue)))
                if len(window) >= WINDOW:
                    await window.popleft()
                sent += 1

            for row in reader:
                rows.append(row)
                if len(rows) == batch:
                    await send()
                    rows = []
            if rows:
                await send()
            for t in window:
                await t
    return time.monotonic() - start, sent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=64)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--dir", default=None, help="where to work (default: a temp folder)")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="conveyor-bench-", dir=args.dir))
    v = create_vhost()
    try:
        staged = base / "staging.csv.gz"
        records = make_csv(staged, args.size_mib)
        messages = -(-records // args.batch)
        src = base / "disk" / "in"
        src.mkdir(parents=True)
        q_ref, q_conv = f"{v.prefix}split-ref", f"{v.prefix}split-conveyor"
        asyncio.run(declare(v, q_ref))
        asyncio.run(declare(v, q_conv))
        mq = {"type": "rabbitmq", "host": HOST, "port": PORT, "username": USER, "password": PASSWORD, "vhost": v.name}
        flow = {
            "source": {"instance": "disk", "path": "in", "poll_interval": "100ms", "min_age": "0s", "after": "delete"},
            "steps": [{"decompress": "gzip"}, {"split": {"format": "csv", "batch_size": args.batch}}],
            "target": {"instance": "mq", "routing_key": q_conv},
        }
        cfg = write_config(base, {"disk": {"type": "local", "root": str(base / "disk")}, "mq": mq}, {"split": flow})
        d = Daemon(cfg)
        time.sleep(1.5)
        ref_runs: list[float] = []
        conv_runs: list[float] = []
        for n in range(args.rounds):
            seconds, sent = asyncio.run(plain_loop(v, staged, q_ref, args.batch))
            assert sent == messages, (sent, messages)
            ref_runs.append(seconds)
            one = src / f"round-{n}.csv.gz"
            shutil.copyfile(staged, base / "disk" / "copy.tmp")
            os.rename(base / "disk" / "copy.tmp", one)  # appears whole: taken at the next poll
            conv_runs.append(wait_until(lambda one=one: not one.exists(), 3600, 0.02))
        rss = d.status("VmHWM")
        d.stop()
    finally:
        delete_vhost(v)
        shutil.rmtree(base, ignore_errors=True)
    ref, conv = min(ref_runs), min(conv_runs)
    print(
        table(
            [
                ("measure", "conveyor", "plain loop", "ratio"),
                (
                    f"{args.size_mib} MiB CSV (gzip'd), {records:,} records → {messages:,} messages, msgs/s",
                    f"{messages / conv:,.0f}",
                    f"{messages / ref:,.0f}",
                    f"{ref / conv:.2f}",
                ),
                ("seconds", f"{conv:.1f}", f"{ref:.1f}", ""),
                ("daemon peak RSS", f"{rss / 1024:.0f} MB", "", ""),
            ]
        )
    )


if __name__ == "__main__":
    main()
