"""Dependency floors, the pinned versions the tests install, and the audit of those pins.

pyproject.toml states floors (docs/dependencies.md says which advisory each one is for);
constraints.txt pins the exact versions scripts/test-setup installs; scripts/audit checks the
pins for known vulnerabilities when advisory data can be reached and says so when it cannot.
"""

from __future__ import annotations

import re
import subprocess
import time
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.servers.ops import free_port

REPO = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
RUNTIME = [Requirement(r) for r in PROJECT["dependencies"]]
EXTRAS = [Requirement(r) for extra in ("test", "docs", "traces") for r in PROJECT["optional-dependencies"][extra]]


def pins() -> dict[str, Version]:
    """constraints.txt as canonical name → pinned version."""
    out: dict[str, Version] = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not pinned with =="
            out[canonicalize_name(name)] = Version(version)
    return out


def test_every_requirement_is_pinned_within_its_range() -> None:
    pinned = pins()
    for req in RUNTIME + EXTRAS:
        name = canonicalize_name(req.name)
        assert name in pinned, f"{req.name} is in pyproject.toml but not in constraints.txt: run scripts/lock"
        assert req.specifier.contains(pinned[name], prereleases=True), (
            f"constraints.txt pins {req.name}=={pinned[name]}, outside pyproject.toml's {req.specifier}: "
            "run scripts/lock"
        )


def test_this_venv_has_the_pinned_versions() -> None:
    # The README's test command installs with -c constraints.txt; a venv made otherwise tests
    # something else than CI does. (pip and setuptools only install; they are not checked here.)
    wrong = []
    for name, version in pins().items():
        if name in ("pip", "setuptools"):
            continue
        try:
            have = Version(metadata.version(name))
        except metadata.PackageNotFoundError:
            continue  # pinned for another platform or Python
        if have != version:
            wrong.append(f"{name} {have} (pinned {version})")
    assert not wrong, "not the versions in constraints.txt, run scripts/test-setup: " + ", ".join(wrong)


def test_floors_are_documented() -> None:
    # docs/dependencies.md has a row per runtime dependency with the range pyproject.toml states.
    rows = {}
    for line in (REPO / "docs" / "dependencies.md").read_text().splitlines():
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and re.fullmatch(r"[A-Za-z0-9_.\[\]-]+", cells[0]):
            rows[canonicalize_name(cells[0].split("[")[0])] = cells[1]
    for req in RUNTIME:
        name = canonicalize_name(req.name)
        assert name in rows, f"docs/dependencies.md has no row for {req.name}"
        assert Requirement(f"x{rows[name]}").specifier == req.specifier, (
            f"docs/dependencies.md says {req.name}{rows[name]}, pyproject.toml {req.specifier}"
        )


def test_audit_without_advisory_data_says_not_checked_quickly() -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "AUDIT_OSV_URL": closed + "/v1/query", "AUDIT_PYPI_URL": closed}
    start = time.monotonic()
    p = subprocess.run([str(REPO / "scripts" / "audit")], capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("audit: not checked: no source of advisory data answered"), p.stdout
    assert closed in p.stdout
    assert time.monotonic() - start < 60


def test_ci_runs_the_audit_and_installs_from_constraints() -> None:
    ci = (REPO / ".ci" / "run").read_text()
    assert "scripts/test-setup" in ci and "scripts/audit" in ci
    for script in ("test-setup", "check"):
        text = (REPO / "scripts" / script).read_text()
        installs = [line for line in text.splitlines() if "pip install" in line and not line.lstrip().startswith("#")]
        assert installs and all("-c constraints.txt" in line for line in installs), (script, installs)
