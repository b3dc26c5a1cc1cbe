"""A connector or state store whose client library is missing: one clear line at ``check`` and
``run`` (exit 2), and a daemon that meets one anyway keeps its other flows running.

The library is made missing the way an incomplete install makes it missing: an import hook in
the child process refuses the module, so Python raises the same ModuleNotFoundError."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.harness import write_config
from tests.servers.ops import free_port

BLOCKER = textwrap.dedent("""
    import importlib.abc, os, sys

    class _Missing(importlib.abc.MetaPathFinder):
        blocked = set(os.environ.get("BLOCK_MODULES", "").split(","))

        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in self.blocked:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, _Missing())
""")


def child(tmp_path: Path, blocked: str, *args: str) -> subprocess.CompletedProcess[str]:
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(BLOCKER)
    env = {"PYTHONPATH": f"{site}:{Path.cwd()}", "BLOCK_MODULES": blocked, "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=60)


def pubsub_config(tmp_path: Path, **top: Any) -> Path:
    inst = {
        "gcp": {"type": "pubsub", "project": "demo", "emulator_host": "127.0.0.1:1"},
        "disk": {"type": "local", "root": str(tmp_path / "in"), "create": True},
    }
    flows = {
        "from-gcp": {
            "source": {"instance": "gcp", "subscription": "orders"},
            "target": {"type": "directory", "path": str(tmp_path / "out-gcp")},
        },
        "from-disk": {
            "source": {"instance": "disk", "path": "", "poll_interval": "100ms", "min_age": "0s", "after": "delete"},
            "target": {"type": "directory", "path": str(tmp_path / "out-disk"), "filename": "{name}"},
        },
    }
    return write_config(tmp_path, inst, flows, **top)


@pytest.mark.parametrize("command", ["check", "run"])
def test_missing_pubsub_library_is_one_line_and_exit_2(tmp_path: Path, command: str) -> None:
    cfg = pubsub_config(tmp_path)
    r = child(tmp_path, "grpc,google", "-m", "conveyor", command, "-c", str(cfg))
    assert r.returncode == 2, r.stdout + r.stderr
    assert (
        "instances.gcp.type: the pubsub connector needs the Python module 'grpc'" in r.stderr
        or "instances.gcp.type: the pubsub connector needs the Python module 'google" in r.stderr
    ), r.stderr
    assert "pip install conveyor" in r.stderr
    assert "Traceback" not in r.stdout + r.stderr


@pytest.mark.parametrize("command", ["check", "run"])
def test_missing_postgres_library_is_one_line_and_exit_2(tmp_path: Path, command: str) -> None:
    cfg = write_config(
        tmp_path,
        {"disk": {"type": "local", "root": str(tmp_path), "create": True}},
        {},
        state="postgresql://postgres@127.0.0.1:5432/test",
    )
    r = child(tmp_path, "asyncpg", "-m", "conveyor", command, "-c", str(cfg))
    assert r.returncode == 2, r.stdout + r.stderr
    assert "state: a PostgreSQL state store needs the Python module 'asyncpg'" in r.stderr, r.stderr
    assert "Traceback" not in r.stdout + r.stderr


@pytest.mark.parametrize("command", ["check", "run"])
def test_missing_cron_library_is_one_line_and_exit_2(tmp_path: Path, command: str) -> None:
    cfg = write_config(
        tmp_path,
        {"disk": {"type": "local", "root": str(tmp_path), "create": True}},
        {"f": {"source": {"instance": "disk", "schedule": "0 6 * * *"}, "target": {"type": "directory", "path": "/o"}}},
    )
    r = child(tmp_path, "croniter", "-m", "conveyor", command, "-c", str(cfg))
    assert r.returncode == 2, r.stdout + r.stderr
    assert "flows.f.source.schedule (line 18): a schedule needs the Python module 'croniter'" in r.stderr, r.stderr
    assert "Traceback" not in r.stdout + r.stderr


def test_default_install_has_the_pubsub_and_postgres_clients(tmp_path: Path) -> None:
    """The clients are dependencies of conveyor itself, so ``check`` passes on a plain install."""
    cfg = pubsub_config(tmp_path, state="postgresql://postgres@127.0.0.1:5432/test")
    r = subprocess.run(
        [sys.executable, "-m", "conveyor", "check", "-c", str(cfg)], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    from importlib.metadata import requires

    unconditional = [d for d in requires("conveyor") or [] if "extra ==" not in d]
    for name in ("google-cloud-pubsub", "asyncpg"):
        assert any(d.startswith(name) for d in unconditional), unconditional


RUN_DAEMON = textwrap.dedent("""
    import asyncio, sys
    from conveyor.config import load_config
    from conveyor.daemon import Daemon
    from conveyor.logs import setup_logging

    setup_logging("info", "json")
    sys.exit(asyncio.run(Daemon(load_config(sys.argv[1])).run()))
""")


def test_a_flow_whose_instance_cannot_be_built_fails_alone(tmp_path: Path) -> None:
    """The daemon itself (not the CLI's check) meets a connector that cannot load: that flow is
    failed in /status and /readyz with the reason, the other flow delivers, SIGTERM exits 0."""
    port = free_port()
    cfg = pubsub_config(tmp_path, health={"listen": f"127.0.0.1:{port}"})
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER)
    log = open(tmp_path / "daemon.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-c", RUN_DAEMON, str(cfg)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={"PYTHONPATH": f"{site}:{Path.cwd()}", "BLOCK_MODULES": "grpc,google", "PATH": "/usr/bin:/bin"},
    )
    try:
        (tmp_path / "in").mkdir(exist_ok=True)
        (tmp_path / "in" / "a.txt").write_text("a")

        def status() -> dict[str, Any] | None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=2) as r:
                    doc: dict[str, Any] = json.load(r)
                    return doc
            except OSError:
                return None

        def delivered() -> bool:
            return (tmp_path / "out-disk" / "a.txt").exists()

        deadline = time.monotonic() + 30
        while not delivered():
            assert proc.poll() is None, (tmp_path / "daemon.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "daemon.log").read_text()
            time.sleep(0.1)
        doc = status()
        assert doc is not None
        flow = doc["flows"]["from-gcp"]
        assert flow["state"] == "failed"
        assert "cannot start" in flow["last_error"] and "grpc" in flow["last_error"]
        assert "from-gcp" in doc["not_ready"]["flows"]
        assert doc["flows"]["from-disk"]["state"] == "running"
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(30)
        log.close()
    assert rc == 0, (tmp_path / "daemon.log").read_text()
    text = (tmp_path / "daemon.log").read_text()
    assert "flow cannot start" in text
    assert "ExceptionGroup" not in text


def test_missing_target_library_is_one_line_and_exit_2(tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path,
        {"disk": {"type": "local", "root": str(tmp_path), "create": True}},
        {
            "hook": {
                "source": {"instance": "disk", "path": ""},
                "target": {"type": "http", "url": "http://127.0.0.1:1/in"},
            }
        },
    )
    r = child(tmp_path, "aiohttp", "-m", "conveyor", "check", "-c", str(cfg))
    assert r.returncode == 2, r.stdout + r.stderr
    assert "flows.hook.target.type: the http target needs the Python module 'aiohttp'" in r.stderr, r.stderr
    assert "Traceback" not in r.stdout + r.stderr
