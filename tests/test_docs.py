"""The docs' generated parts and config examples are checked: ``scripts/docs --check`` fails when a
page is stale or an example stops passing ``conveyor check``."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _copy(tmp: Path) -> Path:
    """The parts of the repository that scripts/docs reads, copied so that a test may break them."""
    root = tmp / "repo"
    for part in ("docs", "bench", "scripts"):
        shutil.copytree(REPO / part, root / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "README.md", root / "README.md")
    return root


def _check(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(root / "scripts" / "docs"), "--check"], capture_output=True, text=True, timeout=300
    )


def test_docs_are_up_to_date() -> None:
    p = _check(REPO)
    assert p.returncode == 0, p.stderr


def test_a_stale_options_table_fails_the_check(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    page = root / "docs" / "connectors" / "sftp.md"
    text = page.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| `host` |"))
    page.write_text(text.replace(row + "\n", ""))  # as if `host` had been added to the model since
    p = _check(root)
    assert p.returncode == 1 and "docs/connectors/sftp.md" in p.stderr, p.stderr


def test_an_example_that_conveyor_check_refuses_fails_the_check(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    page = root / "docs" / "operations" / "scaling.md"
    page.write_text(page.read_text().replace("replica: conveyor-a", "replica: conveyor-a\nreplicas: 3", 1))
    p = _check(root)
    assert p.returncode == 1 and "docs/operations/scaling.md (YAML example 1)" in p.stderr, p.stderr
    assert "replicas" in p.stderr


def test_the_version_has_one_source() -> None:
    from importlib.metadata import version

    import conveyor

    p = subprocess.run([sys.executable, "-m", "conveyor", "--version"], capture_output=True, text=True, timeout=60)
    assert p.stdout.strip() == f"conveyor {conveyor.__version__}" == f"conveyor {version('conveyor')}"
    assert "version =" not in (REPO / "pyproject.toml").read_text().split("[tool.setuptools.dynamic]")[0]
