"""Three replicas against one, on one PostgreSQL state store: throughput and CPU per process.

Two workloads, each run with 1 and then 3 ``conveyor run`` processes (``replica: rN``) sharing
one fresh PostgreSQL database and one directory target:

* files: N small files (4 KiB) in one folder of a private OpenSSH sshd (needs root, like the tests),
  ``after: delete`` — every replica lists the folder, claims win files, only the winner downloads;
* messages: M messages (1 KiB) on one RabbitMQ queue (a fresh vhost), competing consumers.

Throughput is timed from the first delivery to the last (interpreter start-up excluded). CPU is
per daemon process, plus the servers' processes (postgres, beam.smp = RabbitMQ, sshd) over the
same run. The machine has 2 cores shared with the servers and with other work: replicas can
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
            await asyncio.gather(*(ch.default_exchange.publish(
                aio_pika.Message(body + i.to_bytes(4, "big"), delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=queue) for i in range(start, min(n, start + 1000))))


def run_set(work: Path, k: int, instances: dict[str, Any], flow: dict[str, Any], out: Path, n: int,
            state: str) -> dict[str, Any]:
    """Start k replicas, time the first to the last delivery, stop them; CPU per process."""
    servers0 = proc_cpu(("postgres", "beam.smp", "sshd"))
    daemons = []
    for r in range(k):
        folder = work / f"r{r + 1}"
        folder.mkdir(parents=True)
        cfg = write_config(folder, instances, {"f": flow}, state=f"{state}?lease=30", replica=f"r{r + 1}")
        daemons.append(Daemon(cfg))
    deadline = time.monotonic() + 1800
    while count_meta(out) < 1:
        if time.monotonic() > deadline:
            raise TimeoutError("no delivery")
        time.sleep(0.005)
    t0 = time.monotonic()
    first = count_meta(out)
    while count_meta(out) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {count_meta(out)} of {n} delivered")
        time.sleep(0.05)
    elapsed = time.monotonic() - t0
    cpus = [d.cpu_seconds() for d in daemons]
    for d in daemons:
        d.stop()
    servers = {k2: v - servers0[k2] for k2, v in proc_cpu(("postgres", "beam.smp", "sshd")).items()}
    return {"rate": (n - first) / elapsed, "seconds": elapsed, "cpu": cpus, "servers": servers}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--messages", type=int, default=20_000)
    ap.add_argument("--replicas", default="1,3")
    ap.add_argument("--max-in-flight", type=int, default=64)
    a = ap.parse_args()
    counts = [int(x) for x in a.replicas.split(",")]

    from tests.servers.rabbitmq import create_vhost, delete_vhost
    from tests.servers.ssh_keys import make_client_keys
    from tests.servers.sshd import start_sshd

    work = Path(tempfile.mkdtemp(prefix="conveyor-bench-replicas-"))
    srv = start_sshd(make_client_keys(work / "keys"))
    vhost = create_vhost()
    rows: list[tuple[str, ...]] = [("workload", "replicas", "items/s", "seconds", "CPU s per daemon",
                                    "CPU ms/item (daemons)", "postgres CPU s", "rabbitmq CPU s", "sshd CPU s")]
    try:
        for k in counts:
            # files
            inbox = srv.root / f"in-{k}"
            inbox.mkdir()
            srv.chown(inbox)
            data = os.urandom(4096)
            for i in range(a.files):
                p = inbox / f"f{i:05}.dat"
                p.write_bytes(data + i.to_bytes(4, "big"))
                srv.chown(p)
            out = work / f"out-files-{k}"
            flow = {"source": {"instance": "remote", "path": inbox.name, "poll_interval": "200ms", "min_age": "0s",
                               "after": "delete"},
                    "target": {"type": "directory", "path": str(out)}, "max_in_flight": a.max_in_flight}
            url = asyncio.run(new_db())
            try:
                res = run_set(work / f"files-{k}", k, {"remote": srv.instance_config()}, flow, out, a.files, url)
            finally:
                asyncio.run(drop_db(url))
            rows.append(_row("sftp files", k, res, a.files))
            # messages
            queue = f"bench-{k}-{uuid.uuid4().hex[:6]}"
            asyncio.run(publish(vhost.url, queue, a.messages))
            out = work / f"out-msgs-{k}"
            flow = {"source": {"instance": "mq", "queue": queue, "prefetch": 200},
                    "target": {"type": "directory", "path": str(out)}, "max_in_flight": a.max_in_flight}
            url = asyncio.run(new_db())
            try:
                res = run_set(work / f"msgs-{k}", k, {"mq": vhost.instance_config()}, flow, out, a.messages, url)
            finally:
                asyncio.run(drop_db(url))
            rows.append(_row("rabbitmq messages", k, res, a.messages))
            print(table(rows), flush=True)
            print()
    finally:
        srv.stop()
        delete_vhost(vhost)
    print(f"nproc={os.cpu_count()}; load average at the end: {os.getloadavg()}")


def _row(name: str, k: int, res: dict[str, Any], n: int) -> tuple[str, ...]:
    s = res["servers"]
    return (name, str(k), f"{res['rate']:.0f}", f"{res['seconds']:.1f}", " ".join(f"{c:.1f}" for c in res["cpu"]),
            f"{sum(res['cpu']) / n * 1000:.2f}", f"{s['postgres']:.1f}", f"{s['beam.smp']:.1f}", f"{s['sshd']:.1f}")


if __name__ == "__main__":
    main()
