"""The code stays lint- and type-clean, and start-up stays light."""

from __future__ import annotations

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
