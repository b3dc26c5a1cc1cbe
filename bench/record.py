"""Run one benchmark and keep what it printed as a data file in ``bench/results/``.

    python bench/record.py [--label L] [--python PY] [--out DIR] -- bench/bench_local.py --files 10000

The file records the date, the commit of the code measured, the machine (CPU, cores, memory,
kernel, load average before and after), the exact command and its output, so that a figure
on the performance page can always be traced back to the run that produced it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    """What the figures depend on: CPU model, cores, memory, kernel, Python."""
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kib / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def event_loop(python: str) -> str:
    """The event loop of the benchmark's `conveyor run` daemons: uvloop when ``python`` can import it
    and ``CONVEYOR_EVENT_LOOP`` does not say asyncio (see docs/cli.md). Rows that drive a connector
    in a script of their own run on asyncio's loop."""
    if os.environ.get("CONVEYOR_EVENT_LOOP", "").lower() == "asyncio":
        return "asyncio"
    found = subprocess.run([python, "-c", "import uvloop"], capture_output=True).returncode == 0
    return "uvloop" if found else "asyncio"


def commit(cwd: Path) -> str:
    """The commit checked out in ``cwd``, with ``+dirty`` when the tree has changes."""
    sha = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True, text=True, check=True
    ).stdout.strip()
    return sha + ("+dirty" if dirty else "")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--label", default="", help="a word added to the file name (e.g. before, after)")
    ap.add_argument("--python", default=sys.executable, help="the interpreter that runs the benchmark")
    ap.add_argument("--cwd", default=".", help="the checkout whose code is measured")
    ap.add_argument("--out", default=str(RESULTS), help="where the result file goes")
    ap.add_argument("command", nargs=argparse.REMAINDER, help="the benchmark script and its arguments")
    a = ap.parse_args()
    cmd = [c for c in a.command if c != "--"] if a.command[:1] == ["--"] else a.command
    if not cmd:
        ap.error("name the benchmark script to run")
    cwd = Path(a.cwd).resolve()
    started = dt.datetime.now(dt.UTC)
    load0 = os.getloadavg()
    t0 = time.monotonic()
    proc = subprocess.run([a.python, *cmd], cwd=cwd, capture_output=True, text=True)
    took = time.monotonic() - t0
    sys.stdout.write(proc.stdout)
    sys.stderr.write(proc.stderr[-4000:])
    sha = commit(cwd)
    record: dict[str, Any] = {
        "date": started.isoformat(timespec="seconds"),
        "commit": sha,
        "machine": machine(),
        "command": " ".join(
            [
                *(f"{k}={shlex.quote(v)}" for k, v in sorted(os.environ.items()) if k.startswith("CONVEYOR_")),
                shlex.join(["python", *cmd]),
            ]
        ),
        "daemon_event_loop": event_loop(a.python),
        "exit_code": proc.returncode,
        "seconds": round(took, 1),
        "load_average": {"before": [round(x, 2) for x in load0], "after": [round(x, 2) for x in os.getloadavg()]},
        # paths in profiles are written from the checkout, wherever it was on the machine
        "output": proc.stdout.replace(f"{cwd}/", "").splitlines(),
    }
    name = Path(cmd[0]).stem.removeprefix("bench_")
    label = f"-{a.label}" if a.label else ""
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{started:%Y-%m-%dT%H%M}-{name}-{sha[:7]}{label}.json"
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(f"recorded: {path}", file=sys.stderr)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
