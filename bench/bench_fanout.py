"""Fan-out: local → two directory targets (a ``targets:`` list) against local → one directory
target, payloads/s, in the same daemon run; the ratio is the figure (goal: at least 0.6).

    python bench/bench_fanout.py [--files 5000] [--rounds 3] [--dir /var/tmp]

Each round starts one daemon with both flows, moves ``--files`` files of 4 KiB through each flow
in turn (the order alternates between rounds) and times each from the first file placed in the
watched folder to the last sidecar written (to both targets, for the fan-out flow). It prints the
median payloads/s of each flow and the median of the rounds' ratios.
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


def move_through(base: Path, folder: str, n: int, outs: list[Path]) -> float:
    """Place ``n`` prepared files in the watched ``folder`` and wait until every target has them;
    payloads/s."""
    staging = base / f"staging-{folder}"
    staging.mkdir()
    payload = os.urandom(4096)
    for i in range(n):
        (staging / f"f{i:05}.dat").write_bytes(payload)
    src = base / "disk" / folder
    t0 = time.monotonic()
    for i in range(n):  # renames: each file appears whole
        os.rename(staging / f"f{i:05}.dat", src / f"f{i:05}.dat")
    wait_until(lambda: all(count_meta(o) >= n for o in outs), 900, 0.05)
    return n / (time.monotonic() - t0)


def one_round(base: Path, n: int, fan_first: bool) -> tuple[float, float]:
    """(payloads/s to one target, payloads/s to two) in one daemon run."""
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
    try:
        time.sleep(1.5)  # started and idle
        if fan_first:
            two = move_through(base, "two", n, [a, b])
            one = move_through(base, "one", n, [single])
        else:
            one = move_through(base, "one", n, [single])
            two = move_through(base, "two", n, [a, b])
    finally:
        d.stop()
    return one, two


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", default=None, help="where to work (default: a temp folder)")
    args = ap.parse_args()
    ones, twos = [], []
    for r in range(args.rounds):
        base = Path(tempfile.mkdtemp(prefix="conveyor-bench-fanout-", dir=args.dir))
        try:
            one, two = one_round(base, args.files, fan_first=r % 2 == 1)
        finally:
            shutil.rmtree(base, ignore_errors=True)
        ones.append(one)
        twos.append(two)
    # The ratio of each round's pair, measured minutes apart at most, then their median: a busy
    # machine's drift between rounds cancels out better than in a ratio of the medians.
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
