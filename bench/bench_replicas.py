"""Three replicas against one, on one PostgreSQL state store: throughput and CPU per process.

Two workloads, each run with 1 and then 3 ``conveyor run`` processes (``replica: rN``) sharing
one fresh PostgreSQL database and one directory target:

* files: N small files (4 KiB) in one folder of a private OpenSSH sshd (needs root, like the tests),
  ``after: delete`` — every replica lists the folder, claims win files, only the winner downloads;
* messages: M messages (1 KiB) on one RabbitMQ queue (a fresh vhost), competing consumers.

Files: the replicas start on an empty folder and idle, then all files appear at once (one rename);
messages: the queue is full from the start and the clock starts at the first delivery. CPU is per
daemon process over that window (start-up excluded), plus the servers' processes (postgres,
beam.smp = RabbitMQ, sshd: approximate, it counts exited session processes only once reaped).
The machine has 2 cores shared with the servers and with other work: replicas can
only add throughput until the cores (or the broker) saturate, and the figures are noisy.

    python bench/bench_replicas.py [--files 1000] [--messages 20000] [--replicas 1,3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import Daemon, table, write_config

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.servers.*

ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def proc_cpu(names: tuple[str, ...]) -> dict[str, float]:
    """CPU seconds so far of every process whose name is one of ``names``, summed per name."""
    out = dict.fromkeys(names, 0.0)
    tick = os.sysconf("SC_CLK_TCK")
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        if name in out:
            parts = stat.rsplit(")", 1)[1].split()
            # utime, stime, and the children's (exited connection backends are counted by their parent)
            out[name] += sum(int(x) for x in parts[11:15]) / tick
    return out


def count_meta(folder: Path) -> int:
    try:
        return sum(1 for e in os.scandir(folder) if e.name.endswith(".meta.json"))
    except FileNotFoundError:
        return 0


async def new_db() -> str:
    import asyncpg

    name = f"conveyor_bench_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(ADMIN)
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    return ADMIN.rsplit("/", 1)[0] + "/" + name


async def drop_db(url: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(ADMIN)
    await conn.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
    await conn.close()


async def publish(url: str, queue: str, n: int) -> None:
    import aio_pika

    async with await aio_pika.connect(url) as conn:
        ch = await conn.channel()
        await ch.declare_queue(queue, durable=True)
        body = os.urandom(1000)
        for start in range(0, n, 1000):
            await asyncio.gather(
                *(
                    ch.default_exchange.publish(
                        aio_pika.Message(body + i.to_bytes(4, "big"), delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                        routing_key=queue,
                    )
                    for i in range(start, min(n, start + 1000))
                )
            )


def run_set(
    work: Path,
    k: int,
    instances: dict[str, Any],
    flow: dict[str, Any],
    out: Path,
    n: int,
    state: str,
    stage: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Start k replicas and time the run; CPU per process over the same window.

    With ``stage`` (files): the replicas start on an empty folder and idle for a few seconds, then
    ``stage()`` makes every file appear at once; the window starts there. Without (messages, the
    queue is full from the start): the window starts at the first delivery.
    """
    daemons = []
    for r in range(k):
        folder = work / f"r{r + 1}"
        folder.mkdir(parents=True)
        log = {"log": {"level": os.environ["BENCH_LOG"], "format": "json"}} if os.environ.get("BENCH_LOG") else {}
        cfg = write_config(folder, instances, {"f": flow}, state=f"{state}?lease=30", replica=f"r{r + 1}", **log)
        daemons.append(Daemon(cfg))
    deadline = time.monotonic() + 1800
    if stage is not None:
        time.sleep(4)  # interpreters started, stores open, polling an empty folder
        cpu0 = [d.cpu_seconds() for d in daemons]
        servers0 = proc_cpu(("postgres", "beam.smp", "sshd"))
        t0 = time.monotonic()
        stage()
        first = 0
    else:
        while count_meta(out) < 1:
            if time.monotonic() > deadline:
                raise TimeoutError("no delivery")
            time.sleep(0.005)
        cpu0 = [d.cpu_seconds() for d in daemons]
        servers0 = proc_cpu(("postgres", "beam.smp", "sshd"))
        t0 = time.monotonic()
        first = count_meta(out)
    while count_meta(out) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {count_meta(out)} of {n} delivered")
        time.sleep(0.02)
    elapsed = time.monotonic() - t0
    cpus = [d.cpu_seconds() - c for d, c in zip(daemons, cpu0, strict=True)]
    servers = {k2: v - servers0[k2] for k2, v in proc_cpu(("postgres", "beam.smp", "sshd")).items()}
    for d in daemons:
        d.stop()
    return {"rate": (n - first) / elapsed, "seconds": elapsed, "cpu": cpus, "servers": servers, "items": n - first}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--messages", type=int, default=20_000)
    ap.add_argument("--replicas", default="1,3")
    ap.add_argument("--max-in-flight", type=int, default=64)
    ap.add_argument(
        "--fsync",
        action="store_true",
        help="fsync the directory target (off by default: with several writers the shared disk's "
        "syncs dominate and hide what the replicas and the store cost)",
    )
    a = ap.parse_args()
    counts = [int(x) for x in a.replicas.split(",")]

    from tests.servers.rabbitmq import create_vhost, delete_vhost
    from tests.servers.ssh_keys import make_client_keys
    from tests.servers.sshd import start_sshd

    work = Path(tempfile.mkdtemp(prefix="conveyor-bench-replicas-"))
    srv = start_sshd(make_client_keys(work / "keys"))
    vhost = create_vhost()
    rows: list[tuple[str, ...]] = [
        (
            "workload",
            "replicas",
            "items/s",
            "seconds",
            "CPU s per daemon",
            "CPU ms/item (daemons)",
            "postgres CPU s",
            "rabbitmq CPU s",
            "sshd CPU s",
        )
    ]
    try:
        for k in counts:
            # files
            inbox = srv.root / f"in-{k}"
            inbox.mkdir()
            srv.chown(inbox)
            staged = srv.root / f"staged-{k}"
            staged.mkdir()
            srv.chown(staged)
            data = os.urandom(4096)
            for i in range(a.files):
                p = staged / f"f{i:05}.dat"
                p.write_bytes(data + i.to_bytes(4, "big"))
                srv.chown(p)

            def stage(staged: Path = staged, inbox: Path = inbox) -> None:
                inbox.rmdir()
                staged.rename(inbox)  # every file appears at once

            out = work / f"out-files-{k}"
            flow = {
                "source": {
                    "instance": "remote",
                    "path": inbox.name,
                    "poll_interval": "200ms",
                    "min_age": "0s",
                    "after": "delete",
                },
                "target": {"type": "directory", "path": str(out), "fsync": a.fsync},
                "max_in_flight": a.max_in_flight,
            }
            url = asyncio.run(new_db())
            try:
                res = run_set(work / f"files-{k}", k, {"remote": srv.instance_config()}, flow, out, a.files, url, stage)
            finally:
                asyncio.run(drop_db(url))
            rows.append(_row("sftp files", k, res))
            # messages
            queue = f"bench-{k}-{uuid.uuid4().hex[:6]}"
            asyncio.run(publish(vhost.url, queue, a.messages))
            out = work / f"out-msgs-{k}"
            flow = {
                "source": {"instance": "mq", "queue": queue, "prefetch": 200},
                "target": {"type": "directory", "path": str(out), "fsync": a.fsync},
                "max_in_flight": a.max_in_flight,
            }
            url = asyncio.run(new_db())
            try:
                res = run_set(work / f"msgs-{k}", k, {"mq": vhost.instance_config()}, flow, out, a.messages, url)
            finally:
                asyncio.run(drop_db(url))
            rows.append(_row("rabbitmq messages", k, res))
            print(table(rows), flush=True)
            print()
    finally:
        srv.stop()
        delete_vhost(vhost)
    print(f"nproc={os.cpu_count()}; load average at the end: {os.getloadavg()}")


def _row(name: str, k: int, res: dict[str, Any]) -> tuple[str, ...]:
    s = res["servers"]
    return (
        name,
        str(k),
        f"{res['rate']:.0f}",
        f"{res['seconds']:.1f}",
        " ".join(f"{c:.1f}" for c in res["cpu"]),
        f"{sum(res['cpu']) / res['items'] * 1000:.2f}",
        f"{s['postgres']:.1f}",
        f"{s['beam.smp']:.1f}",
        f"{s['sshd']:.1f}",
    )


if __name__ == "__main__":
    main()
