"""Figures of the fault suite for the README's reliability section.

Each fault scenario calls :func:`record` with what it moved, lost and duplicated; lines are
appended (JSON) to ``$CONVEYOR_FAULT_REPORT`` (default ``/tmp/conveyor-fault-report.jsonl``).
``python -m tests.faultlog`` prints the totals; ``python -m tests.faultlog --reset`` empties the file
(run it before ``pytest -m fault``).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any


def report_path() -> Path:
    """Where scenario figures are appended."""
    return Path(os.environ.get("CONVEYOR_FAULT_REPORT", "/tmp/conveyor-fault-report.jsonl"))


def record(scenario: str, *, moved: int, lost: int, duplicates: int, **extra: Any) -> None:
    """Append one scenario's figures (``duplicates``: copies beyond one of an id in an idempotent target)."""
    line = {"scenario": scenario, "moved": moved, "lost": lost, "duplicates": duplicates, "at": time.time(), **extra}
    with open(report_path(), "a") as f:
        f.write(json.dumps(line) + "\n")


def summary(path: Path | None = None) -> dict[str, Any]:
    """Totals over every recorded scenario."""
    p = path or report_path()
    rows = [json.loads(line) for line in p.read_text().splitlines() if line.strip()] if p.exists() else []
    return {
        "scenarios": len(rows),
        "moved": sum(r["moved"] for r in rows),
        "lost": sum(r["lost"] for r in rows),
        "duplicates": sum(r["duplicates"] for r in rows),
        "rows": rows,
    }


def count_bodies(folder: Path) -> int:
    """Delivered bodies in a directory target (sidecars and temp files excluded), without reading them."""
    try:
        with os.scandir(folder) as it:
            return sum(1 for e in it if not e.name.endswith((".meta.json", ".tmp")) and e.is_file())
    except FileNotFoundError:
        return 0


def deliveries(log_lines: list[dict[str, Any]]) -> dict[tuple[str, str], int]:
    """(flow, payload id) -> how many times the target confirmed it, from a daemon's JSON debug log
    (the Deliverer's "delivered <name> in <t>s" line)."""
    out: dict[tuple[str, str], int] = {}
    for r in log_lines:
        if r.get("logger") == "conveyor.flow" and str(r.get("msg", "")).startswith("delivered ") \
                and r.get("payload_id") and " in " in str(r.get("msg")):
            key = (str(r.get("flow")), str(r["payload_id"]))
            out[key] = out.get(key, 0) + 1
    return out


def main(argv: list[str]) -> int:
    """Print the totals (or reset the file)."""
    if "--reset" in argv:
        report_path().unlink(missing_ok=True)
        return 0
    s = summary()
    for r in s["rows"]:
        extra = {k: v for k, v in r.items() if k not in ("scenario", "moved", "lost", "duplicates", "at")}
        print(f"{r['scenario']:<60} moved {r['moved']:>7}  lost {r['lost']}  duplicates {r['duplicates']}"
              + (f"  {extra}" if extra else ""))
    print(f"TOTAL: {s['scenarios']} scenarios, {s['moved']} items moved, {s['lost']} lost, "
          f"{s['duplicates']} duplicates")
    return 0 if s["lost"] == 0 and s["duplicates"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
