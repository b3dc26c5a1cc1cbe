"""Which files a file source takes: include / exclude globs on the relative path, size and age
limits, max_depth, and the order within a poll — through ``conveyor run`` over a local folder,
OpenSSH sshd and vsftpd; and the config errors for what cannot work, each at its key."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from conveyor.config import load_config
from conveyor.config.base import FileSourceConfig
from conveyor.errors import ConfigError
from conveyor.flows.filesource import Selection
from conveyor.interfaces import Context
from conveyor.payload.spool import Spool
from conveyor.status import StatusBoard
from conveyor.transfer.local.config import LocalConfig
from conveyor.transfer.local.instance import LocalInstance
from tests.backends.base import FileBackend
from tests.backends.sftp import SftpBackend
from tests.harness import DaemonProcess, bodies, wait_for, write_config
from tests.servers.vsftpd import vsftpd_certs, vsftpd_factory
from tests.test_check_connect import check, flow_line
from tests.test_source_paths import fb

__all__ = ["fb", "vsftpd_certs", "vsftpd_factory"]  # fb: local, OpenSSH sshd, vsftpd


def flow(tmp_path: Path, name: str, **source: Any) -> dict[str, Any]:
    src = {"instance": "remote", "poll_interval": "200ms", "min_age": "0s", "after": "keep", **source}
    return {"source": src, "target": {"type": "directory", "path": str(tmp_path / "out" / name), "filename": "{name}"}}


def delivered_in_order(d: DaemonProcess, name: str) -> list[str]:
    """The paths a flow's source logged as delivered, in the order it logged them."""
    return [
        str(r["msg"]).split(" ")[1]
        for r in d.logs()
        if r.get("logger") == "conveyor.files"
        and r.get("flow") == name
        and str(r.get("msg", "")).startswith("delivered ")
    ]


async def test_include_exclude_size_age_and_depth_select_the_files(fb: FileBackend, tmp_path: Path) -> None:
    """Of a partner folder, only the CSVs of the right size and age, at most one folder down and
    not in the archive, are delivered; ``pattern`` still narrows by name on top."""
    now = time.time()
    files = {
        "top.csv": (2000, None),  # taken: '**' is zero folders too
        "in/a.csv": (2000, None),  # taken
        "in/b.txt": (2000, None),  # no include matches
        "small.csv": (10, None),  # under min_size
        "big.csv": (5000, None),  # over max_size
        "stale.csv": (2000, now - 3 * 86400),  # older than max_age
        "in/deep/c.csv": (2000, None),  # taken at max_depth 2, not at 1
        "archive/old.csv": (2000, None),  # excluded
        "in/archive/kept.csv": (2000, None),  # 'archive/**' is anchored: taken at max_depth 2
    }
    for path, (size, mtime) in files.items():
        fb.put(f"drop/{path}", b"x" * size, mtime)
    selection = {
        "path": "drop",
        "include": ["**/*.csv"],
        "exclude": ["archive/**"],
        "min_size": "100B",
        "max_size": "4000B",
        "max_age": "1d",
        "max_depth": 2,
        "max_file_size": "4500B",  # big.csv is over it too: left out by max_size, it is not reported
    }
    flows = {
        "sel": flow(tmp_path, "sel", **selection),
        "shallow": flow(tmp_path, "shallow", **{**selection, "max_depth": 1}),
        "named": flow(tmp_path, "named", **selection, pattern="[ak]*"),
        "top": flow(tmp_path, "top", **{**selection, "max_depth": 0}),
    }
    d = DaemonProcess(write_config(tmp_path, {"remote": fb.instance_config()}, flows)).start()
    try:
        await wait_for(lambda: len(bodies(tmp_path / "out" / "sel")) >= 4, 30)
        await wait_for(lambda: len(bodies(tmp_path / "out" / "shallow")) >= 2, 30)
        await wait_for(lambda: len(bodies(tmp_path / "out" / "named")) >= 2, 30)
        await wait_for(lambda: len(bodies(tmp_path / "out" / "top")) >= 1, 30)
    finally:
        d.stop()
    # Every listed file was judged in the first poll: a wrong one would have been delivered with these.
    assert set(bodies(tmp_path / "out" / "sel")) == {"top.csv", "a.csv", "c.csv", "kept.csv"}
    assert set(bodies(tmp_path / "out" / "shallow")) == {"top.csv", "a.csv"}
    assert set(bodies(tmp_path / "out" / "named")) == {"a.csv", "kept.csv"}
    assert set(bodies(tmp_path / "out" / "top")) == {"top.csv"}
    assert not [r for r in d.logs() if "skipping" in str(r.get("msg"))], "left-out files are not reported"


