"""The shared behaviour suite: written once, run over every connector on real servers.

File backends: every file delivered exactly once, after actions, min_age, kill -9 mid-delivery,
hostile names. Message backends: every message delivered once and acked, kill -9 mid-stream.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FILE_BACKENDS, MESSAGE_BACKENDS
from tests.counting_sink import CountingSink, classify, counting_sink, kill_points, run_with_kills
from tests.faultlog import record
from tests.harness import DaemonProcess, bodies, running, sidecars, wait_for, write_config


@pytest.fixture(params=FILE_BACKENDS)
def fb(request: pytest.FixtureRequest) -> Any:
    """Each file backend in turn."""
    return request.getfixturevalue(request.param)


@pytest.fixture(params=MESSAGE_BACKENDS)
def mb(request: pytest.FixtureRequest) -> Any:
    """Each message backend in turn."""
    return request.getfixturevalue(request.param)


def file_flow(out: Path, **source: Any) -> dict[str, Any]:
    src = {"instance": "remote", "path": "in", "poll_interval": "200ms", "min_age": "0s", "after": "delete"}
    src.update(source)
    return {
        "source": src,
        "target": {"type": "directory", "path": str(out)},
        "retry": {"attempts": 3, "backoff": "100ms", "max_backoff": "1s"},
    }


def expected(files: dict[str, bytes]) -> set[str]:
    return {hashlib.sha256(v).hexdigest() for v in files.values()}


async def test_every_file_delivered_once(fb: Any, tmp_path: Path) -> None:
    files = {f"in/f{i:03}.csv": os.urandom(random.randint(0, 5000)) for i in range(30)}
    files["in/sub/not-recursive.csv"] = b"stays"
    for p, data in files.items():
        fb.put(p, data)
    out = tmp_path / "out"
    cfg = write_config(tmp_path, {"remote": fb.instance_config()}, {"f": file_flow(out, pattern="*.csv")})
    async with running(cfg):
        await wait_for(lambda: len(bodies(out)) == 30, 60)
        await wait_for(lambda: fb.names("in") == [], 20)
    got = bodies(out)
    assert len(got) == 30
    want = {k: v for k, v in files.items() if "/sub/" not in k}
    assert {hashlib.sha256(v).hexdigest() for v in got.values()} == expected(want)
    metas = sidecars(out)
    assert len(metas) == 30 and len({m["id"] for m in metas}) == 30
    by_name = {m["name"]: m for m in metas}
    assert by_name["f000.csv"]["sha256"] == hashlib.sha256(files["in/f000.csv"]).hexdigest()
    assert by_name["f000.csv"]["file"]["path"] == "in/f000.csv"
    assert by_name["f000.csv"]["source"]["instance"] == "remote"
    assert fb.exists("in/sub/not-recursive.csv")


async def test_after_keep_is_remembered_and_move_creates_folder(fb: Any, tmp_path: Path) -> None:
    fb.put("in/a.txt", b"a" * 100)
    fb.put("in/b.txt", b"b" * 200)
    fb.put("mv/c.txt", b"c")
    out_keep, out_move = tmp_path / "keep", tmp_path / "move"
    flows = {
        "keep": file_flow(out_keep, after="keep"),
        "move": file_flow(out_move, path="mv", after={"move": "done/today"}),
    }
    cfg = write_config(tmp_path, {"remote": fb.instance_config()}, flows)
    async with running(cfg):
        await wait_for(lambda: len(bodies(out_keep)) == 2 and len(bodies(out_move)) == 1, 60)
        await wait_for(lambda: fb.exists("done/today/c.txt"), 20)
        await asyncio.sleep(1.0)  # several more polls: kept files are not taken again
    assert fb.names("in") == ["a.txt", "b.txt"]
    assert fb.names("mv") == []
    # A restart remembers what `keep` already took.
    async with running(cfg):
        await asyncio.sleep(1.0)  # several polls go by: nothing is taken again
    assert len(sidecars(out_keep)) == 2
    # A changed file is a new file.
    fb.put("in/a.txt", b"changed", mtime=time.time() + 5)
    async with running(cfg):
        await wait_for(lambda: len(sidecars(out_keep)) == 3, 30)


async def test_min_age_holds_back_a_growing_file(fb: Any, tmp_path: Path) -> None:
    out = tmp_path / "out"
    cfg = write_config(
        tmp_path, {"remote": fb.instance_config()}, {"f": file_flow(out, min_age="1500ms", poll_interval="200ms")}
    )
    data = b""
    fb.put("in/growing.bin", data)
    async with running(cfg):
        for i in range(12):  # grows for ~3 s, longer than min_age
            data += os.urandom(1000)
            # Keep the same mtime: copies keep old mtimes, so only the size may change.
            fb.put("in/growing.bin", data, mtime=1_000_000_000)
            await asyncio.sleep(0.25)
            assert bodies(out) == {}, f"taken while still growing (step {i})"
        got = await wait_for(lambda: bodies(out), 30)
    assert list(got.values()) == [data]


async def test_hostile_names_never_escape(fb: Any, tmp_path: Path) -> None:
    out = tmp_path / "out"
    hostile = ["line\nbreak.txt", "tab\there.txt", "esc\x1b[31m.txt", "-rf", "..dots..", " spaced name .txt"]
    placed = []
    for name in hostile:
        try:
            fb.put(f"in/{name}", name.encode())
            placed.append(name)
        except (OSError, ValueError):
            pass  # the server's file system refuses it: fine
    fb.put("in/normal.txt", b"ok")
    cfg = write_config(
        tmp_path,
        {"remote": fb.instance_config()},
        {
            "f": {
                **file_flow(out, after="keep"),
                "target": {"type": "directory", "path": str(out), "filename": "{name}"},
            }
        },
    )
    async with running(cfg):
        await wait_for(lambda: "normal.txt" in bodies(out), 30)
        await asyncio.sleep(1.0)  # more polls: which hostile names arrive differs by server
    written = set(bodies(out))
    for name in written:
        assert "/" not in name and "\n" not in name and "\x1b" not in name
    # Control characters are refused at intake; the rest arrive under their own name, but for
    # "..dots..", which starts and ends with a dot (unsafe_names: rename, the default).
    assert {"-rf", "_..dots__", "normal.txt"} <= written | {n for n in placed if n not in ("-rf", "..dots..")}
    assert not any(p.name.startswith("line") for p in tmp_path.rglob("*") if p.parent != tmp_path / "remote" / "in")
    outside = [
        p
        for p in tmp_path.iterdir()
        if p.name not in ("out", "remote", "spool", "conveyor.yaml") and not p.name.startswith(("state.db", "daemon-"))
    ]
    assert outside == [] or all(p.name in ("sshd", "ftp") for p in outside)


KILLS = 3
"""kill -9s per kill scenario, at request numbers drawn once per run and spread over the transfer."""


def check_kills(sink: CountingSink, total: int) -> None:
    """Every drawn kill landed, each with a delivery open at the sink and the transfer unfinished."""
    assert len(sink.kills) == KILLS and not sink.points, sink.kills
    for k in sink.kills:
        assert k.open >= 1 and k.distinct_answered < total, k


def explain(sink: CountingSink, ids: list[str]) -> str:
    """For each id: the sink's answer numbers, and each kill's answer count and whether the
    ledger held the id delivered right after it (what classify() judged by)."""
    kills = [(k.answers, k.request) for k in sink.kills]
    out = []
    for pid in ids:
        at = [n for n, (i, _) in enumerate(sink.answered) if i == pid]
        ledger = [(k.answers, pid in k.delivered_in_ledger) for k in sink.kills]
        out.append(f"{pid}: answers {at}, kills (answers, in ledger) {ledger}")
    return f"{'; '.join(out)}; kills (answers, request) {kills}"


def record_counted(scenario: str, sink: CountingSink, want: set[str], points: list[int]) -> None:
    """Judge and record what the sink counted: every body arrived, no second delivery the ledger
    does not excuse."""
    second = classify(sink)
    lost = len(want - sink.digests())
    assert lost == 0, f"{lost} bodies never reached the sink"
    assert sink.digests() == want and sink.distinct() == len(want), "ids and bodies match one to one"
    assert second.duplicates == 0, f"delivered again although the ledger knew: {explain(sink, second.examples[:5])}"
    record(
        scenario,
        moved=sink.distinct(),
        lost=lost,
        duplicates=second.duplicates,
        redelivered=second.window,
        counted_by="http sink (every POST answered)",
        kill_points=points,
        open_at_kill=[k.open for k in sink.kills],
        distinct_at_kill=[k.distinct_answered for k in sink.kills],
    )


@pytest.mark.fault
@pytest.mark.timeout(600)
async def test_kill9_mid_delivery_loses_and_duplicates_nothing(fb: Any, tmp_path: Path) -> None:
    files = {f"in/k{i:03}.bin": os.urandom(5_000 + i) for i in range(200)}
    for p, data in files.items():
        fb.put(p, data)
    async with counting_sink() as sink:
        flow = file_flow(tmp_path / "unused")
        flow["target"] = sink.target()
        flow["max_in_flight"] = 4
        cfg = write_config(tmp_path, {"remote": fb.instance_config()}, {"f": flow})
        points = kill_points(len(files), KILLS)
        d = await run_with_kills(sink, lambda env: DaemonProcess(cfg, env).start(), tmp_path / "state.db", "f", points)
        try:
            await wait_for(lambda: sink.distinct() == len(files) and fb.names("in") == [], 120)
        finally:
            assert d.stop() == 0
    check_kills(sink, len(files))
    assert not list((tmp_path / "spool").glob("*.spool"))
    record_counted(f"kill -9 x{KILLS} mid-delivery, restarted ({fb.name})", sink, expected(files), points)


async def test_every_message_delivered_once(mb: Any, tmp_path: Path) -> None:
    msgs = [os.urandom(50) + str(i).encode() for i in range(50)]
    out = tmp_path / "out"
    cfg = write_config(
        tmp_path,
        {"broker": mb.instance_config()},
        {
            "m": {
                "source": {"instance": "broker", **mb.source_config()},
                "target": {"type": "directory", "path": str(out)},
            }
        },
    )
    async with running(cfg):
        await mb.publish(msgs)
        await wait_for(lambda: len(bodies(out)) == len(msgs), 60)
        await wait_for(lambda: _pending_zero(mb), 30)
    assert {hashlib.sha256(v).hexdigest() for v in bodies(out).values()} == {
        hashlib.sha256(m).hexdigest() for m in msgs
    }


async def _pending_zero(mb: Any) -> bool:
    return bool(await mb.pending() == 0)


@pytest.mark.fault
@pytest.mark.timeout(600)
async def test_kill9_mid_stream_loses_and_duplicates_nothing(mb: Any, tmp_path: Path) -> None:
    msgs = [os.urandom(100) + str(i).encode() for i in range(200)]
    async with counting_sink() as sink:
        cfg = write_config(
            tmp_path,
            {"broker": mb.instance_config()},
            {"m": {"source": {"instance": "broker", **mb.source_config()}, "target": sink.target()}},
        )
        await mb.publish(msgs)
        points = kill_points(len(msgs), KILLS)
        d = await run_with_kills(sink, lambda env: DaemonProcess(cfg, env).start(), tmp_path / "state.db", "m", points)
        try:
            await wait_for(lambda: sink.distinct() == len(msgs), 180)
            await wait_for(lambda: _pending_zero(mb), 60)
        finally:
            assert d.stop() == 0
    check_kills(sink, len(msgs))
    record_counted(
        f"kill -9 x{KILLS} mid-stream, restarted ({mb.name})",
        sink,
        {hashlib.sha256(m).hexdigest() for m in msgs},
        points,
    )
