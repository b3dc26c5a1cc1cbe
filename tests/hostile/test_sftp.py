"""Hostile SFTP servers (an asyncssh server with a made-up file system) against ``conveyor run``:
endless listings and files, files longer than listed, names with ``/``, ``..``, NUL, CR/LF and
10,000 characters, names that take a sidecar's place, and symlink loops. What each case must
show is in tests/hostile/harness.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.hostile.file_cases import FileCase, all_cases
from tests.hostile.harness import Outcome, assert_case, grouped, run_groups
from tests.hostile.loop_thread import LoopThread

CASES = [c.name for c in all_cases("sftp")]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Outcome]]:
    """Every case, each group of cases on a daemon of its own, the groups at once."""
    loop = LoopThread("hostile-sftp")
    FileCase.loop = loop
    try:
        root: Path = tmp_path_factory.mktemp("hostile-sftp")
        yield run_groups(grouped("sftp", root, all_cases("sftp")))
    finally:
        loop.close()


@pytest.mark.parametrize("case", CASES)
def test_hostile_sftp_server(results: dict[str, Outcome], case: str) -> None:
    assert_case(results, case)