async def test_order_picks_which_files_a_capped_poll_takes(fb: FileBackend, tmp_path: Path) -> None:
    """With ``max_files_per_poll: 1`` each poll takes the first file in the flow's order: oldest,
    newest, name or size."""
    now = time.time()
    for folder in ("oldest", "newest", "name", "size"):
        fb.put(f"{folder}/b.dat", b"b" * 30, now - 300)
        fb.put(f"{folder}/c.dat", b"c" * 10, now - 200)
        fb.put(f"{folder}/a.dat", b"a" * 20, now - 100)
    flows = {
        order: {**flow(tmp_path, order, path=order, order=order, max_files_per_poll=1), "max_in_flight": 1}
        for order in ("oldest", "newest", "name", "size")
    }
    d = DaemonProcess(write_config(tmp_path, {"remote": fb.instance_config()}, flows)).start()
    try:
        await wait_for(lambda: all(len(bodies(tmp_path / "out" / n)) == 3 for n in flows), 30)
    finally:
        d.stop()
    assert delivered_in_order(d, "oldest") == ["oldest/b.dat", "oldest/c.dat", "oldest/a.dat"]
    assert delivered_in_order(d, "newest") == ["newest/a.dat", "newest/c.dat", "newest/b.dat"]
    assert delivered_in_order(d, "name") == ["name/a.dat", "name/b.dat", "name/c.dat"]
    assert delivered_in_order(d, "size") == ["size/c.dat", "size/a.dat", "size/b.dat"]


async def test_a_listing_does_not_go_into_folders_that_hold_nothing_wanted(tmp_path: Path) -> None:
    """``descend`` is asked about each sub-folder: a folder it refuses is never read."""
    root = tmp_path / "root"
    for p in ("a.csv", "in/b.csv", "in/deep/c.csv", "archive/d.csv", "archive/x/e.csv"):
        (root / p).parent.mkdir(parents=True, exist_ok=True)
        (root / p).write_bytes(b"x")
    cfg = write_config(
        tmp_path,
        {"l": {"type": "local", "root": str(root)}},
        {
            "f": {
                "source": {"instance": "l", "include": ["**/*.csv"], "exclude": ["archive/**"], "max_depth": 1},
                "target": {"type": "directory", "path": str(tmp_path / "out")},
            }
        },
    )
    source = load_config(cfg).flows["f"].source
    assert isinstance(source, FileSourceConfig)
    asked: list[str] = []
    into = Selection(source).descend("")
    assert into is not None

    def descend(folder: str) -> bool:
        asked.append(folder)
        return into(folder)

    fs = LocalInstance(
        "l", LocalConfig(type="local", root=str(root)), Context(spool=Spool(tmp_path / "spool"), status=StatusBoard())
    )
    listed = sorted([f.path async for f in fs.list("", True, descend=descend)])
    await fs.close()
    assert listed == ["a.csv", "in/b.csv"]
    assert sorted(asked) == ["archive", "in", "in/deep"]


@pytest.mark.parametrize(
    ("source", "want"),
    [
        (
            {"include": ["*.csv", "in/**", "a**b"]},
            "flows.f.source.include[2] (line 11): '**' must be a whole path segment ('a**b')",
        ),
        ({"exclude": ["[abc"]}, "flows.f.source.exclude[0] (line 11): '[' without a closing ']'"),
        (
            {"include": ["*.csv", "**/*.csv"], "recursive": False},
            "flows.f.source.include[1] (line 11): '**/*.csv' matches files in sub-folders, but recursive is false",
        ),
        ({"max_depth": 2, "recursive": False}, "flows.f.source.max_depth (line 11): 2 lists sub-folders, but"),
        ({"max_depth": -1}, "flows.f.source.max_depth (line 11): Input should be greater than or equal to 0"),
        ({"min_size": "2KiB", "max_size": "1KiB"}, "flows.f.source.max_size (line 11): 1KiB is below min_size (2KiB)"),
        ({"max_age": "5s"}, "flows.f.source.max_age (line 11): 5s is not longer than min_age (10s)"),
        ({"order": "random"}, "flows.f.source.order (line 11): "),
    ],
)
def test_selection_mistakes_are_config_errors_at_their_key(tmp_path: Path, source: dict[str, Any], want: str) -> None:
    text = f"""\
instances:
  inbox:
    type: local
    root: {tmp_path}
flows:
  f:
    target:
      type: directory
      path: {tmp_path / "out"}
    source:
      {{instance: inbox, {json.dumps(source)[1:-1]}}}
"""
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(p, env={})
    got = [str(x) for x in e.value.problems]
    assert any(g.startswith(want) for g in got), got


