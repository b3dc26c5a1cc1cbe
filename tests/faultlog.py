"""Figures of the fault suite for the reliability page of the docs (docs/reliability.md).

Each fault scenario calls :func:`record` with what it moved, lost and duplicated, and how it
counted the duplicates (``counted_by``: where every delivery was seen); lines are
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


def record(
    scenario: str,
    *,
    moved: int,
    lost: int,
    duplicates: int,
    counted_by: str | None = None,
    redelivered: int = 0,
    **extra: Any,
) -> None:
    """Append one scenario's figures.

    ``duplicates``: second deliveries of an id that nothing excuses. ``redelivered``: second
    deliveries after a kill -9 fell between the target's answer and the ledger's record (at
    least once). ``counted_by``: how every delivery was counted at the target (None: the
    scenario's own checks, not a count at the target).
    """
    line = {
        "scenario": scenario,
        "moved": moved,
        "lost": lost,
        "duplicates": duplicates,
        "redelivered": redelivered,
        "counted_by": counted_by,
        "at": time.time(),
        **extra,
    }
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
        "redelivered": sum(r.get("redelivered", 0) for r in rows),
        "counted": sum(1 for r in rows if r.get("counted_by")),
        "rows": rows,
    }


def line(s: dict[str, Any]) -> str:
    """The one-line summary of :func:`summary`'s totals."""
    return (
        f"fault scenarios: {s['scenarios']} run, {s['moved']} items moved, {s['lost']} lost, "
        f"{s['duplicates']} duplicates, {s['redelivered']} redelivered after a kill -9 before the ledger "
        f"recorded them; deliveries counted at the target in {s['counted']} of {s['scenarios']}"
    )


def refused_twice(log_lines: list[dict[str, Any]], flow: str) -> int:
    """Second writes a ``directory`` target with ``exists: fail`` and no sidecar refused (each
    names an existing file with other bytes), from a daemon's JSON log. A repeat of the same
    bytes is not refused: :func:`deliveries` counts it."""
    return sum(
        1
        for r in log_lines
        if r.get("flow") == flow and any(m in str(r.get("msg", "")) for m in ("already exists", "already holds"))
    )


COUNTING_DIRECTORY = {"type": "directory", "sidecar": False, "exists": "fail"}
"""A directory target that refuses other bytes at a name already written, so a second payload
under one name is refused and logged (a repeat of the same bytes is delivered again, and
counted by :func:`deliveries`)."""


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
        if (
            r.get("logger") == "conveyor.flow"
            and str(r.get("msg", "")).startswith("delivered ")
            and r.get("payload_id")
            and " in " in str(r.get("msg"))
        ):
            key = (str(r.get("flow")), str(r["payload_id"]))
            out[key] = out.get(key, 0) + 1
    return out


def main(argv: list[str]) -> int:
    """Print the totals (or reset the file)."""
    if "--reset" in argv:
        report_path().unlink(missing_ok=True)
        return 0
    s = summary()
    shown = ("scenario", "moved", "lost", "duplicates", "redelivered", "counted_by", "at")
    for r in s["rows"]:
        extra = {k: v for k, v in r.items() if k not in shown}
        print(
            f"{r['scenario']:<60} moved {r['moved']:>7}  lost {r['lost']}  duplicates {r['duplicates']}"
            f"  redelivered {r.get('redelivered', 0)}  counted by {r.get('counted_by') or '-'}"
            + (f"  {extra}" if extra else "")
        )
    print(line(s))
    return 0 if s["lost"] == 0 and s["duplicates"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
