"""Server processes for fixtures: process trees from /proc (to stop a server together with its
session processes), waiting for a listener, and stopping one."""

from __future__ import annotations

import socket
import subprocess
import time
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


def await_listener(proc: subprocess.Popen[bytes], port: int, what: str, limit: float = 10.0) -> None:
    """Wait until ``proc`` accepts connections on 127.0.0.1:``port``; RuntimeError if it exits or
    does not listen within ``limit`` seconds (then it is killed)."""
    deadline = time.monotonic() + limit
    while proc.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                stop_process(proc)
                raise RuntimeError(f"{what} did not start listening") from None
            time.sleep(0.05)
    raise RuntimeError(f"{what} exited with {proc.returncode}")


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """Terminate ``proc``, killing it if it does not exit within 5 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
