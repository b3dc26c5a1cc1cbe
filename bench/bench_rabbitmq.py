"""RabbitMQ, side by side in one run on the same broker (a fresh vhost): N messages of 1 KiB consumed by

a. a plain aio-pika consumer that acks each message (``queue.iterator()`` loop, prefetch P);
b. a plain aio-pika relay: consume → publish to another queue with publisher confirms → ack
   (``queue.consume`` callback, so up to P relays run at once and confirms are pipelined);
c. conveyor's daemon (``conveyor run -c`` as a child process) into a ``directory`` target;
d. conveyor's daemon into a ``rabbitmq`` target (relay to another queue, confirms awaited);

e. no broker at all: a plain Python loop writing the same files the directory target writes
   (1 KiB body and a ~600 B sidecar per message, each under a temporary name, then renamed;
   ``syncfs`` before and after the renames, batches of ``prefetch``) — the ceiling this
   machine's disk puts on any durable directory target, printed beside c;
f. a plain aio-pika consumer that does the directory target's durable writes (body and
   sidecar per message, temporary names, ``syncfs``, renames, ``syncfs``, on a worker thread,
   a batch of whatever arrived meanwhile) and acks each message after its batch is durable:
   the fair reference for c.

Each pass gets a freshly filled queue. Reported: msgs/s (c is compared with f and a, d with b), CPU
seconds per 1,000 messages of the consuming process, and the daemon's RSS sampled through
the run (flat or growing). The daemon's rate is timed from its first delivery (interpreter
start-up and connecting are excluded; they are printed apart). Two cores are shared with
the broker and with other work on this machine: figures are noisy, so use ``--rounds`` to
alternate and keep each side's best; c against f is also printed per round (both run
in the same round) with the median of those ratios, the steadier figure.

    python bench/bench_rabbitmq.py [--messages 100000] [--prefetch 100] [--max-in-flight 100] [--rounds 1]
        [--no-relay]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import aio_pika
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.servers.rabbitmq

from tests.servers.ops import free_port
from tests.servers.rabbitmq import Vhost, create_vhost, delete_vhost

from common import durable_batch, raw_durable_writes, sidecar

BODY = os.urandom(1024)
RAW = "e. no broker: the same durable file writes in a plain loop"
PLAIN_DIR = "f. plain aio-pika consumer, durable writes, then acks"


async def fill(v: Vhost, queue: str, n: int) -> float:
    """Publish ``n`` persistent 1 KiB messages with confirms, pipelined; returns seconds taken."""
    async with await aio_pika.connect(v.url) as conn:
        ch = await conn.channel()
        q = await ch.declare_queue(queue, durable=True)
        await q.purge()
        start = time.monotonic()
        for i in range(0, n, 1000):
            await asyncio.gather(
                *(
                    ch.default_exchange.publish(
                        aio_pika.Message(BODY, delivery_mode=aio_pika.DeliveryMode.PERSISTENT, message_id=f"m{j}"),
                        routing_key=queue,
                    )
                    for j in range(i, min(n, i + 1000))
                )
            )
        return time.monotonic() - start


async def purge(v: Vhost, *queues: str) -> None:
    async with await aio_pika.connect(v.url) as conn:
        ch = await conn.channel()
        for q in queues:
            await (await ch.declare_queue(q, durable=True)).purge()


async def count(v: Vhost, queue: str) -> int:
    async with await aio_pika.connect(v.url) as conn:
        ch = await conn.channel()
        q = await ch.declare_queue(queue, passive=True)
        return int(q.declaration_result.message_count or 0)


async def plain_consume(v: Vhost, queue: str, n: int, prefetch: int) -> tuple[float, float]:
    """(a) consume + ack in a loop; returns (seconds, cpu seconds)."""
    async with await aio_pika.connect(v.url) as conn:
        ch = await conn.channel()
        await ch.set_qos(prefetch_count=prefetch)
        q = await ch.declare_queue(queue, passive=True)
        got = 0
        start, cpu = time.monotonic(), time.process_time()
        async with q.iterator() as it:
            async for m in it:
                await m.ack()
                got += 1
                if got == n:
                    break
        return time.monotonic() - start, time.process_time() - cpu


async def plain_relay(v: Vhost, queue: str, out: str, n: int, prefetch: int) -> tuple[float, float]:
    """(b) consume → publish with confirms → ack, P at a time; returns (seconds, cpu seconds)."""
    async with await aio_pika.connect(v.url) as conn:
        cin = await conn.channel()
        await cin.set_qos(prefetch_count=prefetch)
        cout = await conn.channel(publisher_confirms=True)
        q = await cin.declare_queue(queue, passive=True)
        done = asyncio.Event()
        got = 0

        async def relay(m: aio_pika.abc.AbstractIncomingMessage) -> None:
            nonlocal got
            await cout.default_exchange.publish(
                aio_pika.Message(
                    m.body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT, message_id=m.message_id, headers=m.headers
                ),
                routing_key=out,
                mandatory=True,
            )
            await m.ack()
            got += 1
            if got == n:
                done.set()

        start, cpu = time.monotonic(), time.process_time()
        tag = await q.consume(relay)
        await done.wait()
        elapsed, used = time.monotonic() - start, time.process_time() - cpu
        await q.cancel(tag)
        return elapsed, used


async def plain_durable(v: Vhost, queue: str, n: int, prefetch: int, folder: Path) -> tuple[float, float]:
    """(f) consume; write each batch durably on a worker thread; ack its messages; returns (seconds, cpu seconds)."""
    await asyncio.to_thread(folder.mkdir, parents=True)
    async with await aio_pika.connect(v.url) as conn:
        ch = await conn.channel()
        await ch.set_qos(prefetch_count=prefetch)
        q = await ch.declare_queue(queue, passive=True)
        arrived: list[aio_pika.abc.AbstractIncomingMessage] = []
        wake = asyncio.Event()

        async def on_message(m: aio_pika.abc.AbstractIncomingMessage) -> None:
            arrived.append(m)
            wake.set()

        def files(batch: list[aio_pika.abc.AbstractIncomingMessage]) -> list[tuple[str, bytes, bytes]]:
            out = []
            for m in batch:
                message = {
                    "id": m.message_id,
                    "queue": queue,
                    "headers": m.headers,
                    "exchange": m.exchange,
                    "routing_key": m.routing_key,
                    "redelivered": m.redelivered,
                    "publish_time": None,
                    "delivery_attempt": 1,
                    "correlation_id": m.correlation_id,
                    "type": m.type,
                    "app_id": m.app_id,
                }
                out.append((str(m.message_id), m.body, sidecar(str(m.message_id), "rabbitmq", m.body, message)))
            return out

        got = 0
        start, cpu = time.monotonic(), time.process_time()
        tag = await q.consume(on_message)
        while got < n:
            await wake.wait()
            wake.clear()
            batch, arrived[:] = arrived[:], []
            await asyncio.to_thread(durable_batch, folder, files(batch))
            for m in batch:
                await m.ack()
            got += len(batch)
        elapsed, used = time.monotonic() - start, time.process_time() - cpu
        await q.cancel(tag)
        return elapsed, used


def proc_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def proc_cpu(pid: int) -> float:
    parts = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


def run_daemon(v: Vhost, work: Path, flow: dict[str, Any], n: int) -> dict[str, Any]:
    """Start ``conveyor run`` on one flow, wait until it delivered ``n``, stop it; timings and RSS samples."""
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    port = free_port()
    doc = {
        "state": str(work / "state.db"),
        "spool_dir": str(work / "spool"),
        "health": {"listen": f"127.0.0.1:{port}"},
        "log": {"level": "warning", "format": "text"},
        "instances": {"mq": v.instance_config()},
        "flows": {"f": flow},
    }
    cfg = work / "bench.yaml"
    cfg.write_text(yaml.safe_dump(doc, sort_keys=False))
    log = open(work / "daemon.log", "wb")  # noqa: SIM115
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "conveyor", "run", "-c", str(cfg)], stderr=log)
    rss: list[tuple[int, int]] = []
    first: tuple[float, int, float] | None = None
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {proc.returncode}; see {work / 'daemon.log'}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as r:
                    delivered = int(json.load(r)["flows"]["f"]["delivered"])
            except (OSError, KeyError, ValueError):
                time.sleep(0.05)
                continue
            now = time.monotonic()
            if first is None and delivered > 0:
                first = (now, delivered, proc_cpu(proc.pid))
            rss.append((delivered, proc_rss_kib(proc.pid)))
            if delivered >= n:
                break
            if now - t0 > 1800:
                raise TimeoutError("daemon did not finish in 30 minutes")
            time.sleep(0.2)
        end, cpu_end = time.monotonic(), proc_cpu(proc.pid)
    finally:
        proc.terminate()
        rc = proc.wait(120)
        log.close()
    assert first is not None
    return {
        "seconds": end - first[0],
        "messages": n - first[1],
        "startup": first[0] - t0,
        "cpu": cpu_end - first[2],
        "rss": rss,
        "rc": rc,
    }


def rss_summary(samples: list[tuple[int, int]], n: int) -> str:
    """RSS at ~20%, ~60% and 100% of the run, and the peak (MiB)."""

    def at(frac: float) -> float:
        for delivered, kib in samples:
            if delivered >= frac * n:
                return kib / 1024
        return samples[-1][1] / 1024

    peak = max(k for _, k in samples) / 1024
    return f"{at(0.2):.0f} / {at(0.6):.0f} / {at(1.0):.0f} MiB (peak {peak:.0f})"


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--prefetch", type=int, default=100)
    ap.add_argument("--max-in-flight", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--no-relay", action="store_true", help="skip b and d (the relays)")
    args = ap.parse_args()
    n, p = args.messages, args.prefetch
    v = create_vhost()
    tmp = Path(tempfile.mkdtemp(prefix="bench-rabbitmq-"))
    best: dict[str, dict[str, Any]] = {}

    rounds: dict[str, list[tuple[float, float]]] = {}
    """Each side's (rate, CPU ms per message) in every round, for the per-round ratios."""

    def keep(name: str, seconds: float, cpu: float, extra: dict[str, Any] | None = None, msgs: int = n) -> None:
        rate = msgs / seconds
        rounds.setdefault(name, []).append((rate, cpu / msgs * 1000))
        print(f"  {name}: {rate:,.0f} msgs/s ({cpu / msgs * 1000:.2f} CPU s per 1k msgs)", flush=True)
        if name not in best or rate > best[name]["rate"]:
            best[name] = {"rate": rate, "cpu": cpu / msgs * 1000, **(extra or {})}

    src, out = "bench-in", "bench-out"
    try:
        for r in range(1, args.rounds + 1):
            print(f"round {r} of {args.rounds} ({n:,} messages of 1 KiB, prefetch {p})", flush=True)
            secs = await fill(v, src, n)
            print(f"  filled in {secs:.1f}s ({n / secs:,.0f} msgs/s published with confirms)", flush=True)
            keep("a. plain aio-pika consume+ack", *await plain_consume(v, src, n, p))

            await fill(v, src, n)
            keep(PLAIN_DIR, *await plain_durable(v, src, n, p, tmp / "plain"))
            files = sum(1 for e in os.scandir(tmp / "plain") if not e.name.endswith(".meta.json"))
            assert files == n, f"{files} files written by f, expected {n}"
            shutil.rmtree(tmp / "plain")

            if not args.no_relay:
                await fill(v, src, n)
                await purge(v, out)
                keep("b. plain aio-pika relay with confirms", *await plain_relay(v, src, out, n, p))
                assert await count(v, out) == n

            await fill(v, src, n)
            res = run_daemon(
                v,
                tmp / "dir",
                {
                    "source": {"instance": "mq", "queue": src, "prefetch": p},
                    "target": {"type": "directory", "path": str(tmp / "dir" / "out")},
                    "max_in_flight": args.max_in_flight,
                },
                n,
            )
            files = sum(1 for e in os.scandir(tmp / "dir" / "out") if not e.name.endswith(".meta.json"))
            assert files == n, f"{files} files in the directory target, expected {n}"
            keep(
                "c. conveyor -> directory",
                res["seconds"],
                res["cpu"],
                {"rss": rss_summary(res["rss"], n), "startup": res["startup"]},
                res["messages"],
            )
            shutil.rmtree(tmp / "dir")
            keep(RAW, *raw_durable_writes(tmp / "raw", n, p, BODY))
            shutil.rmtree(tmp / "raw")
            if args.no_relay:
                continue

            await fill(v, src, n)
            await purge(v, out)
            res = run_daemon(
                v,
                tmp / "relay",
                {
                    "source": {"instance": "mq", "queue": src, "prefetch": p},
                    "target": {"instance": "mq", "routing_key": out},
                    "max_in_flight": args.max_in_flight,
                },
                n,
            )
            assert await count(v, out) >= n
            keep(
                "d. conveyor -> rabbitmq (relay)",
                res["seconds"],
                res["cpu"],
                {"rss": rss_summary(res["rss"], n), "startup": res["startup"]},
                res["messages"],
            )
            shutil.rmtree(tmp / "relay")
    finally:
        delete_vhost(v)
        shutil.rmtree(tmp, ignore_errors=True)

    a = best["a. plain aio-pika consume+ack"]["rate"]
    b = best.get("b. plain aio-pika relay with confirms", {}).get("rate", 0.0)
    print("\nbest of", args.rounds, "round(s):")
    rows = [("side", "msgs/s", "ratio", "CPU s/1k msgs", "daemon RSS at 20% / 60% / 100%")]
    for name, res in sorted(best.items()):
        ref = "a" if name[0] in "cef" else "b"
        ratio = "" if name[0] in "ab" else f"{res['rate'] / (a if ref == 'a' else b):.2f}x of {ref}"
        if name[0] == "c":
            ratio = f"{res['rate'] / best[PLAIN_DIR]['rate']:.2f}x of f, " + ratio
            ratio += f", {res['rate'] / best[RAW]['rate']:.2f}x of e"
        rows.append((name, f"{res['rate']:,.0f}", ratio, f"{res['cpu']:.2f}", res.get("rss", "")))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    print("\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows))
    starts = [f"{k[:1]}: {v_['startup']:.1f}s" for k, v_ in best.items() if "startup" in v_]
    print("daemon start-up to first delivery (not in the rates):", ", ".join(starts))
    # The disk's sync time swings with other work on it: c against f of the same round, then the median.
    c, f = rounds["c. conveyor -> directory"], rounds[PLAIN_DIR]
    rate = [x[0] / y[0] for x, y in zip(c, f, strict=True)]
    cpu = [x[1] / y[1] for x, y in zip(c, f, strict=True)]
    print(f"c / f per round, msgs/s: {' '.join(f'{r:.2f}' for r in rate)}; median {statistics.median(rate):.2f}x")
    print(
        f"c / f per round, CPU per message: {' '.join(f'{r:.2f}' for r in cpu)}; median {statistics.median(cpu):.2f}x"
    )


if __name__ == "__main__":
    asyncio.run(main())
