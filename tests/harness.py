"""Running conveyor in tests: configs written to disk, the daemon in-process or as a real process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import yaml

from conveyor.config import load_config
from conveyor.daemon import Daemon


def write_config(folder: Path, instances: dict[str, Any], flows: dict[str, Any], **top: Any) -> Path:
    """A YAML config in ``folder`` with state and spool under it; health off unless given."""
    doc: dict[str, Any] = {
        "state": str(folder / "state.db"),
        "spool_dir": str(folder / "spool"),
        "health": {"listen": None},
        "log": {"level": "debug", "format": "json"},
        "shutdown_timeout": "10s",
    }
    doc.update(top)
    doc["instances"] = instances
    doc["flows"] = flows
    path = folder / "conveyor.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@contextlib.asynccontextmanager
async def running(config_path: Path) -> AsyncIterator[Daemon]:
    """The daemon running in this event loop; stopped (drained) on exit."""
    daemon = Daemon(load_config(config_path))
    task = asyncio.create_task(daemon.run())
    try:
        await asyncio.sleep(0.05)
        yield daemon
    finally:
        daemon.request_stop()
        rc = await asyncio.wait_for(task, 60)
        assert rc == 0


async def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {getattr(predicate, '__name__', predicate)}")
        await asyncio.sleep(interval)


def bodies(folder: Path) -> dict[str, bytes]:
    """Delivered bodies in a directory target: name → bytes (sidecars and temp files excluded)."""
    if not folder.exists():
        return {}
    return {
        p.name: p.read_bytes()
        for p in folder.iterdir()
        if p.is_file() and not p.name.endswith(".meta.json") and not p.name.endswith(".tmp")
    }


def sidecars(folder: Path) -> list[dict[str, Any]]:
    """Every ``.meta.json`` document in a directory target."""
    if not folder.exists():
        return []
    return [json.loads(p.read_text()) for p in folder.glob("*.meta.json")]


class DaemonProcess:
    """``conveyor run -c FILE`` as a real process (for kill -9, signals, systemd notify)."""

    def __init__(self, config_path: Path, env: dict[str, str] | None = None) -> None:
        self.config_path = config_path
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = config_path.parent / f"daemon-{int(time.time() * 1000)}.log"

    def start(self) -> DaemonProcess:
        """Start it, logging to a file beside the config."""
        self.log_path = self.config_path.parent / f"daemon-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "conveyor", "run", "-c", str(self.config_path)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self.env,
        )
        return self

    def kill9(self) -> None:
        """SIGKILL: no drain, no cleanup."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)
        self._log.close()

    def signal(self, sig: int) -> None:
        """Send a signal."""
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM and wait for the exit code, which must be 0 (a clean drain): anything else, a
        crash's signal included, fails the test with the end of the daemon's output."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self._log.close()
        assert rc == 0, f"daemon exited {rc} when stopped; its output ends:\n{self.text()[-3000:]}"
        return rc

    def logs(self) -> list[dict[str, Any]]:
        """JSON log lines so far."""
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    def text(self) -> str:
        """Everything it printed."""
        return self.log_path.read_text(errors="replace")
