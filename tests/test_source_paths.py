"""Every spelling of a flow source's ``path`` names one folder, with one id per file.

``.``, ``./``, ``""`` and ``/`` are the instance root; ``sub``, ``sub/.``, ``./sub``, ``sub/``
and ``./sub/../sub`` are one sub-folder. Over a real local folder, OpenSSH sshd and vsftpd,
a daemon (a child process) delivers every file once under each spelling, with the ids and
metadata path that ``path: ""`` gives, and changing ``""`` to ``.`` in one state db delivers
nothing again. A name that is really unsafe is refused, logged once per file (not per poll),
and counted in ``/status`` and ``/metrics``.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conveyor.config import load_config
from conveyor.errors import ConfigError
from tests.backends.base import FileBackend
from tests.backends.ftp import FtpBackend
from tests.backends.local import LocalBackend
from tests.backends.sftp import SftpBackend
from tests.faultlog import deliveries
from tests.harness import DaemonProcess, bodies, sidecars, wait_for, write_config
from tests.servers.ops import CONVEYOR, free_port
from tests.servers.vsftpd import vsftpd_certs, vsftpd_factory

__all__ = ["vsftpd_certs", "vsftpd_factory"]

ROOT_SPELLINGS = [".", "./", "", "/"]
SUB_SPELLINGS = ["sub", "sub/.", "./sub", "sub/", "./sub/../sub"]
FIRST = {"a.txt": b"alpha", "b.csv": b"bravo,1\n", "sub/c.txt": b"charlie", "sub/d e.txt": b"delta echo"}


@pytest.fixture(params=["local", "sftp-openssh", "ftp-vsftpd"])
def fb(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FileBackend]:
    """The source server: a local folder, a folder on the test sshd, a plain-FTP vsftpd (root '/')."""
    if request.param == "local":
        yield LocalBackend(tmp_path / "remote")
    elif request.param == "sftp-openssh":
        b: SftpBackend = request.getfixturevalue("sftp_openssh_backend")
        yield b
    else:
        yield FtpBackend("ftp-vsftpd", request.getfixturevalue("vsftpd_factory")("none"))


def source(path: str) -> dict[str, Any]:
    return {"instance": "remote", "path": path, "poll_interval": "200ms", "min_age": "0s", "after": "keep"}


def flow(tmp_path: Path, name: str, path: str) -> dict[str, Any]:
    return {
        "source": source(path),
        "target": {"type": "directory", "path": str(tmp_path / "out" / name), "filename": "{name}"},
    }


def delivered(tmp_path: Path, name: str) -> dict[str, tuple[str, str]]:
    """What a flow's target holds: file name -> (payload id, metadata file path)."""
    return {m["name"]: (m["id"], m["file"]["path"]) for m in sidecars(tmp_path / "out" / name)}


