"""Shared fixtures: the backends the behaviour suite runs over.

Each connector's backend fixture lives beside its server fixture (tests/backends/*.py,
tests/servers/*.py); importing them here makes them visible to every test module.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.backends.ftp import *  # noqa: F403 (fixtures)
from tests.backends.local import LocalBackend
from tests.backends.pubsub import *  # noqa: F403 (fixtures)
from tests.backends.rabbitmq import *  # noqa: F403 (fixtures)
from tests.backends.sftp import *  # noqa: F403 (fixtures)

# The suite's daemons run on asyncio's own loop, what a plain install gets; uvloop (the
# ``conveyor[uvloop]`` extra, also in ``test``) is what tests/test_event_loops.py asks for.
os.environ.setdefault("CONVEYOR_EVENT_LOOP", "asyncio")

FILE_BACKENDS = [
    "local_backend",
    "sftp_asyncssh_backend",
    "sftp_openssh_backend",
    "sftp_socks5_backend",
    "sftp_jump_backend",
    "ftp_pyftpdlib_backend",
    "ftps_explicit_pyftpdlib_backend",
    "ftps_implicit_pyftpdlib_backend",
    "ftps_explicit_vsftpd_backend",
]
"""Fixture names of every file backend the shared suite runs over."""
MESSAGE_BACKENDS: list[str] = ["rabbitmq_backend", "pubsub_backend"]
"""Fixture names of every message backend the shared suite runs over."""


@pytest.fixture
def local_backend(tmp_path: Path) -> Iterator[LocalBackend]:
    """A local folder as the source instance."""
    yield LocalBackend(tmp_path / "remote")


# Modules whose tests need no root and no server (sshd, vsftpd, RabbitMQ, PostgreSQL, the Pub/Sub
# emulator): `pytest -m unit` runs them in under a minute on a laptop, for a quick loop while editing.
UNIT_MODULES = frozenset(
    {
        "test_batched",
        "test_companions",
        "test_config",
        "test_docs",
        "test_imports",
        "test_inactivity",
        "test_ledger",
        "test_libraries",
        "test_logs",
        "test_payload",
        "test_sftp_config",
        "test_sleeps",
        "test_stop_signals",
        "test_supervisor",
        "test_target_registry",
        "test_targets",
        "test_wiring",
        "test_ftp_listing",
        "test_pubsub_auth",
        "test_secrets_in_logs",
        "test_health_auth",
        "test_globs",
        "test_clock",
        "test_schedule_config",
    }
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tests of UNIT_MODULES ``unit``."""
    for item in items:
        if item.path.stem in UNIT_MODULES:
            item.add_marker(pytest.mark.unit)


def pytest_sessionstart(session: pytest.Session) -> None:
    """Start the fault figures afresh for this run, in a file of this run's own."""
    import os

    from tests.faultlog import report_path

    os.environ.setdefault("CONVEYOR_FAULT_REPORT", f"/tmp/conveyor-fault-report-{os.getpid()}.jsonl")
    report_path().unlink(missing_ok=True)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print the fault figures of this run (docs/reliability.md quotes them)."""
    from tests.faultlog import line, summary

    s = summary()
    if s["scenarios"]:
        terminalreporter.write_line(line(s))
        record_figures("faults", s)


def record_figures(name: str, figures: dict[str, Any]) -> None:
    """With ``CONVEYOR_FIGURES=DIR``, keep this run's figures as ``DIR/<name>.json`` with the date, the
    commit and the machine, for ``scripts/docs`` to put on the reliability page. Off by default, so
    that an ordinary run changes nothing in the checkout."""
    import datetime as dt
    import json
    import os
    import sys

    folder = os.environ.get("CONVEYOR_FIGURES")
    if not folder:
        return
    root = Path(__file__).resolve().parent.parent
    sys.path.insert(0, str(root / "bench"))
    from record import commit, machine  # the same commit and machine fields as a benchmark's record

    doc = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "commit": commit(root),
        "machine": machine(),
        **figures,
    }
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(doc, indent=1) + "\n")
