"""Process trees from /proc, for fixtures that stop a server together with its session processes."""

from __future__ import annotations

from pathlib import Path


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, grandchildren...), from /proc."""
    parents: dict[int, int] = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                parents[int(p.name)] = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    out: list[int] = []
    frontier = {pid}
    while frontier:
        children = {c for c, ppid in parents.items() if ppid in frontier}
        out.extend(children)
        frontier = children
    return out