async def test_every_spelling_names_one_folder_with_the_same_ids(fb: FileBackend, tmp_path: Path) -> None:
    """A flow on ``path: ""`` runs, then its config says ``.``: nothing is delivered again, and a
    flow for every other spelling delivers the same files with the same ids and metadata paths."""
    for p, data in FIRST.items():
        fb.put(p, data)
    inst = {"remote": fb.instance_config()}
    cfg = write_config(tmp_path, inst, {"f": flow(tmp_path, "f", "")})
    d1 = DaemonProcess(cfg).start()
    try:
        await wait_for(lambda: set(bodies(tmp_path / "out" / "f")) == {"a.txt", "b.csv"}, 30)
    finally:
        assert d1.stop() == 0
    before = delivered(tmp_path, "f")

    spellings = {f"r{i}": p for i, p in enumerate(ROOT_SPELLINGS)} | {f"s{i}": p for i, p in enumerate(SUB_SPELLINGS)}
    flows = {"f": flow(tmp_path, "f", "."), "fsub": flow(tmp_path, "fsub", "sub")}
    flows.update({name: flow(tmp_path, name, p) for name, p in spellings.items()})
    cfg = write_config(tmp_path, inst, flows)
    d2 = DaemonProcess(cfg).start()
    try:
        # Files dropped after the start are delivered by every flow only after listings that also saw
        # the first files: once they are there, a second delivery of the first files would be too.
        await wait_for(lambda: all(len(bodies(tmp_path / "out" / n)) == 2 for n in flows), 30)
        fb.put("late.txt", b"late")
        fb.put("sub/late sub.txt", b"late sub")
        await wait_for(lambda: all(len(bodies(tmp_path / "out" / n)) == 3 for n in flows), 30)
    finally:
        assert d2.stop() == 0
    assert not [r for r in d2.logs() if "skipping" in str(r.get("msg"))]

    want_root = delivered(tmp_path, "f")
    want_sub = delivered(tmp_path, "fsub")
    assert {k: v for k, v in want_root.items() if k != "late.txt"} == before, "ids changed with the spelling"
    assert {n: v[1] for n, v in want_root.items()} == {"a.txt": "a.txt", "b.csv": "b.csv", "late.txt": "late.txt"}
    assert {n: v[1] for n, v in want_sub.items()} == {
        "c.txt": "sub/c.txt",
        "d e.txt": "sub/d e.txt",
        "late sub.txt": "sub/late sub.txt",
    }
    for name, p in spellings.items():
        assert delivered(tmp_path, name) == (want_root if name.startswith("r") else want_sub), f"path: {p!r}"
        assert bodies(tmp_path / "out" / name) == bodies(tmp_path / "out" / ("f" if name.startswith("r") else "fsub"))
    # Each id confirmed once per flow, over both runs (flow 'f' kept its ledger across the change).
    counts = deliveries(d1.logs())
    for key, n in deliveries(d2.logs()).items():
        counts[key] = counts.get(key, 0) + n
    assert {k: n for k, n in counts.items() if n != 1} == {}
    assert len(counts) == 3 * len(flows)


def test_config_keeps_one_spelling_and_refuses_paths_above_the_root(tmp_path: Path) -> None:
    """The loaded config holds the normal form; a '..' above the root is an error naming the key."""
    (tmp_path / "in").mkdir()
    inst = {"box": {"type": "local", "root": str(tmp_path)}}
    cases = {
        ".": "",
        "./": "",
        "/": "",
        "": "",
        "sub/.": "sub",
        "./sub": "sub",
        "sub/": "sub",
        "a//b/./c/": "a/b/c",
        "a/../b": "b",
        "/in": "in",
    }
    cfg = write_config(
        tmp_path,
        inst,
        {
            f"f{i}": {
                "source": {"instance": "box", "path": p},
                "target": {"type": "directory", "path": str(tmp_path / "o")},
            }
            for i, p in enumerate(cases)
        },
    )
    loaded = load_config(cfg)
    assert [loaded.flows[f"f{i}"].source.path for i in range(len(cases))] == list(cases.values())  # type: ignore[attr-defined]

    bad = {"up": "..", "deep": "a/../../x", "abs": "/../etc"}
    cfg = write_config(
        tmp_path,
        inst,
        {
            n: {"source": {"instance": "box", "path": p}, "target": {"type": "directory", "path": str(tmp_path / "o")}}
            for n, p in bad.items()
        }
        | {
            "moved": {
                "source": {"instance": "box", "path": "in/", "after": {"move": "./in"}},
                "target": {"type": "directory", "path": str(tmp_path / "o")},
            }
        },
    )
    with pytest.raises(ConfigError) as ei:
        load_config(cfg)
    text = str(ei.value)
    for n, p in bad.items():
        assert f"flows.{n}.source.path" in text and f"{p!r} leaves the instance root" in text
    assert "flows.moved.source.after.move" in text and "inside the watched path 'in'" in text