def test_an_include_into_folders_lists_them_unless_told_otherwise() -> None:
    assert FileSourceConfig(instance="i", include=["**/*.csv"]).recursive
    assert FileSourceConfig(instance="i", include=["in/"]).recursive
    assert FileSourceConfig(instance="i", max_depth=1).recursive
    assert not FileSourceConfig(instance="i", include=["*.csv"]).recursive
    assert not FileSourceConfig(instance="i", max_depth=0).recursive


async def test_an_sftp_listing_skips_the_folders_selection_rules_out(
    sftp_openssh_backend: SftpBackend, tmp_path: Path
) -> None:
    """A folder the SFTP user may not read fails a recursive listing that goes into it; excluded
    (or deeper than max_depth), it is never asked for, and the other files are taken."""
    fb = sftp_openssh_backend
    fb.put("drop/a.csv", b"a")
    fb.put("drop/in/b.csv", b"b")
    fb.put("drop/locked/c.csv", b"c")
    fb.mkdir("drop/locked", 0)
    flows = {
        "excluded": flow(tmp_path, "excluded", path="drop", include=["**/*.csv"], exclude=["locked/"]),
        "included": flow(tmp_path, "included", path="drop", include=["*.csv", "in/*.csv"]),
        "shallow": flow(tmp_path, "shallow", path="drop", recursive=True, max_depth=0),
        "everything": flow(tmp_path, "everything", path="drop", recursive=True),
    }
    d = DaemonProcess(write_config(tmp_path, {"remote": fb.instance_config()}, flows)).start()
    try:
        await wait_for(lambda: len(bodies(tmp_path / "out" / "excluded")) >= 2, 30)
        await wait_for(lambda: len(bodies(tmp_path / "out" / "included")) >= 2, 30)
        await wait_for(lambda: len(bodies(tmp_path / "out" / "shallow")) >= 1, 30)
        await wait_for(lambda: any(r.get("flow") == "everything" and "locked" in str(r) for r in d.logs()), 30)
    finally:
        d.stop()
    assert set(bodies(tmp_path / "out" / "excluded")) == {"a.csv", "b.csv"}
    assert set(bodies(tmp_path / "out" / "included")) == {"a.csv", "b.csv"}
    assert set(bodies(tmp_path / "out" / "shallow")) == {"a.csv"}
    assert not [r for r in d.logs() if r.get("flow") != "everything" and r.get("level") in ("warning", "error")]


async def test_check_connect_counts_the_files_the_selection_takes(
    sftp_openssh_backend: SftpBackend, tmp_path: Path
) -> None:
    """``conveyor check --connect`` counts as matching only what the flow would take, and lists
    no folder the flow leaves out (here one the SFTP user may not read)."""
    fb = sftp_openssh_backend
    fb.put("drop/a.csv", b"a" * 200)
    fb.put("drop/tiny.csv", b"a")
    fb.put("drop/in/b.csv", b"b" * 200)
    fb.put("drop/in/b.txt", b"b" * 200)
    fb.put("drop/locked/c.csv", b"c" * 200)
    fb.mkdir("drop/locked", 0)
    source = {"path": "drop", "include": ["**/*.csv"], "exclude": ["locked/**"], "min_size": "100B"}
    rc, lines = await check(
        write_config(tmp_path, {"remote": fb.instance_config()}, {"f": flow(tmp_path, "f", **source)})
    )
    assert rc == 0, lines
    assert "folder exists, listed: 4 files, 2 matching" in flow_line(lines, "f")
