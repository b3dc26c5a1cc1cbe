"""The code stays lint- and type-clean, and start-up stays light."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_clean() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "src", "tests", "bench", "scripts"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_mypy_clean() -> None:
    r = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_google_cloud_is_not_imported_by_configs_that_do_not_use_it(tmp_path: Path) -> None:
    cfg = ROOT / "config" / "conveyor.example.yaml"
    code = (
        "import sys; from conveyor.cli import main; from conveyor.config import load_config; "
        f"load_config({str(cfg)!r}); import conveyor.daemon; "
        "print(sorted(m for m in sys.modules if m.startswith(('google', 'grpc'))))"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


HEAVY = ("asyncssh", "aio_pika", "aiormq", "google.cloud.pubsub", "grpc", "asyncpg")
"""Client libraries only the connectors (and the state store) that use them may load."""
OTHER_CONNECTORS = ("conveyor.transfer.sftp", "conveyor.brokers.rabbitmq", "conveyor.brokers.pubsub")
"""Connectors an FTP and local config does not name: not even their config models are built."""


def test_an_ftp_and_local_run_loads_no_other_connector(tmp_path: Path) -> None:
    """``run --once`` on a config with an FTP instance and a local flow, health off: at exit
    no library of another connector was imported, nor aiohttp (the health server's)."""
    (tmp_path / "var" / "inbox").mkdir(parents=True)
    (tmp_path / "var" / "inbox" / "a.txt").write_text("a")
    out = {"type": "directory", "path": "var/out", "filename": "{name}"}
    doc = {
        "state": "var/state.db",
        "spool_dir": "var/spool",
        "health": {"listen": None},
        "instances": {
            "partner": {"type": "ftp", "host": "127.0.0.1", "port": 1, "username": "u", "password": "a-secret"},
            "inbox": {"type": "local", "root": "var"},
        },
        "flows": {
            "idle": {"enabled": False, "source": {"instance": "partner", "path": "in"}, "target": out},
            "move": {"source": {"instance": "inbox", "path": "inbox", "min_age": "0s"}, "target": out},
        },
    }
    (tmp_path / "c.yaml").write_text(json.dumps(doc))  # JSON is YAML
    w = (*HEAVY, *OTHER_CONNECTORS, "aiohttp")
    code = (
        "import atexit, sys\n"
        f"atexit.register(lambda: print(sorted(m for m in sys.modules if m.startswith({w!r})), file=sys.stderr))\n"
        "from conveyor.cli import main\n"
        "sys.exit(main(['run', '--once', '-c', 'c.yaml']))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "var" / "out" / "a.txt").read_text() == "a"
    assert r.stderr.strip().splitlines()[-1] == "[]", r.stderr


def test_the_health_server_loads_aiohttp_only_in_its_thread() -> None:
    """The daemon binds the health port before its flows start and loads aiohttp (a tenth of a
    second) in the server's thread, alongside the first flows: importing the add-on loads none."""
    code = (
        "import sys, conveyor.health, conveyor.daemon; print(sorted(m for m in sys.modules if m.startswith('aiohttp')))"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_the_collector_is_off_only_while_a_config_loads(tmp_path: Path) -> None:
    """``main`` turns the cyclic collector off while a config loads and back on: before ``run``
    starts the daemon, and on return for every command (in a child: ``run`` sets up logging)."""
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps({"instances": {"box": {"type": "local", "root": str(tmp_path)}}}))
    code = (
        "import gc, sys, conveyor.config, conveyor.daemon\n"
        "from conveyor import cli\n"
        "seen = []\n"
        "load = conveyor.config.load_config\n"
        "conveyor.config.load_config = lambda path: seen.append(gc.isenabled()) or load(path)\n"
        "conveyor.daemon.run_daemon = lambda config, once=None: seen.append(gc.isenabled()) or 0\n"
        "codes = [cli.main(['check', '-c', sys.argv[1]]), gc.isenabled(), cli.main(['run', '-c', sys.argv[1]])]\n"
        "print(codes, seen, gc.isenabled())\n"
    )
    r = subprocess.run([sys.executable, "-c", code, str(config)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == "[0, True, 0] [False, False, True] True"


def test_each_built_in_connector_type_names_its_own_config_module() -> None:
    """``registry.BUILT_IN_TYPES`` lets a config load one connector's models without the others:
    each type is registered by the module it names, the one that defines the type's model."""
    from conveyor.registry import BUILT_IN_TYPES, all_specs

    assert {t: s.instance_model.__module__ for t, s in all_specs().items()} == BUILT_IN_TYPES
