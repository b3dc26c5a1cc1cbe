"""One poll of a large local folder: selection by ``include`` / ``exclude`` / ``min_size`` /
``max_age`` / ``order`` beside today's ``pattern``, on the same folder and the same 1,000 files.

A folder gets ``--files`` files (100,000 by default), of which ``--match`` (1,000) are
``PAY_<n>.csv`` of 2 KiB; the rest are 100-byte ``LOG_<n>.txt``. Each variant runs in a fresh
process that polls the folder with conveyor's file source (local instance, SQLite ledger) and
hands every selected file to an intake that takes it and lets it go at once, so each poll lists,
selects, hashes and looks up the same 1,000 files:

- ``pattern``: ``pattern: PAY_*.csv``
- ``select``:  ``include: [PAY_*.csv], exclude: ['*.tmp', 'archive/**'], min_size: 1KiB,
  max_age: 30d, order: oldest``

Printed: the median time and CPU time per poll and the process's peak RSS for each, side by side, and the
ratio (select / pattern). Runs alternate pattern, select, pattern, select...

    python bench/bench_select.py [--files 100000] [--match 1000] [--polls 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from common import table

VARIANTS: dict[str, dict[str, Any]] = {
    "pattern": {"pattern": "PAY_*.csv"},
    "select": {
        "include": ["PAY_*.csv"],
        "exclude": ["*.tmp", "archive/**"],
        "min_size": "1KiB",
        "max_age": "30d",
        "order": "oldest",
    },
}


def make_folder(folder: Path, files: int, match: int) -> None:
    """``files`` files in ``folder``, ``match`` of them the 2 KiB CSVs both variants select."""
    folder.mkdir(parents=True)
    big, small = b"p" * 2048, b"l" * 100
    step = max(1, files // match)
    made = 0
    for i in range(files):
        if i % step == 0 and made < match:
            (folder / f"PAY_{i:06d}.csv").write_bytes(big)
            made += 1
        else:
            (folder / f"LOG_{i:06d}.txt").write_bytes(small)


async def child(variant: str, folder: Path, work: Path, polls: int) -> dict[str, Any]:
    """Poll ``folder`` ``polls`` times after one warm-up poll; per-poll seconds, files taken, peak RSS."""
    from conveyor.config.base import FileSourceConfig
    from conveyor.flows.delivery import Deliverer
    from conveyor.flows.filesource import FileSource, FileSourceDeps
    from conveyor.interfaces import Context
    from conveyor.payload.spool import Spool
    from conveyor.state.sqlite import SqliteStore
    from conveyor.status import StatusBoard
    from conveyor.supervisor import Backoff
    from conveyor.transfer.local.config import LocalConfig
    from conveyor.transfer.local.instance import LocalInstance

    status = StatusBoard()
    status.add_flow("f")
    spool = Spool(work / "spool")
    spool.prepare()
    store = SqliteStore(str(work / "state.db"), "bench")
    await store.open()
    inst = LocalInstance("box", LocalConfig(type="local", root=str(folder)), Context(spool=spool, status=status))
    await inst.check()
    deliverer = Deliverer("f", None, store, status, attempts=1, backoff=Backoff(0.01, 0.01), timeout=None, lease=300.0)  # type: ignore[arg-type]  # never called: the intake below takes nothing further
    src: FileSource

    async def submit(key: str, work_: Callable[[], Awaitable[None]]) -> bool:
        src._active.discard(key)  # let it go: the next poll selects it again, as a new file would be
        return True

    cfg = FileSourceConfig(instance="box", min_age=0, **VARIANTS[variant])
    src = FileSource(
        flow="f",
        instance="box",
        instance_type="local",
        fs=inst,
        config=cfg,
        deps=FileSourceDeps(deliverer=deliverer, store=store, spool=spool, status=status, submit=submit),
    )
    taken: list[int] = []
    real_take = src._take

    async def counting_take(files: list[Any], limit: int) -> int:
        n = await real_take(files, limit)
        taken[-1] += n
        return n

    src._take = counting_take  # type: ignore[method-assign]
    times, cpu = [], []
    for i in range(polls + 1):
        taken.append(0)
        t0, c0 = time.perf_counter(), time.process_time()
        await src.poll()
        if i:  # the first poll warms the page cache and the ledger
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)  # every thread of the process: the listing's too
    await inst.close()
    await store.close()
    return {
        "poll_s": times,
        "cpu_s": cpu,
        "taken": taken[-1],
        "rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }


def run_child(variant: str, folder: Path, polls: int) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix=f"conveyor-select-{variant}-"))
    try:
        cmd = [sys.executable, __file__, "--child", variant, "--folder", str(folder), "--work", str(work)]
        out = subprocess.run(
            [*cmd, "--polls", str(polls)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=100_000, help="files in the folder")
    ap.add_argument("--match", type=int, default=1_000, help="of which selected")
    ap.add_argument("--polls", type=int, default=5, help="timed polls per run (after one warm-up poll)")
    ap.add_argument("--rounds", type=int, default=3, help="runs of each variant, alternating")
    ap.add_argument("--child", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    ap.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(child(args.child, args.folder, args.work, args.polls))))
        return

    base = Path(tempfile.mkdtemp(prefix="conveyor-select-"))
    try:
        folder = base / "drop"
        make_folder(folder, args.files, args.match)
        runs: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
        for _ in range(args.rounds):
            for v in VARIANTS:
                runs[v].append(run_child(v, folder, args.polls))
    finally:
        shutil.rmtree(base, ignore_errors=True)

    def median_ms(v: str, key: str) -> float:
        return float(statistics.median(t for r in runs[v] for t in r[key])) * 1000

    def rss_mib(v: str) -> float:
        return float(max(r["rss_kib"] for r in runs[v])) / 1024

    def poll_ms(v: str) -> float:
        return median_ms(v, "poll_s")

    for v in VARIANTS:
        takes = {r["taken"] for r in runs[v]}
        assert takes == {args.match}, f"{v} took {takes} files per poll, not {args.match}"
    rows: list[tuple[str, ...]] = [("", "ms per poll", "CPU ms per poll", "peak RSS MiB", "files taken per poll")]
    rows += [
        (v, f"{poll_ms(v):.0f}", f"{median_ms(v, 'cpu_s'):.0f}", f"{rss_mib(v):.1f}", str(args.match)) for v in VARIANTS
    ]
    print(
        f"one poll of a local folder of {args.files:,} files, {args.match:,} selected; median of "
        f"{args.rounds * args.polls} polls ({args.rounds} runs x {args.polls}, cpus: {os.cpu_count()})"
    )
    print(table(rows))
    print(
        f"select / pattern: time per poll {poll_ms('select') / poll_ms('pattern'):.2f}x, "
        f"CPU per poll {median_ms('select', 'cpu_s') / median_ms('pattern', 'cpu_s'):.2f}x, "
        f"peak RSS {rss_mib('select') / rss_mib('pattern'):.2f}x"
    )


if __name__ == "__main__":
    main()
