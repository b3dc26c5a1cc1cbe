"""Pub/Sub on the emulator, side by side in one run: N messages of 1 KiB pulled by

1. a plain google-cloud-pubsub subscriber whose callback acks (a child process),
1b. a plain google-cloud-pubsub subscriber that writes the files the directory target writes
   (body and sidecar per message, temporary names, ``syncfs``, renames, ``syncfs``, a batch of
   whatever arrived meanwhile, on one writer thread) and acks each message once its batch is
   durable (a child process): the fair reference for 3's CPU per message,
2. conveyor's PubsubSource alone, with an emit that acks at once (a child process): the connector's
   own cost, without the flow runtime, state store or target,
3. conveyor's daemon (``conveyor run``) into a directory target,
4. conveyor's daemon into a pubsub target (a second topic on the same emulator),

each from its own subscription of one topic (published once, batched), and

5. no emulator at all: a plain loop writing the files the directory target writes for N
   messages (body and sidecar under temporary names, ``syncfs``, renames, ``syncfs``) — what
   this machine's disk allowed at that moment, printed beside 3.

Each run is timed two ways, both printed: *steady*, from its first message to its last (the
ratio column), and *from start*, from the moment the process was spawned (interpreter
start-up, imports and connecting included; the daemon also opens its state store). CPU is
the process's own user + system time per message; peak RSS from /proc. The emulator's
streaming pull is the bottleneck (about 2k msgs/s here whatever the flow control), and two
cores are shared with other work: numbers are noisy.

A run ends by deleting its 2N output files. On a file system that skips recently deleted
inodes when it creates a file (ext4 without a journal, as on the VM the README's figures come
from), creating files is then several times slower for minutes: leave a few minutes between
runs, and compare row 3 with row 5 of the same run.

    python bench/bench_pubsub.py [--messages 50000] [--max-in-flight 256] [--directory-only]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.servers.pubsub_emulator

from tests.servers.ops import free_port
from tests.servers.pubsub_emulator import PubsubEmulator

from common import Daemon, durable_batch, raw_durable_writes, sidecar, table, wait_until, write_config

PLAIN = "plain google-cloud-pubsub subscriber (callback acks)"
PLAIN_DIR = "plain subscriber, the same durable files, then acks"
RAW = "no emulator: the directory target's file writes in a plain loop"


def publish(emu: PubsubEmulator, topic: str, n: int, size: int) -> float:
    """Publish ``n`` messages of ``size`` bytes in large batches; returns seconds taken."""
    from google.cloud import pubsub_v1

    pub = emu.publisher(
        batch_settings=pubsub_v1.types.BatchSettings(max_messages=1000, max_bytes=9_000_000, max_latency=0.05)
    )
    path = pub.topic_path(emu.project, topic)
    body = os.urandom(size)
    start = time.monotonic()
    futures = [pub.publish(path, body, n=str(i)) for i in range(n)]
    for f in futures:
        f.result(timeout=600)
    pub.stop()
    return time.monotonic() - start


def plain_child(host: str, project: str, subscription: str, n: int) -> None:
    """The reference: SubscriberClient.subscribe with a callback that acks; prints a JSON result."""
    import threading

    os.environ["PUBSUB_EMULATOR_HOST"] = host
    from google.cloud import pubsub_v1

    client = pubsub_v1.SubscriberClient()
    path = client.subscription_path(project, subscription)
    lock = threading.Lock()
    count = 0
    first = 0.0
    done = threading.Event()

    def callback(message: Any) -> None:
        nonlocal count, first
        message.ack()
        with lock:
            count += 1
            if count == 1:
                first = time.monotonic()
            if count >= n:
                done.set()

    future = client.subscribe(path, callback)
    done.wait(1800)
    end = time.monotonic()
    future.cancel()
    print(json.dumps({"count": count, "first": first, "end": end, **own_usage()}))


def plain_dir_child(host: str, project: str, subscription: str, n: int, folder: str) -> None:
    """The fair reference for the directory target: callbacks hand messages to one writer thread,
    which writes each batch durably and then acks its messages; prints a JSON result."""
    import threading

    os.environ["PUBSUB_EMULATOR_HOST"] = host
    from google.cloud import pubsub_v1

    out = Path(folder)
    out.mkdir(parents=True)
    client = pubsub_v1.SubscriberClient()
    path = client.subscription_path(project, subscription)
    cond = threading.Condition()
    arrived: list[Any] = []
    first = 0.0

    def callback(message: Any) -> None:
        nonlocal first
        with cond:
            if not first:
                first = time.monotonic()
            arrived.append(message)
            cond.notify()

    def files(batch: list[Any]) -> list[tuple[str, bytes, bytes]]:
        made = []
        for m in batch:
            message = {
                "id": m.message_id,
                "subscription": path,
                "attributes": dict(m.attributes),
                "ordering_key": m.ordering_key or None,
                "publish_time": m.publish_time.isoformat(),
                "delivery_attempt": m.delivery_attempt,
            }
            made.append((m.message_id, m.data, sidecar(m.message_id, "pubsub", m.data, message)))
        return made

    future = client.subscribe(path, callback)
    done = 0
    while done < n:
        with cond:
            while not arrived:
                cond.wait()
            batch, arrived[:] = arrived[:], []
        durable_batch(out, files(batch))
        for m in batch:
            m.ack()
        done += len(batch)
    end = time.monotonic()
    future.cancel()
    print(json.dumps({"count": done, "first": first, "end": end, **own_usage()}))


def own_usage() -> dict[str, float]:
    """This process's CPU seconds so far and peak RSS (KiB)."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    hwm = next(
        int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM:")
    )
    return {"cpu": r.ru_utime + r.ru_stime, "hwm_kib": hwm}


