"""The added cost per payload of the PostgreSQL state store against SQLite (goal: under 20%).

Two measurements, each as alternating rounds (sqlite, postgres, sqlite, ...; the round with the
median wall time is kept: this disk has minutes when it creates files ten times faster, and a
best-of would compare one store's lucky round with the other's ordinary one):

1. end to end: the daemon (a real process) moves N small local files into a directory target
   (fsync on), once with ``state: <file>`` and once with ``state: postgresql://...``:
   wall time per payload, daemon CPU per payload, and PostgreSQL server CPU per payload
   (every ``postgres`` process on the machine, so other users of the server count too);
2. the store alone: claim → delivered → settled for N items, 16 at a time, in this process.

    python bench/bench_store.py [--files 5000] [--items 5000] [--rounds 3] [--pg postgresql://postgres@127.0.0.1/postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import TypeVar

from common import Daemon, table, wait_until, write_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


T = TypeVar("T", bound=tuple[float, ...])


def count_meta(folder: Path) -> int:
    """Delivered payloads (sidecars) in a directory target."""
    try:
        return sum(1 for e in os.scandir(folder) if e.name.endswith(".meta.json"))
    except FileNotFoundError:
        return 0


def postgres_cpu() -> float:
    """CPU seconds used so far by every process named postgres."""
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if "(postgres)" not in stat:
            continue
        parts = stat.rsplit(")", 1)[1].split()
        total += sum(int(x) for x in parts[11:15])  # with exited children (connection backends)
    return total / os.sysconf("SC_CLK_TCK")


async def new_database(admin: str) -> str:
    import asyncpg

    name = f"conveyor_bench_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(admin)
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    return admin.rsplit("/", 1)[0] + "/" + name


async def drop_database(admin: str, url: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(admin)
    await conn.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
    await conn.close()


def end_to_end(base: Path, state: str, n: int) -> tuple[float, float, float]:
    """(wall s, daemon CPU s, postgres CPU s) per payload for n 1 KiB files local → directory,
    measured once the daemon is up and idle (start-up excluded)."""
    src = base / "disk" / "in"
    src.mkdir(parents=True)
    out = base / "out"
    payload = os.urandom(1024)
    staged = base / "disk" / "staged"
    staged.mkdir()
    for i in range(n):
        (staged / f"f{i:05}.dat").write_bytes(payload + i.to_bytes(4, "big"))
    flow = {
        "source": {"instance": "disk", "path": "in", "poll_interval": "100ms", "min_age": "0s", "after": "delete"},
        "target": {"type": "directory", "path": str(out)},
        "max_in_flight": 64,
    }
    cfg = write_config(base, {"disk": {"type": "local", "root": str(base / "disk")}}, {"f": flow}, state=state)
    d = Daemon(cfg)
    time.sleep(3)  # started, store open, idle polls
    cpu0 = d.cpu_seconds()
    pg0 = postgres_cpu()
    t0 = time.monotonic()
    os.rename(staged, src.parent / "in2")  # all files appear at once (one rename of their folder)
    src.rmdir()
    os.rename(src.parent / "in2", src)
    wait_until(lambda: count_meta(out) >= n, 900, 0.05)
    elapsed = time.monotonic() - t0
    cpu = d.cpu_seconds() - cpu0
    pg = postgres_cpu() - pg0
    d.stop()
    return elapsed / n, cpu / n, pg / n


async def store_only(state: str, n: int, owner: str = "bench") -> tuple[float, float]:
    """(wall s, this process's CPU s) per item for claim → delivered → settled, 16 at a time."""
    from conveyor.state import open_store

    store = open_store(state, owner)
    await store.open()
    sem = asyncio.Semaphore(16)

    async def one(i: int) -> None:
        async with sem:
            pid = f"item-{i}"
            assert await store.claim("f", pid, {"name": pid, "size": 1024}, 300)
            await store.delivered("f", pid)
            await store.settled("f", pid)

    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.monotonic()
    await asyncio.gather(*(one(i) for i in range(n)))
    elapsed = time.monotonic() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    await store.close()
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return elapsed / n, cpu / n


def pct(a: float, b: float) -> str:
    return f"{(b / a - 1) * 100:+.0f}%"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=5000)
    ap.add_argument("--items", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres")
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    e2e: dict[str, list[tuple[float, float, float]]] = {"sqlite": [], "postgres": []}
    raw: dict[str, list[tuple[float, float]]] = {"sqlite": [], "postgres": []}
    for _ in range(args.rounds):
        for kind in ("sqlite", "postgres"):
            with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
                base = Path(tmp)
                url = asyncio.run(new_database(args.pg)) if kind == "postgres" else str(base / "state.db")
                try:
                    e2e[kind].append(end_to_end(base / "e2e", url, args.files))
                finally:
                    if kind == "postgres":
                        asyncio.run(drop_database(args.pg, url))
                url = asyncio.run(new_database(args.pg)) if kind == "postgres" else str(base / "raw.db")
                try:
                    raw[kind].append(asyncio.run(store_only(url, args.items)))
                finally:
                    if kind == "postgres":
                        asyncio.run(drop_database(args.pg, url))
    s, p = median_round(e2e["sqlite"]), median_round(e2e["postgres"])
    rs, rp = median_round(raw["sqlite"]), median_round(raw["postgres"])
    us = 1e6
    print(
        f"end to end: {args.files} x 1 KiB local files -> directory target (fsync), max_in_flight 64, "
        f"median of {args.rounds} alternating rounds"
    )
    print(
        table(
            [
                (
                    "store",
                    "wall us/payload",
                    "payloads/s",
                    "daemon CPU us/payload",
                    "postgres CPU us/payload",
                    "total CPU us/payload",
                ),
                (
                    "sqlite",
                    f"{s[0] * us:.0f}",
                    f"{1 / s[0]:.0f}",
                    f"{s[1] * us:.0f}",
                    f"{s[2] * us:.0f}",
                    f"{(s[1] + s[2]) * us:.0f}",
                ),
                (
                    "postgres",
                    f"{p[0] * us:.0f}",
                    f"{1 / p[0]:.0f}",
                    f"{p[1] * us:.0f}",
                    f"{p[2] * us:.0f}",
                    f"{(p[1] + p[2]) * us:.0f}",
                ),
                ("added", pct(s[0], p[0]), "", pct(s[1], p[1]), "", pct(s[1] + s[2], p[1] + p[2])),
            ]
        )
    )
    print(f"\nstore alone: {args.items} items claim -> delivered -> settled, 16 at a time")
    print(
        table(
            [
                ("store", "wall us/item", "client CPU us/item"),
                ("sqlite", f"{rs[0] * us:.0f}", f"{rs[1] * us:.0f}"),
                ("postgres", f"{rp[0] * us:.0f}", f"{rp[1] * us:.0f}"),
            ]
        )
    )
    print("\nall rounds (wall us/payload end to end):", {k: [round(v[0] * us) for v in vs] for k, vs in e2e.items()})


def median_round(rounds: list[T]) -> T:
    """The round whose wall time (first field) is the median (the lower one of an even count)."""
    return sorted(rounds)[(len(rounds) - 1) // 2]


if __name__ == "__main__":
    main()
