"""Many sftp flows in one `conveyor run`: 20 instances of 5 flows each on one OpenSSH sshd.

Every flow gets the file dropped into its own folder and nothing else; no instance opens more
SSH connections than its ``max_connections``; flows that start together share their
instance's first login rather than each opening one. A file first seen still settling is taken
``min_age`` later, not a whole ``poll_interval`` later.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.backends.sftp import SftpBackend, sftp_folder
from tests.harness import DaemonProcess, bodies, write_config
from tests.servers.ops import free_port
from tests.servers.sshd import Sshd

INSTANCES = 20
FLOWS = 5
MAX_CONNECTIONS = 2


def _until(pred: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


def _get(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        return str(r.read().decode())


def _connects(port: int) -> dict[str, float]:
    """Successful SSH logins per instance, from /metrics."""
    out: dict[str, float] = {}
    text = _get(port, "/metrics")
    for labels, value in re.findall(r"conveyor_connect_attempts_total\{([^}]*)\}\s+(\S+)", text):
        said = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        if said.get("outcome") == "ok":
            out[said["instance"]] = float(value)
    return out


@pytest.fixture
def folders(sshd: Sshd) -> Iterator[list[SftpBackend]]:
    """A fresh folder per instance on the session's sshd, with one sub-folder per flow."""
    made = [sftp_folder(sshd) for _ in range(INSTANCES)]
    for b in made:
        for k in range(FLOWS):
            b.put(f"f{k}/.keep", b"")
    try:
        yield made
    finally:
        for b in made:
            shutil.rmtree(b.folder, ignore_errors=True)


@pytest.mark.timeout(240)
def test_a_hundred_sftp_flows_each_get_their_file(sshd: Sshd, folders: list[SftpBackend], tmp_path: Path) -> None:
    port = free_port()
    out = tmp_path / "out"
    instances = {
        f"i{i:02}": b.instance_config(max_connections=MAX_CONNECTIONS, timeout="20s") for i, b in enumerate(folders)
    }
    flows = {
        f"i{i:02}-f{k}": {
            "source": {
                "instance": f"i{i:02}",
                "path": f"f{k}",
                "pattern": "*.bin",
                "poll_interval": "15s",
                "min_age": "1s",
                "after": "delete",
            },
            "target": {"type": "directory", "path": str(out / f"i{i:02}-f{k}")},
        }
        for i in range(INSTANCES)
        for k in range(FLOWS)
    }
    cfg = write_config(tmp_path, instances, flows, health={"listen": f"127.0.0.1:{port}"})
    logins_before = sshd.logins()
    d = DaemonProcess(cfg).start()
    try:

        def all_polled() -> bool:
            assert d.proc is not None and d.proc.poll() is None, d.text()[-3000:]
            try:
                doc = json.loads(_get(port, "/status"))
            except OSError:
                return False
            return all(f["last_poll"] for f in doc["flows"].values()) and len(doc["flows"]) == len(flows)

        _until(all_polled, 60, "every flow's first listing")
        started = _connects(port)
        # Flows that started together shared their instance's first login.
        assert started == {name: 1.0 for name in instances}, started

        sent: dict[str, bytes] = {}
        for i, b in enumerate(folders):
            for k in range(FLOWS):
                body = f"i{i:02}-f{k} ".encode() + os.urandom(64)
                b.put(f"f{k}/drop-{i}-{k}.bin", body)
                sent[f"i{i:02}-f{k}"] = body

        def everything() -> bool:
            return all(len(bodies(out / name)) == 1 for name in flows)

        _until(everything, 90, "every flow's file")
        for name, body in sent.items():
            assert list(bodies(out / name).values()) == [body], name
        # A login opened beside busy sessions may still be finishing: sshd's count and the metric meet.
        _until(lambda: sshd.logins() - logins_before == sum(_connects(port).values()), 15, "sshd's logins to match")
        connects = _connects(port)
        assert set(connects) == set(instances)
        assert max(connects.values()) <= MAX_CONNECTIONS, connects
    finally:
        d.stop()


def test_a_settling_file_is_listed_again_after_min_age(tmp_path: Path) -> None:
    """With an hour between polls, a file first seen settling is taken min_age later."""
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.csv").write_bytes(b"a,b\n")
    cfg = write_config(
        tmp_path,
        {"box": {"type": "local", "root": str(tmp_path)}},
        {
            "f": {
                "source": {"instance": "box", "path": "in", "poll_interval": "1h", "min_age": "1s"},
                "target": {"type": "directory", "path": str(tmp_path / "out")},
            }
        },
    )
    d = DaemonProcess(cfg).start()
    try:
        got = _until(lambda: bodies(tmp_path / "out"), 30, "the file")
        assert list(got.values()) == [b"a,b\n"]
    finally:
        d.stop()
