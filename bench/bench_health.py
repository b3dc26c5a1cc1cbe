"""Health endpoint latency while the daemon moves small files local→directory.

The daemon runs as a child process; this process (a separate one) asks /healthz in a
loop with an aiohttp client while files flow, and reports the median and tail latency
next to the delivery rate measured over the same window (from /status). Idle latency
is measured first for reference.

    python bench/bench_health.py [--files 20000] [--dir /var/tmp]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp

from common import Daemon, table, write_config


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def delivered(s: aiohttp.ClientSession, base: str) -> int:
    async with s.get(base + "/status") as r:
        doc = await r.json()
    return int(doc["flows"]["small"]["delivered"])


async def sample(s: aiohttp.ClientSession, url: str, n: int | None, until: float | None,
                 gap: float = 0.005) -> list[float]:
    """Sequential GETs; latency of each in milliseconds."""
    out = []
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


async def run(base_dir: Path, files: int) -> list[tuple[str, ...]]:
    port = free_port()
    src = base_dir / "disk" / "small"
    src.mkdir(parents=True)
    staging = base_dir / "disk" / "staging"
    staging.mkdir()
    out = base_dir / "out"
    flows = {"small": {"source": {"instance": "disk", "path": "small", "poll_interval": "100ms", "min_age": "0s",
                                  "after": "delete"},
                       "target": {"type": "directory", "path": str(out), "filename": "{name}", "fsync": False},
                       "max_in_flight": 64}}
    cfg = write_config(base_dir, {"disk": {"type": "local", "root": str(base_dir / "disk")}}, flows,
                       health={"listen": f"127.0.0.1:{port}"})
    body = os.urandom(1024)
    for i in range(files):
        (staging / f"f{i:06}.dat").write_bytes(body)
    d = Daemon(cfg)
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as s:
            for _ in range(200):
                try:
                    async with s.get(url + "/healthz"):
                        break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.05)
            idle = await sample(s, url + "/healthz", 300, None)
            idle_status = await sample(s, url + "/status", 100, None)
            for f in staging.iterdir():  # all appear at once, as a partner's batch would
                os.rename(f, src / f.name)
            await asyncio.sleep(0.3)  # first poll under way
            n0, t0 = await delivered(s, url), time.monotonic()
            busy: list[float] = []
            busy_metrics: list[float] = []
            while time.monotonic() - t0 < 60:
                busy += await sample(s, url + "/healthz", 50, None)
                busy_metrics += await sample(s, url + "/metrics", 2, None)
                n = await delivered(s, url)
                if n >= files - 64 * 4:  # stop while the pipeline is still full
                    break
            n1, t1 = await delivered(s, url), time.monotonic()
    finally:
        d.stop()
    rate = (n1 - n0) / (t1 - t0)
    return [
        ("measure", "median ms", "p95 ms", "p99 ms", "max ms", "samples"),
        ("GET /healthz, idle", *_stats(idle)),
        ("GET /status, idle", *_stats(idle_status)),
        (f"GET /healthz while moving {rate:,.0f} payloads/s", *_stats(busy)),
        ("GET /metrics, same window", *_stats(busy_metrics)),
        ("payloads delivered in the window", f"{n1 - n0}", f"in {t1 - t0:.1f}s", "", "", ""),
    ]


def _stats(xs: list[float]) -> tuple[str, ...]:
    return (f"{statistics.median(xs):.2f}", f"{pct(xs, 0.95):.2f}", f"{pct(xs, 0.99):.2f}", f"{max(xs):.2f}",
            str(len(xs)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=20_000)
    ap.add_argument("--dir", default=None, help="where to work (default: a temp folder)")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="conveyor-bench-health-", dir=args.dir))
    try:
        rows = asyncio.run(run(base, args.files))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(table(rows))


if __name__ == "__main__":
    main()
