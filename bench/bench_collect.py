"""RabbitMQ messages collected into ndjson files: `conveyor run` (rabbitmq → collect → directory)
against a plain aio-pika loop that writes each 1,000 messages to a file (fsync, rename, fsync of
the folder) and only then acks them, side by side on the same broker (a fresh vhost), with the
daemon's peak RSS.

    python bench/bench_collect.py [--messages 100000] [--per-file 1000] [--rounds 3] [--profile FILE]

Each round fills two queues with the same messages (about 120 bytes of JSON each), then each
side drains its own queue into a folder of its own, both with a prefetch of two files' worth
(one file filling while the other is written). The rate is taken from the first file's rename
to the last one's (the daemon's start-up and login are not in it): messages in the files after
the first, per second. Both sides ack a file's messages with one multiple-ack; conveyor writes
no sidecar here, the loop none. Rounds alternate; the
medians are printed, with the daemon's CPU seconds per 1,000 messages.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aio_pika

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.servers.rabbitmq

from tests.servers.rabbitmq import HOST, PASSWORD, PORT, USER, Vhost, create_vhost, delete_vhost

from common import Daemon, print_profile, table, wait_until, write_config


def body(i: int) -> bytes:
    return json.dumps(
        {"id": i, "customer": f"cust-{i * 7919 % 1_000_003}", "amount": i % 997 + 0.5, "note": "x" * 40}
    ).encode()


async def fill(v: Vhost, queues: list[str], n: int) -> None:
    """Each queue gets messages 0..n-1, persistent, confirms awaited 1,000 at a time."""
    async with await aio_pika.connect(v.url) as conn:
        ch = await conn.channel()
        for q in queues:
            queue = await ch.declare_queue(q, durable=True)
            await queue.purge()
        for start in range(0, n, 1000):
            pending = []
            for i in range(start, min(n, start + 1000)):
                m = aio_pika.Message(body(i), message_id=f"m{i}", delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
                pending += [ch.default_exchange.publish(m, routing_key=q) for q in queues]
            await asyncio.gather(*pending)


def durable_write(folder: Path, name: str, data: bytes, dir_fd: int) -> None:
    tmp = folder / f".{name}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, folder / name)
    os.fsync(dir_fd)


async def plain_loop(v: Vhost, queue: str, out: Path, n: int, per_file: int, window: int) -> list[float]:
    """Consume, write each ``per_file`` messages as one ndjson file, then ack them; the time each
    file was in place."""
    os.makedirs(out, exist_ok=True)
    dir_fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
    done: list[float] = []
    try:
        async with await aio_pika.connect(v.url) as conn:
            ch = await conn.channel()
            await ch.set_qos(prefetch_count=window * per_file)
            q = await ch.declare_queue(queue, durable=True, passive=True)
            got = 0
            batch: list[aio_pika.abc.AbstractIncomingMessage] = []
            async with q.iterator() as it:
                while got < n:
                    try:
                        msg = await asyncio.wait_for(it.__anext__(), 1.0)
                    except TimeoutError:
                        msg = None
                    if msg is not None:
                        batch.append(msg)
                    if batch and (len(batch) == per_file or msg is None or got + len(batch) == n):
                        data = b"".join(m.body + b"\n" for m in batch)
                        name = f"plain-{time.time():.6f}-{len(done)}.ndjson"
                        await asyncio.to_thread(durable_write, out, name, data, dir_fd)
                        await batch[-1].ack(multiple=True)
                        done.append(time.monotonic())
                        got += len(batch)
                        batch = []
    finally:
        os.close(dir_fd)
    return done


def lines_in(folder: Path) -> int:
    total = 0
    for p in folder.iterdir():
        if not p.name.startswith("."):
            with open(p, "rb") as f:
                total += f.read().count(b"\n")
    return total


def rate(times: list[float], n: int, per_file: int) -> float:
    """Messages in the files after the first, per second between the first and the last file."""
    times = sorted(times)
    return (n - per_file) / (times[-1] - times[0])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--per-file", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--window", type=int, default=2, help="prefetch, in files' worth of messages (both sides)")
    ap.add_argument("--dir", default=None, help="where to work (default: a temp folder)")
    ap.add_argument(
        "--profile", type=Path, help="run the daemon under cProfile (statistics to this file) and print them"
    )
    args = ap.parse_args()
    n, per = args.messages, args.per_file
    base = Path(tempfile.mkdtemp(prefix="conveyor-bench-", dir=args.dir))
    v = create_vhost()
    ref_rates: list[float] = []
    conv_rates: list[float] = []
    rss: list[int] = []
    cpu: list[float] = []
    try:
        mq = {"type": "rabbitmq", "host": HOST, "port": PORT, "username": USER, "password": PASSWORD, "vhost": v.name}
        for r in range(args.rounds):
            q_ref, q_conv = f"{v.prefix}ref-{r}", f"{v.prefix}conveyor-{r}"
            asyncio.run(fill(v, [q_ref, q_conv], n))
            ref_out, conv_out = base / f"ref-{r}", base / f"conveyor-{r}"
            ref_rates.append(rate(asyncio.run(plain_loop(v, q_ref, ref_out, n, per, args.window)), n, per))

            flow = {
                "source": {"instance": "mq", "queue": q_conv, "prefetch": args.window * per},
                "max_in_flight": args.window * per,
                "steps": [{"collect": {"format": "ndjson", "max_messages": per, "max_wait": "1s"}}],
                "target": {"type": "directory", "path": str(conv_out), "filename": "{name}", "sidecar": False},
            }
            run_dir = base / f"run-{r}"
            run_dir.mkdir()
            cfg = write_config(run_dir, {"mq": mq}, {"collect": flow})
            d = Daemon(cfg, args.profile)
            try:
                wait_until(lambda out=conv_out: out.exists() and lines_in(out) >= n, 3600, 0.05)
                rss.append(d.status("VmHWM"))
                cpu.append(d.cpu_seconds() / n * 1000)
            finally:
                d.stop()
            times = [p.stat().st_mtime for p in conv_out.iterdir()]
            assert lines_in(conv_out) == n, lines_in(conv_out)
            conv_rates.append(rate(times, n, per))
            shutil.rmtree(ref_out, ignore_errors=True)
            shutil.rmtree(conv_out, ignore_errors=True)
    finally:
        delete_vhost(v)
        shutil.rmtree(base, ignore_errors=True)
    ref, conv = statistics.median(ref_rates), statistics.median(conv_rates)
    runs: dict[str, Any] = {
        "conveyor": [round(x) for x in conv_rates],
        "plain": [round(x) for x in ref_rates],
    }
    print(
        table(
            [
                ("measure", "conveyor", "plain loop", "ratio"),
                (
                    f"{n:,} messages → ndjson files of {per:,} (directory, fsync), msgs/s (median)",
                    f"{conv:,.0f}",
                    f"{ref:,.0f}",
                    f"{conv / ref:.2f}",
                ),
                ("daemon peak RSS (max of rounds)", f"{max(rss) / 1024:.0f} MB", "", ""),
                ("daemon CPU seconds per 1,000 messages (median)", f"{statistics.median(cpu):.2f}", "", ""),
            ]
        )
    )
    print(f"rounds: {json.dumps(runs)}")
    if args.profile:
        print_profile(args.profile)


if __name__ == "__main__":
    main()
