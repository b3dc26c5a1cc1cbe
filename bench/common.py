"""Helpers shared by the benchmarks: run the daemon as a process, watch its memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml


def write_config(folder: Path, instances: dict[str, Any], flows: dict[str, Any], **top: Any) -> Path:
    """A daemon config for a benchmark run (text logs at warning: logging is not what we measure)."""
    doc: dict[str, Any] = {
        "state": str(folder / "state.db"),
        "spool_dir": str(folder / "spool"),
        "health": {"listen": None},
        "log": {"level": "warning", "format": "text"},
    }
    doc.update(top)
    doc["instances"] = instances
    doc["flows"] = flows
    path = folder / "bench.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


class Daemon:
    """``conveyor run`` as a child process."""

    def __init__(self, config: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "conveyor", "run", "-c", str(config)],
            stderr=open(config.parent / "daemon.log", "wb"),  # noqa: SIM115
        )

    def status(self, field: str) -> int:
        """A /proc/PID/status field in KiB (VmRSS, VmHWM)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        return 0

    def cpu_seconds(self) -> float:
        """User + system CPU time so far."""
        parts = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        """SIGTERM and wait."""
        self.proc.terminate()
        self.proc.wait(60)


def wait_until(pred: Any, timeout: float, interval: float = 0.01) -> float:
    """Poll until ``pred()``; returns the time it took."""
    start = time.monotonic()
    while not pred():
        if time.monotonic() - start > timeout:
            raise TimeoutError("benchmark did not finish in time")
        time.sleep(interval)
    return time.monotonic() - start


def table(rows: list[tuple[str, ...]]) -> str:
    """A plain text table."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)


def raw_durable_writes(folder: Path, n: int, batch: int, body: bytes) -> tuple[float, float]:
    """The disk's ceiling for a directory target: the files it writes for ``n`` messages (body,
    ~600 B sidecar, temporary names, renames, ``syncfs`` before and after each batch) with
    nothing else; (seconds, CPU seconds)."""
    from conveyor.targets.fsync import sync_folder

    folder.mkdir(parents=True)
    meta = json.dumps({"id": "m" * 16, "pad": "x" * 560}, indent=2).encode()
    c0, t0 = time.process_time(), time.monotonic()
    for start in range(0, n, batch):
        ids = range(start, min(n, start + batch))
        for i in ids:
            (folder / f".m{i}.tmp").write_bytes(body)
            (folder / f".m{i}.meta.tmp").write_bytes(meta)
        sync_folder(folder)
        for i in ids:
            os.replace(folder / f".m{i}.tmp", folder / f"m{i}")
            os.replace(folder / f".m{i}.meta.tmp", folder / f"m{i}.meta.json")
        sync_folder(folder)
    return time.monotonic() - t0, time.process_time() - c0
