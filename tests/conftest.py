"""Shared fixtures: the backends the behaviour suite runs over.

Each connector's backend fixture lives beside its server fixture (tests/backends/*.py,
tests/servers/*.py); importing them here makes them visible to every test module.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.backends.local import LocalBackend

FILE_BACKENDS = ["local_backend"]
"""Fixture names of every file backend the shared suite runs over."""
MESSAGE_BACKENDS: list[str] = []
"""Fixture names of every message backend the shared suite runs over."""


@pytest.fixture
def local_backend(tmp_path: Path) -> Iterator[LocalBackend]:
    """A local folder as the source instance."""
    yield LocalBackend(tmp_path / "remote")