def source_child(host: str, project: str, subscription: str, n: int) -> None:
    """conveyor's PubsubSource with an emit that acks at once; prints a JSON result."""
    import asyncio

    from conveyor.brokers.pubsub.config import PubsubConfig, PubsubSourceConfig
    from conveyor.brokers.pubsub.instance import PubsubInstance
    from conveyor.interfaces import Context, Inbound
    from conveyor.payload import Spool
    from conveyor.status import StatusBoard
    from conveyor.stopping import StopSignal

    async def main() -> dict[str, float]:
        inst = PubsubInstance(
            "gcp",
            PubsubConfig(type="pubsub", project=project, emulator_host=host),
            Context(spool=Spool(Path(tempfile.gettempdir())), status=StatusBoard()),
        )
        source = inst.source("bench", PubsubSourceConfig(instance="gcp", subscription=subscription))
        count, first, done = 0, 0.0, asyncio.Event()

        async def emit(item: Inbound) -> None:
            nonlocal count, first
            await item.ack()
            count += 1
            if count == 1:
                first = time.monotonic()
            if count >= n:
                done.set()

        stop = StopSignal()
        task = asyncio.create_task(source.run(emit, stop))
        await done.wait()
        end = time.monotonic()
        usage = own_usage()  # before the shutdown's work
        stop.set()
        await task
        await inst.close()
        return {"count": count, "first": first, "end": end, **usage}

    print(json.dumps(asyncio.run(main())))


def run_child(mode: str, emu: PubsubEmulator, subscription: str, n: int, folder: str = "-") -> dict[str, Any]:
    """A child process's run; its times (CLOCK_MONOTONIC is one clock for all processes) made
    relative to the spawn."""
    spawn = time.monotonic()
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode, emu.host, emu.project, subscription, str(n), folder],
        capture_output=True,
        text=True,
        check=True,
        timeout=1900,
    )
    r = json.loads(out.stdout.strip().splitlines()[-1])
    return {**r, "seconds": r["end"] - spawn, "steady": r["end"] - r["first"]}


def delivered(port: int, flow: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=2) as r:
            return int(json.load(r)["flows"][flow]["delivered"])
    except (OSError, KeyError, ValueError):
        return 0


