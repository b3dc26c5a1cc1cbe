"""Figures of the hostile suite, gathered as it runs and given out at the end of the session.

Each case records what it came to (escapes, forged sidecars, items lost, failed or not), each
daemon whether it crashed and its peak RSS, and each class that all of its cases ran. The terminal
summary prints :func:`line`; after a session in which every class ran completely,
:func:`document` is recorded (with ``CONVEYOR_FIGURES``) as ``hostile.json``, which
``scripts/docs`` puts on docs/reliability.md: the page quotes a run, not typed-in numbers.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any, Protocol

CLASSES = ("sftp", "ftp", "rabbitmq", "pubsub", "local")
REPO = Path(__file__).resolve().parents[2]

_cases: list[dict[str, Any]] = []
_daemons: list[dict[str, Any]] = []
_complete: dict[str, int] = {}


class _Outcome(Protocol):
    problems: list[str]
    escapes: int
    forged: int
    lost: int


def record(cls: str, case: str, group: str, o: _Outcome) -> None:
    """One case's outcome."""
    _cases.append(
        {
            "class": cls,
            "case": case,
            "group": group,
            "escapes": o.escapes,
            "forged": o.forged,
            "lost": o.lost,
            "failed": bool(o.problems),
            "problems": [p[:300] for p in o.problems],
        }
    )


def daemon(cls: str, group: str, *, crashed: bool, rss_mb: float) -> None:
    """One daemon's end: whether it crashed (died, hung on stop, unhealthy) and its peak RSS."""
    _daemons.append({"class": cls, "group": group, "crashed": crashed, "rss_mb": round(rss_mb, 1)})


def complete(cls: str, cases: int) -> None:
    """Every case of ``cls`` ran."""
    _complete[cls] = cases


def summary() -> dict[str, Any]:
    """Per class: cases tried and failed, escapes, forged sidecars, crashes, items lost, peak RSS."""
    out: dict[str, Any] = {}
    for cls in CLASSES:
        cs = [c for c in _cases if c["class"] == cls]
        ds = [d for d in _daemons if d["class"] == cls]
        if not cs:
            continue
        out[cls] = {
            "cases": len(cs),
            "failed": sum(c["failed"] for c in cs),
            "escapes": sum(c["escapes"] for c in cs),
            "forged_sidecars": sum(c["forged"] for c in cs),
            "crashes": sum(d["crashed"] for d in ds),
            "lost": sum(c["lost"] for c in cs),
            "daemons": len(ds),
            "peak_rss_mb": max((d["rss_mb"] for d in ds), default=0.0),
        }
    return out


def ran_completely() -> bool:
    """Every class ran all of its cases in this session."""
    return all(cls in _complete for cls in CLASSES) and all(
        sum(c["class"] == cls for c in _cases) == n for cls, n in _complete.items()
    )


def line(s: dict[str, Any]) -> str:
    """The one-line summary."""
    parts = [
        f"{cls} {v['cases']} cases: {v['escapes']} escapes, {v['forged_sidecars']} forged sidecars, "
        f"{v['crashes']} crashes, {v['lost']} lost, peak RSS {v['peak_rss_mb']:.0f} MB"
        for cls, v in s.items()
    ]
    failed = sum(v["failed"] for v in s.values())
    tried = sum(v["cases"] for v in s.values())
    return f"hostile peers: {tried} cases, {failed} failed; " + "; ".join(parts)


def unit_exposure() -> str | None:
    """``systemd-analyze security --offline=true`` of the shipped unit: its overall exposure, e.g.
    ``1.7 OK`` (None where systemd-analyze is missing)."""
    import re
    import shutil

    if shutil.which("systemd-analyze") is None:
        return None
    try:
        out = subprocess.run(
            ["systemd-analyze", "security", "--offline=true", "--no-pager", str(REPO / "systemd" / "conveyor.service")],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+ \w+)", out.stdout)
    return m.group(1) if m else None


def document(s: dict[str, Any]) -> dict[str, Any]:
    """What a complete run records (``CONVEYOR_FIGURES``): the totals per class, each failed case with
    its first problem, and the shipped unit's exposure."""
    return {
        "rss_limit_mb": 200,
        "classes": s,
        "unit_exposure": unit_exposure(),
        "failed_cases": [
            f"{c['class']}/{c['case']}: {c['problems'][0] if c['problems'] else ''}" for c in _cases if c["failed"]
        ],
    }
