"""Fan-out: local → two directory targets (a ``targets:`` list) against local → one directory
target, payloads/s, in the same daemon run; the ratio is the figure (goal: at least 0.6).

    python bench/bench_fanout.py [--files 1000] [--rounds 10] [--dir /var/tmp]

One daemon runs both flows. Each round moves ``--files`` files of 4 KiB through each flow in turn
(the order alternating between rounds), timing each from the first file placed in the watched
folder to the last sidecar written (to both targets, for the fan-out flow). It prints the median
payloads/s of each flow and the median of the rounds' ratios.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from common import Daemon, table, wait_until, write_config


def count_meta(folder: Path) -> int:
    """Delivered payloads (sidecars) in a directory target."""
    try:
        return sum(1 for e in os.scandir(folder) if e.name.endswith(".meta.json"))
    except FileNotFoundError:
        return 0


def source(path: str) -> dict[str, object]:
    return {"instance": "disk", "path": path, "poll_interval": "100ms", "min_age": "0s", "after": "delete"}


def directory(out: Path) -> dict[str, object]:
    return {"type": "directory", "path": str(out), "filename": "{name}"}


def move_through(base: Path, folder: str, tag: str, n: int, outs: list[Path], total: int) -> float:
    """Place ``n`` prepared files in the watched ``folder`` and wait until every target holds
    ``total`` (this batch and the earlier ones); payloads/s."""
    staging = base / f"staging-{tag}"
    staging.mkdir()
    payload = os.urandom(4096)
    names = [f"{tag}-{i:05}.dat" for i in range(n)]
    for name in names:
        (staging / name).write_bytes(payload)
    src = base / "disk" / folder
    t0 = time.monotonic()
    for name in names:  # renames: each file appears whole
        os.rename(staging / name, src / name)
    wait_until(lambda: all(count_meta(o) >= total for o in outs), 900, 0.02)
    took = time.monotonic() - t0
    staging.rmdir()
    # Each file's after action (delete) and ledger record finish beside the next deliveries:
    # let them end before the other flow's turn, so neither flow's tail is timed in the other.
    wait_until(lambda: not any(os.scandir(src)), 300, 0.02)
    time.sleep(0.5)
    return n / took


def run(base: Path, n: int, rounds: int) -> tuple[list[float], list[float]]:
    """Payloads/s to one target and to two, each round in turn (the order alternating), in one daemon run."""
    for folder in ("one", "two"):
        (base / "disk" / folder).mkdir(parents=True)
    single, a, b = base / "out-one", base / "out-a", base / "out-b"
    flows = {
        "one": {"source": source("one"), "target": directory(single), "max_in_flight": 64},
        "two": {
            "source": source("two"),
            "targets": [{"name": "a", **directory(a)}, {"name": "b", **directory(b)}],
            "max_in_flight": 64,
        },
    }
    cfg = write_config(base, {"disk": {"type": "local", "root": str(base / "disk")}}, flows)
    d = Daemon(cfg)
    ones, twos = [], []
    try:
        time.sleep(1.5)  # started and idle
        for r in range(rounds):
            total = (r + 1) * n
            for fan in (r % 2 == 1, r % 2 == 0):
                if fan:
                    twos.append(move_through(base, "two", f"r{r}two", n, [a, b], total))
                else:
                    ones.append(move_through(base, "one", f"r{r}one", n, [single], total))
    finally:
        d.stop()
    return ones, twos


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=1000, help="files per flow and round")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--dir", default=None, help="where to work (default: a temp folder)")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="conveyor-bench-fanout-", dir=args.dir))
    try:
        ones, twos = run(base, args.files, args.rounds)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    # The ratio of each round's pair, measured seconds apart, then their median: a busy machine's
    # drift between rounds cancels out better than in a ratio of the medians.
    ratios = [t / o for o, t in zip(ones, twos, strict=True)]
    one, two = statistics.median(ones), statistics.median(twos)
    print(
        table(
            [
                ("measure", "payloads/s", "ratio"),
                (f"{args.files} x 4 KiB local -> 1 directory target", f"{one:,.0f}", "1.00"),
                (
                    f"{args.files} x 4 KiB local -> 2 directory targets (fan-out)",
                    f"{two:,.0f}",
                    f"{statistics.median(ratios):.2f}",
                ),
                (f"ratio per round ({args.rounds} rounds, medians above)", "", ", ".join(f"{r:.2f}" for r in ratios)),
            ]
        )
    )


if __name__ == "__main__":
    main()