def run_daemon(
    base: Path, emu: PubsubEmulator, subscription: str, target: dict[str, Any], n: int, max_in_flight: int
) -> dict[str, Any]:
    """The daemon on one subscription until /status counts ``n`` delivered; peak RSS sampled meanwhile."""
    base.mkdir(parents=True)
    port = free_port()
    cfg = write_config(
        base,
        {"gcp": {"type": "pubsub", "project": emu.project, "emulator_host": emu.host}},
        {
            "b": {
                "source": {"instance": "gcp", "subscription": subscription, "max_messages": 1000},
                "target": target,
                "max_in_flight": max_in_flight,
            }
        },
        health={"listen": f"127.0.0.1:{port}"},
    )
    d = Daemon(cfg)
    start = time.monotonic()
    first = 0.0
    peak = 0

    def finished() -> bool:
        nonlocal first, peak
        peak = max(peak, d.status("VmHWM"))
        got = delivered(port, "b")
        if got and not first:
            first = time.monotonic()
        if d.proc.poll() is not None:
            raise RuntimeError(f"daemon exited with {d.proc.returncode}; see {base / 'daemon.log'}")
        return got >= n

    try:
        wait_until(finished, 1800, interval=0.05)
        end = time.monotonic()
        cpu = d.cpu_seconds()
    finally:
        d.stop()
    return {"count": n, "seconds": end - start, "steady": end - (first or start), "hwm_kib": peak, "cpu": cpu}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=50_000)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--max-in-flight", type=int, default=256)
    ap.add_argument("--directory-only", action="store_true", help="skip 2 and 4")
    ap.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        mode, host, project, sub, n, folder = args.child
        if mode == "plain-dir":
            plain_dir_child(host, project, sub, int(n), folder)
        else:
            (plain_child if mode == "plain" else source_child)(host, project, sub, int(n))
        return
    n = args.messages
    with tempfile.TemporaryDirectory(prefix="bench-pubsub-") as tmp:
        base = Path(tmp)
        emu = PubsubEmulator(base)
        emu.start()
        try:
            subs = {
                "plain": "bench-plain",
                "plain-dir": "bench-plain-dir",
                "source": "bench-source",
                "dir": "bench-dir",
                "pubsub": "bench-pubsub",
            }
            emu.create("bench-in")
            emu.create("bench-out")
            for s in subs.values():
                with emu.subscriber() as c:
                    c.create_subscription(
                        request={
                            "name": c.subscription_path(emu.project, s),
                            "topic": f"projects/{emu.project}/topics/bench-in",
                            "ack_deadline_seconds": 60,
                        }
                    )
            took = publish(emu, "bench-in", n, args.size)
            print(
                f"published {n} x {args.size} B in {took:.1f}s ({n / took:.0f} msgs/s) to {len(subs)} subscriptions",
                flush=True,
            )
            results = {PLAIN: run_child("plain", emu, subs["plain"], n)}
            print("plain done", flush=True)
            results[PLAIN_DIR] = run_child("plain-dir", emu, subs["plain-dir"], n, str(base / "plain-out"))
            print("plain with files done", flush=True)
            if not args.directory_only:
                results["conveyor PubsubSource alone (emit acks)"] = run_child("source", emu, subs["source"], n)
                print("source done", flush=True)
            results["conveyor -> directory"] = run_daemon(
                base / "dir", emu, subs["dir"], {"type": "directory", "path": str(base / "out")}, n, args.max_in_flight
            )
            print("directory done", flush=True)
            if not args.directory_only:
                results["conveyor -> pubsub topic"] = run_daemon(
                    base / "ps", emu, subs["pubsub"], {"instance": "gcp", "topic": "bench-out"}, n, args.max_in_flight
                )
                print("pubsub done", flush=True)
            seconds, cpu = raw_durable_writes(base / "raw", n, args.max_in_flight, os.urandom(args.size))
            results[RAW] = {"count": n, "seconds": seconds, "steady": seconds, "cpu": cpu, "hwm_kib": 0}
        finally:
            emu.stop()
    ref = results[PLAIN]["count"] / results[PLAIN]["steady"]
    ref_start = results[PLAIN]["count"] / results[PLAIN]["seconds"]
    ref_cpu = results[PLAIN_DIR]["cpu"] / results[PLAIN_DIR]["count"]
    rows: list[tuple[str, ...]] = [
        (
            "run",
            "msgs",
            "steady msgs/s",
            "vs plain",
            "from start msgs/s",
            "vs plain",
            "CPU ms/msg",
            "CPU vs plain with files",
            "peak RSS MiB",
        )
    ]
    for name, r in results.items():
        steady, start = r["count"] / r["steady"], r["count"] / r["seconds"]
        rows.append(
            (
                name,
                str(r["count"]),
                f"{steady:.0f}",
                f"{steady / ref:.2f}x",
                f"{start:.0f}",
                f"{start / ref_start:.2f}x",
                f"{1000 * r['cpu'] / r['count']:.2f}",
                f"{r['cpu'] / r['count'] / ref_cpu:.2f}x",
                f"{r['hwm_kib'] / 1024:.0f}" if r["hwm_kib"] else "-",
            )
        )
    print(table(rows))
    print(
        f"({n} messages of {args.size} B; conveyor: max_messages 1000, max_in_flight {args.max_in_flight}, "
        "directory target with fsync; steady: first to last message; from start: from the process's spawn; "
        "CPU: each process's own, from its spawn)"
    )


if __name__ == "__main__":
    main()
