"""Health endpoint latency while the daemon moves payloads.

The daemon runs as a child process; this process (a separate one) asks /healthz in a
loop with an aiohttp client while payloads flow, and reports the median and tail latency
next to the delivery rate measured over the same window (from /status). Idle latency
is measured first for reference. Two workloads:

- ``local``: small files local→directory (no fsync);
- ``rabbitmq``: 1 KiB messages from the local test broker (a fresh vhost) → directory,
  which moves more payloads per second than the file source on this machine.

    python bench/bench_health.py [--source local|rabbitmq|both] [--files 20000] [--dir /var/tmp]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from common import Daemon, table, write_config

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.servers.rabbitmq

from tests.servers.ops import free_port


async def delivered(s: aiohttp.ClientSession, base: str) -> int:
    async with s.get(base + "/status") as r:
        doc = await r.json()
    return int(doc["flows"]["f"]["delivered"])


async def sample(
    s: aiohttp.ClientSession, url: str, n: int | None, until: float | None, gap: float = 0.005
) -> list[float]:
    """Sequential GETs; latency of each in milliseconds."""
    out: list[float] = []
    while (n is None or len(out) < n) and (until is None or time.monotonic() < until):
        t0 = time.perf_counter()
        async with s.get(url) as r:
            await r.read()
            assert r.status in (200, 503)
        out.append((time.perf_counter() - t0) * 1000)
        await asyncio.sleep(gap)
    return out


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))]


async def measure(
    cfg: Path, port: int, n: int, go: Callable[[], Awaitable[None]] | None, label: str
) -> list[tuple[str, ...]]:
    """Start the daemon; with ``go``, sample idle latency first and call it to start the load
    (without, the load starts by itself); then sample under load."""
    d = Daemon(cfg)
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as s:
            for _ in range(400):
                try:
                    async with s.get(url + "/healthz"):
                        break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.05)
            idle = await sample(s, url + "/healthz", 300, None) if go is not None else []
            if go is not None:
                await go()
            while await delivered(s, url) == 0:  # noqa: ASYNC110 (the load has started)
                await asyncio.sleep(0.01)
            n0, t0 = await delivered(s, url), time.monotonic()
            busy: list[float] = []
            busy_metrics: list[float] = []
            while time.monotonic() - t0 < 120:
                busy += await sample(s, url + "/healthz", 50, None)
                busy_metrics += await sample(s, url + "/metrics", 2, None)
                if await delivered(s, url) >= n * 0.9:  # stop while the pipeline is still full
                    break
            n1, t1 = await delivered(s, url), time.monotonic()
    finally:
        d.stop()
    rate = (n1 - n0) / (t1 - t0)
    return [
        *([(f"GET /healthz, idle ({label})", *_stats(idle))] if idle else []),
        (f"GET /healthz while moving {rate:,.0f} payloads/s ({label})", *_stats(busy)),
        (f"GET /metrics, same window ({label})", *_stats(busy_metrics)),
        (f"payloads delivered in the window ({label})", f"{n1 - n0}", f"in {t1 - t0:.1f}s", "", "", ""),
    ]


def _config(base_dir: Path, port: int, instances: dict[str, Any], source: dict[str, Any]) -> Path:
    flows = {
        "f": {
            "source": source,
            "target": {"type": "directory", "path": str(base_dir / "out"), "fsync": False},
            "max_in_flight": 200,
        }
    }
    return write_config(base_dir, instances, flows, health={"listen": f"127.0.0.1:{port}"})


async def run_local(base_dir: Path, files: int) -> list[tuple[str, ...]]:
    port = free_port()
    src = base_dir / "disk" / "small"
    src.mkdir(parents=True)
    staging = base_dir / "disk" / "staging"
    staging.mkdir()
    cfg = _config(
        base_dir,
        port,
        {"disk": {"type": "local", "root": str(base_dir / "disk")}},
        {"instance": "disk", "path": "small", "poll_interval": "100ms", "min_age": "0s", "after": "delete"},
    )
    body = os.urandom(1024)
    for i in range(files):
        (staging / f"f{i:06}.dat").write_bytes(body)

    async def go() -> None:
        for f in staging.iterdir():  # all appear at once, as a partner's batch would
            os.rename(f, src / f.name)

    return await measure(cfg, port, files, go, "local")


async def run_rabbitmq(base_dir: Path, messages: int) -> list[tuple[str, ...]]:
    from tests.servers.rabbitmq import create_vhost, delete_vhost, ensure_broker

    from bench_rabbitmq import fill

    ensure_broker()
    v = create_vhost()
    try:
        port = free_port()
        queue = v.q("health-bench")
        await fill(v, queue, messages)
        cfg = _config(base_dir, port, {"mq": v.instance_config()}, {"instance": "mq", "queue": queue, "prefetch": 200})
        # The queue is full: the daemon consumes from the start (no idle sample).
        return await measure(cfg, port, messages, None, "rabbitmq")
    finally:
        delete_vhost(v)


def _stats(xs: list[float]) -> tuple[str, ...]:
    return (
        f"{statistics.median(xs):.2f}",
        f"{pct(xs, 0.95):.2f}",
        f"{pct(xs, 0.99):.2f}",
        f"{max(xs):.2f}",
        str(len(xs)),
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--source", choices=["local", "rabbitmq", "both"], default="both")
    ap.add_argument("--files", type=int, default=20_000, help="files (local) or messages (rabbitmq)")
    ap.add_argument("--dir", default=None, help="where to work (default: a temp folder)")
    args = ap.parse_args()
    rows: list[tuple[str, ...]] = [("measure", "median ms", "p95 ms", "p99 ms", "max ms", "samples")]
    for source in ["local", "rabbitmq"] if args.source == "both" else [args.source]:
        base = Path(tempfile.mkdtemp(prefix="conveyor-bench-health-", dir=args.dir))
        try:
            runner = run_local if source == "local" else run_rabbitmq
            rows += asyncio.run(runner(base, args.files))
        finally:
            shutil.rmtree(base, ignore_errors=True)
    print(table(rows))


if __name__ == "__main__":
    main()
