"""local → directory: 10,000 files of 4 KiB (files/s), and one large file against `cp` (MB/s),
with the daemon's peak RSS.

    python bench/bench_local.py [--files 10000] [--size-mib 2048] [--dir /var/tmp]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
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


def flow(out: Path, path: str) -> dict[str, object]:
    return {
        "source": {"instance": "disk", "path": path, "poll_interval": "100ms", "min_age": "0s", "after": "delete"},
        "target": {"type": "directory", "path": str(out), "filename": "{name}"},
        "max_in_flight": 64,
    }


def small_files(base: Path, n: int) -> tuple[float, int]:
    src = base / "disk" / "small"
    src.mkdir(parents=True)
    out = base / "out-small"
    cfg = write_config(base, {"disk": {"type": "local", "root": str(base / "disk")}}, {"small": flow(out, "small")})
    payload = os.urandom(4096)
    d = Daemon(cfg)
    time.sleep(1.5)  # started and idle
    t0 = time.monotonic()
    for i in range(n):
        (src / f"f{i:05}.dat").write_bytes(payload)
    wait_until(lambda: count_meta(out) >= n, 600, 0.05)
    elapsed = time.monotonic() - t0
    rss = d.status("VmHWM")
    d.stop()
    return n / elapsed, rss


def big_file(base: Path, size_mib: int) -> tuple[float, float, float, int]:
    src = base / "disk" / "big"
    src.mkdir(parents=True)
    staging = base / "staging.bin"
    with open(staging, "wb") as f:
        block = os.urandom(1 << 20)
        for _ in range(size_mib):
            f.write(block)
    size = staging.stat().st_size
    # cp of the same file, same disk, same (warm) cache.
    t0 = time.monotonic()
    subprocess.run(["cp", str(staging), str(base / "cp-copy.bin")], check=True)
    cp_s = time.monotonic() - t0
    t0 = time.monotonic()
    subprocess.run(["sync"], check=True)
    cp_sync_s = cp_s + time.monotonic() - t0
    (base / "cp-copy.bin").unlink()
    out = base / "out-big"
    cfg = write_config(
        base,
        {"disk": {"type": "local", "root": str(base / "disk")}},
        {"big": flow(out, "big")},
        state=str(base / "state-big.db"),
    )
    d = Daemon(cfg)
    time.sleep(1.5)
    os.rename(staging, src / "big.bin")  # appears whole: the copy starts at the next poll
    t0 = time.monotonic()
    wait_until(lambda: count_meta(out) >= 1, 600, 0.01)
    conveyor_s = time.monotonic() - t0
    rss = d.status("VmHWM")
    d.stop()
    mb = size / 1e6
    return mb / cp_s, mb / cp_sync_s, mb / conveyor_s, rss


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--size-mib", type=int, default=2048)
    ap.add_argument("--dir", default=None, help="where to work (default: a temp folder)")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="conveyor-bench-", dir=args.dir))
    try:
        fps, rss_small = small_files(base, args.files)
        cp, cp_sync, conv, rss_big = big_file(base, args.size_mib)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(
        table(
            [
                ("measure", "conveyor", "reference", "ratio"),
                (f"{args.files} x 4 KiB local->directory", f"{fps:,.0f} files/s", "-", "-"),
                (f"{args.size_mib} MiB file, MB/s vs cp", f"{conv:,.0f}", f"{cp:,.0f} (cp)", f"{conv / cp:.2f}"),
                (
                    f"{args.size_mib} MiB file, MB/s vs cp+sync",
                    f"{conv:,.0f}",
                    f"{cp_sync:,.0f} (cp; sync)",
                    f"{conv / cp_sync:.2f}",
                ),
                ("daemon peak RSS, small files", f"{rss_small / 1024:.0f} MB", "", ""),
                ("daemon peak RSS, large file", f"{rss_big / 1024:.0f} MB", "", ""),
            ]
        )
    )


if __name__ == "__main__":
    main()
