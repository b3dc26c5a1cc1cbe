"""The state store and the spool are the daemon's alone (0600/0700) under a loose umask."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

from conveyor.payload import Spool
from tests.harness import write_config


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_state_and_spool_are_private_under_a_loose_umask(tmp_path: Path) -> None:
    root = tmp_path / "remote"
    (root / "in").mkdir(parents=True)
    (root / "in" / "a.txt").write_bytes(b"x")
    var = tmp_path / "var"
    cfg = write_config(
        tmp_path,
        {"remote": {"type": "local", "root": str(root)}},
        {
            "f": {
                "source": {"instance": "remote", "path": "in", "poll_interval": "200ms", "min_age": "0s"},
                "target": {"type": "directory", "path": str(tmp_path / "out"), "filename": "{name}"},
            }
        },
        state=str(var / "state.db"),
        spool_dir=str(var / "spool"),
    )
    log = open(tmp_path / "daemon.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "conveyor", "run", "-c", str(cfg)], stdout=log, stderr=subprocess.STDOUT, umask=0o022
    )
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "out" / "a.txt").exists() or not Path(f"{var}/state.db-wal").exists():
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "daemon.log").read_text()
            time.sleep(0.1)
        got = {p.name: oct(mode(p)) for p in [var, var / "spool", *var.glob("state.db*")]}
    finally:
        proc.terminate()
        assert proc.wait(30) == 0
        log.close()
    assert got == {
        "var": "0o700",
        "spool": "0o700",
        "state.db": "0o600",
        "state.db-wal": "0o600",
        "state.db-shm": "0o600",
    }


def test_spool_files_and_an_older_folder_are_made_private(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        folder = tmp_path / "spool"
        folder.mkdir(mode=0o755)
        spool = Spool(folder, threshold=16)
        spool.prepare()
        w = spool.writer()
        w.write(b"y" * 100)
        body = w.finish()
        assert body.path is not None
        assert (oct(mode(folder)), oct(mode(body.path))) == ("0o700", "0o600")
        body.release()
    finally:
        os.umask(old)
