"""Stopping the daemon while a poll lists a big folder ends it cleanly, every time; a crash, should
one happen, leaves every thread's stack in the output."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conveyor.interfaces import Context
from conveyor.payload import Body, Payload, Spool
from conveyor.status import StatusBoard
from conveyor.targets.directory import target as directory_target
from conveyor.targets.directory.config import DirectoryTargetConfig
from conveyor.targets.directory.target import DirectoryTarget
from conveyor.transfer.local import instance as local
from conveyor.transfer.local.config import LocalConfig
from conveyor.transfer.local.instance import LocalInstance
from tests.harness import DaemonProcess, wait_for, write_config

pytestmark = pytest.mark.fault

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "stop-during-poll"


def test_stops_during_a_local_listing_exit_cleanly(tmp_path: Path) -> None:
    """20 SIGTERMs, each 1.2-2.6 s after start, while every poll walks a 30,000-file folder on
    worker threads: every one exits 0 (a listing cancelled mid-batch once closed the folder
    under the thread still reading it: SIGSEGV in about one stop of ten)."""
    r = subprocess.run(
        [sys.executable, str(SCRIPT), "20", "--backends", "local", "--keep", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    row = re.search(r"^local\s+\d+\s+(\d+)\s+(\d+)", r.stdout, re.M)
    crashed = "".join(p.read_text(errors="replace")[-3000:] for p in sorted(tmp_path.glob("*.log"))[:1])
    assert row is not None, r.stdout + r.stderr
    assert (int(row[1]), int(row[2])) == (20, 0), f"{r.stdout}\nfirst crash's output ends:\n{crashed}"
    assert r.returncode == 0


async def test_a_crash_writes_every_threads_stack(tmp_path: Path) -> None:
    """A fatal signal in ``conveyor run`` prints the stack of the loop and of the worker threads."""
    (tmp_path / "disk" / "in").mkdir(parents=True)
    cfg = write_config(
        tmp_path,
        {"disk": {"type": "local", "root": str(tmp_path / "disk")}},
        {
            "f": {
                "source": {"instance": "disk", "path": "in", "poll_interval": "200ms"},
                "target": {"type": "directory", "path": str(tmp_path / "out")},
            }
        },
    )
    d = DaemonProcess(cfg)
    d.env.pop("PYTHONFAULTHANDLER", None)  # the daemon must turn it on itself
    d.start()
    assert d.proc is not None
    try:
        await wait_for(lambda: "conveyor started" in d.text(), 30)
        d.signal(signal.SIGSEGV)
        assert d.proc.wait(30) == -signal.SIGSEGV
    finally:
        if d.proc.poll() is None:
            d.kill9()
    out = d.text()
    assert "Fatal Python error: Segmentation fault" in out, out[-3000:]
    threads = re.findall(r"^(?:Current thread|Thread) 0x", out, re.M)
    assert len(threads) >= 2, out[-3000:]  # at least the event loop's and the state store's
    assert "in cmd_run" in out, out[-3000:]


def gate(fn: Callable[..., Any]) -> tuple[Callable[..., Any], threading.Event, threading.Event, list[Any]]:
    """``fn`` made to wait, on its first call, until the test opens the gate: (the wrapper,
    entered, the gate, each call's result)."""
    entered, opened, results = threading.Event(), threading.Event(), []

    def wrapper(*args: Any) -> Any:
        if not entered.is_set():
            entered.set()
            opened.wait(30)
        result = fn(*args)
        results.append(result)
        return result

    return wrapper, entered, opened, results


async def cancel_while(task: asyncio.Task[Any], entered: threading.Event) -> None:
    """Cancel ``task`` once a worker thread of it is inside a call, and wait for the task to end."""
    await wait_for(entered.is_set, 10, 0.01)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_a_cancelled_listing_keeps_the_folder_open_until_its_thread_is_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scandir iterator a worker thread reads is closed after that read, not under it."""
    (tmp_path / "big").mkdir()
    for i in range(2500):
        (tmp_path / "big" / f"f{i}").touch()
    inst = LocalInstance(
        "disk",
        LocalConfig(type="local", root=str(tmp_path)),
        Context(spool=Spool(tmp_path / "spool"), status=StatusBoard()),
    )
    take, entered, opened, batches = gate(local._take)
    monkeypatch.setattr(local, "_take", take)

    async def walk() -> None:
        async for _ in inst.list("big", False):
            pass

    await cancel_while(asyncio.create_task(walk()), entered)
    opened.set()
    await wait_for(lambda: batches, 10, 0.01)
    await inst.close()
    assert len(batches[0]) == local._BATCH, "the folder was closed while the thread was reading it"


async def test_a_cancelled_delivery_leaves_no_temporary_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A large body's delivery cancelled while its thread writes: the temporaries go once it is done."""
    out = tmp_path / "out"
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(1 << 20))
    t = DirectoryTarget("f", DirectoryTargetConfig(type="directory", path=str(out)))
    stage, entered, opened, staged = gate(directory_target._Job.stage)
    monkeypatch.setattr(directory_target._Job, "stage", stage)
    p = Payload(id="p1", flow="f", source_instance="i", source_type="local", body=Body.from_file(big, owned=False))
    await cancel_while(asyncio.create_task(t.deliver(p)), entered)
    opened.set()
    await wait_for(lambda: staged, 10, 0.01)
    await wait_for(lambda: not list(out.glob("*.tmp")), 5, 0.01)
    await t.close()
    assert sorted(os.listdir(out)) == []