def test_ls_dot_lists_the_root(tmp_path: Path) -> None:
    """``conveyor ls box .`` lists what ``conveyor ls box ""`` does; ``..`` is refused in one line."""
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "a.txt").write_text("a")
    cfg = write_config(tmp_path, {"box": {"type": "local", "root": str(tmp_path / "root")}}, {})

    def ls(path: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*CONVEYOR, "ls", "-c", str(cfg), "box", path], capture_output=True, text=True, timeout=60
        )

    plain = ls("")
    assert plain.returncode == 0 and plain.stdout.rstrip().endswith("  a.txt")
    for p in (".", "./", "/"):
        assert ls(p).stdout == plain.stdout, p
    up = ls("../x")
    assert up.returncode == 2 and up.stderr.strip() == "box: path '../x' leaves the instance root ('..' above it)"


async def status_and_metrics(url: str) -> tuple[dict[str, Any], dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    async with aiohttp.ClientSession() as s:
        async with s.get(url + "/status") as r:
            doc = await r.json()
        async with s.get(url + "/metrics") as r:
            text = await r.text()
    m = {
        (x.name, tuple(sorted(x.labels.items()))): x.value
        for fam in text_string_to_metric_families(text)
        for x in fam.samples
    }
    return doc, m


async def test_unsafe_name_is_reported_once_per_file_and_counted(tmp_path: Path) -> None:
    """A file whose name holds a line break stays where it is, is logged once over many polls
    (with what the operator can do), and is counted in /status and /metrics; once it went away
    and came back, it is one more file."""
    remote = tmp_path / "remote"
    remote.mkdir()
    bad = remote / "bad\nname.txt"
    bad.write_bytes(b"x")
    out = tmp_path / "out"
    port = free_port()
    cfg = write_config(
        tmp_path,
        {"remote": {"type": "local", "root": str(remote)}},
        {
            "f": {
                "source": {**source("."), "after": "delete"},
                "target": {"type": "directory", "path": str(out), "filename": "{name}"},
            }
        },
        health={"listen": f"127.0.0.1:{port}"},
    )
    d = DaemonProcess(cfg).start()

    async def deliver(name: str) -> None:
        # Delivered only by a listing made after it was written: one that also saw the bad name (or not).
        (remote / name).write_bytes(name.encode())
        await wait_for(lambda: name in bodies(out), 30)

    def refusals() -> list[str]:
        return [str(r["msg"]) for r in d.logs() if str(r.get("msg", "")).startswith("skipping ")]

    try:
        for i in range(4):
            await deliver(f"good{i}.txt")
        doc, m = await status_and_metrics(f"http://127.0.0.1:{port}")
        assert doc["flows"]["f"]["refused"] == 1
        assert m[("conveyor_files_refused_total", (("flow", "f"),))] == 1
        bad.unlink()
        await deliver("good4.txt")
        await deliver("good5.txt")  # listed after the bad name had gone: it is forgotten
        bad.write_bytes(b"x")
        await deliver("good6.txt")
        await deliver("good7.txt")
        # The body is in place a moment before the ledger's record counts it as delivered.
        for _ in range(100):
            doc, m = await status_and_metrics(f"http://127.0.0.1:{port}")
            if doc["flows"]["f"]["delivered"] == 8:
                break
            await asyncio.sleep(0.1)
    finally:
        assert d.stop() == 0
    assert bad.exists()
    assert doc["flows"]["f"]["refused"] == 2 and doc["flows"]["f"]["delivered"] == 8
    assert m[("conveyor_files_refused_total", (("flow", "f"),))] == 2
    lines = refusals()
    assert len(lines) == 2, lines
    assert "'bad\\nname.txt'" in lines[0] and "control characters" in lines[0]
    assert "Rename it on the server" in lines[0] and "pattern or regex" in lines[0]
    assert sorted(os.listdir(out)) == sorted(
        [f"good{i}.txt" for i in range(8)] + [f"good{i}.txt.meta.json" for i in range(8)]
    )
