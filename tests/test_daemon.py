"""The daemon's life cycle: SIGHUP reload, SIGTERM drain, backpressure, the spool."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import sys
import types
from pathlib import Path
from typing import Any

import yaml

from conveyor.config import load_config
from conveyor.daemon import Daemon, loop_factory
from conveyor.flows.runner import TAIL
from conveyor.payload import Payload
from tests.harness import DaemonProcess, bodies, running, wait_for, write_config


def local_flow(src: str, out: Path, **over: Any) -> dict[str, Any]:
    flow: dict[str, Any] = {
        "source": {"instance": "disk", "path": src, "poll_interval": "100ms", "min_age": "0s", "after": "delete"},
        "target": {"type": "directory", "path": str(out), "filename": "{name}"},
    }
    flow.update(over)
    return flow


def started(d: DaemonProcess, flow: str) -> int:
    return sum(1 for r in d.logs() if r.get("msg") == "flow started" and r.get("flow") == flow)


async def test_sighup_reload_keeps_untouched_flows_running(tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    for sub in ("a", "b", "c"):
        (disk / sub).mkdir(parents=True)
    inst = {"disk": {"type": "local", "root": str(disk)}}
    flows = {
        "keep": local_flow("a", tmp_path / "out-a"),
        "change": local_flow("b", tmp_path / "out-b"),
        "remove": local_flow("c", tmp_path / "out-c"),
    }
    cfg = write_config(tmp_path, inst, flows)
    d = DaemonProcess(cfg).start()
    try:
        await wait_for(lambda: all(started(d, f) == 1 for f in flows), 20)
        (disk / "a" / "1").write_bytes(b"1")
        await wait_for(lambda: "1" in bodies(tmp_path / "out-a"), 20)
        # An invalid config is refused and everything keeps running.
        good = cfg.read_text()
        cfg.write_text(good + "\nbogus: true\n")
        d.signal(signal.SIGHUP)
        await wait_for(lambda: any("reload refused" in r.get("msg", "") for r in d.logs()), 20)
        assert "bogus" in d.text() and "unknown key" in d.text()
        # A real change: flow 'change' gets a new target, 'remove' goes, 'added' arrives.
        doc = yaml.safe_load(good)
        doc["flows"]["change"]["target"]["path"] = str(tmp_path / "out-b2")
        del doc["flows"]["remove"]
        (disk / "d").mkdir()
        doc["flows"]["added"] = local_flow("d", tmp_path / "out-d")
        cfg.write_text(yaml.safe_dump(doc))
        d.signal(signal.SIGHUP)
        await wait_for(lambda: started(d, "added") == 1 and started(d, "change") == 2, 20)
        (disk / "a" / "2").write_bytes(b"2")
        (disk / "b" / "3").write_bytes(b"3")
        (disk / "c" / "4").write_bytes(b"4")
        (disk / "d" / "5").write_bytes(b"5")
        await wait_for(
            lambda: (
                "2" in bodies(tmp_path / "out-a")
                and "3" in bodies(tmp_path / "out-b2")
                and "5" in bodies(tmp_path / "out-d")
            ),
            20,
        )
        await asyncio.sleep(0.5)  # a little longer: a restart of "keep" or a late pass of "remove" would show
        assert started(d, "keep") == 1, "the untouched flow was restarted"
        assert (disk / "c" / "4").exists(), "the removed flow is still running"
    finally:
        assert d.stop() == 0


class SlowTarget:
    """A target that takes its time, to hold deliveries in flight."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.active = 0
        self.peak = 0
        self.done: list[str] = []

    async def deliver(self, payload: Payload) -> None:
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            await asyncio.sleep(self.delay)
            self.done.append(payload.id)
        finally:
            self.active -= 1

    async def close(self) -> None:
        pass


async def test_backpressure_bounds_in_flight_and_drain_finishes_them(tmp_path: Path, monkeypatch: Any) -> None:
    disk = tmp_path / "disk" / "in"
    disk.mkdir(parents=True)
    for i in range(40):
        (disk / f"f{i}").write_bytes(b"x" * 10)
    cfg = write_config(
        tmp_path,
        {"disk": {"type": "local", "root": str(tmp_path / "disk")}},
        {"slow": local_flow("in", tmp_path / "out", max_in_flight=3)},
    )
    slow = SlowTarget(0.3)
    monkeypatch.setattr(Daemon, "_target", lambda self, flow: slow)
    async with running(cfg) as daemon:
        await wait_for(lambda: len(slow.done) >= 4, 20)
        # In flight counts a delivery until its completion (ledger, after action) is done too, and
        # completions may trail the next deliveries; the target itself never saw more than 3.
        assert daemon.status.flows["slow"].in_flight <= 3 * TAIL
    # The drain let the three in flight finish; their files are gone, the rest wait.
    assert slow.peak == 3
    left = len(list(disk.iterdir()))
    assert left == 40 - len(slow.done)


async def test_drain_deadline_releases_unfinished_deliveries(tmp_path: Path, monkeypatch: Any) -> None:
    disk = tmp_path / "disk" / "in"
    disk.mkdir(parents=True)
    (disk / "f").write_bytes(b"x")
    cfg = write_config(
        tmp_path,
        {"disk": {"type": "local", "root": str(tmp_path / "disk")}},
        {"slow": local_flow("in", tmp_path / "out")},
        shutdown_timeout="500ms",
    )
    slow = SlowTarget(60)
    monkeypatch.setattr(Daemon, "_target", lambda self, flow: slow)
    async with running(cfg) as daemon:
        await wait_for(lambda: slow.active == 1, 20)
        store = daemon.store
    assert (disk / "f").exists()
    # After the deadline the item went back to pending: a restart delivers it.
    cfg2 = load_config(cfg)
    d2 = Daemon(cfg2)
    await d2.store.open()
    items = await d2.store.list("slow", None)
    await d2.store.close()
    assert [i.state for i in items] == ["pending"]
    assert store is not None


async def test_large_body_goes_through_the_spool(tmp_path: Path) -> None:
    """A file bigger than the spool threshold is copied via disk, never held whole in memory."""
    from conveyor.payload import Spool

    spool = Spool(tmp_path / "spool", threshold=1024)
    spool.prepare()
    w = spool.writer()
    data = os.urandom(10_000)
    for i in range(0, len(data), 700):
        w.write(data[i : i + 700])
    body = w.finish()
    assert not body.in_memory and body.path is not None and body.path.parent == tmp_path / "spool"
    assert await body.digest() == hashlib.sha256(data).hexdigest()
    assert b"".join([c async for c in body.chunks(999)]) == data
    body.release()
    assert not list((tmp_path / "spool").iterdir()) and spool.used == 0


async def test_spool_limit_pauses_and_nothing_is_lost(tmp_path: Path) -> None:
    from conveyor.errors import NoSpace
    from conveyor.payload import Spool

    spool = Spool(tmp_path / "spool", threshold=100, max_bytes=1000)
    spool.prepare()
    w = spool.writer()
    w.write(b"x" * 900)
    try:
        w.write(b"x" * 200)
        raise AssertionError("limit not enforced")
    except NoSpace as e:
        assert "spool limit" in str(e)
    w.abort()
    assert spool.used == 0
    w2 = spool.writer()
    w2.write(b"y" * 1000)
    w2.finish().release()
    assert spool.used == 0


async def test_second_signal_stops_waiting_for_deliveries(tmp_path: Path) -> None:
    """SIGTERM drains for shutdown_timeout; a second SIGTERM releases what is in flight at once."""
    import http.server
    import socketserver
    import threading

    arrived = threading.Event()

    class Slow(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            import time as _t

            arrived.set()
            _t.sleep(30)

        def log_message(self, *a: Any) -> None:
            pass

    srv = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Slow)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        disk = tmp_path / "disk" / "in"
        disk.mkdir(parents=True)
        (disk / "f").write_bytes(b"x")
        flow = local_flow("in", tmp_path / "out")
        flow["target"] = {"type": "http", "url": f"http://127.0.0.1:{srv.server_address[1]}/", "timeout": "60s"}
        cfg = write_config(
            tmp_path, {"disk": {"type": "local", "root": str(tmp_path / "disk")}}, {"f": flow}, shutdown_timeout="60s"
        )
        d = DaemonProcess(cfg).start()
        await wait_for(lambda: any(r.get("msg") == "flow started" for r in d.logs()), 20)
        await wait_for(arrived.is_set, 20)  # the POST is in flight
        d.signal(signal.SIGTERM)
        await wait_for(lambda: any(str(r.get("msg", "")).startswith("waiting up to") for r in d.logs()), 20)
        t0 = asyncio.get_running_loop().time()
        d.signal(signal.SIGTERM)
        assert d.stop(timeout=20) == 0
        assert asyncio.get_running_loop().time() - t0 < 10
        assert (disk / "f").exists()
    finally:
        srv.shutdown()


async def test_gc_passes_are_fewer_while_running_and_restored_after(tmp_path: Path) -> None:
    """While the daemon runs, start-up's objects are frozen and the collector's thresholds are
    raised (its young-generation passes cost a tenth of a Pub/Sub flow's CPU); both are undone
    when it stops, and the files still arrive."""
    import gc

    from conveyor.daemon import GC_THRESHOLD

    disk = tmp_path / "disk" / "in"
    disk.mkdir(parents=True)
    before = gc.get_threshold()
    cfg = write_config(
        tmp_path, {"disk": {"type": "local", "root": str(tmp_path / "disk")}}, {"f": local_flow("in", tmp_path / "out")}
    )
    async with running(cfg):
        await wait_for(lambda: gc.get_threshold() == GC_THRESHOLD, 10)
        assert gc.get_freeze_count() > 0
        (disk / "a").write_bytes(b"a")
        await wait_for(lambda: "a" in bodies(tmp_path / "out"), 20)
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


async def test_a_flow_task_that_swallows_its_cancellation_is_named_once_and_not_cancelled_again(
    caplog: Any, monkeypatch: Any
) -> None:
    """The hard stop is one cancellation. A task that swallows it (what a careless library does)
    holds the stop for STOP_GRACE at most: one error names the flow and where it waits."""
    import conveyor.daemon
    from conveyor.daemon import cancel_once

    monkeypatch.setattr(conveyor.daemon, "STOP_GRACE", 0.3)
    cancels = 0
    release = asyncio.Event()

    async def stubborn() -> None:
        nonlocal cancels
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                cancels += 1  # swallowed; it goes on waiting

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    t0 = asyncio.get_running_loop().time()
    assert await asyncio.wait_for(cancel_once(task, "f"), 5) is False
    assert 0.3 <= asyncio.get_running_loop().time() - t0 < 1.5
    await asyncio.sleep(0.5)  # time for a second cancellation, were one sent
    assert cancels == 1 and not task.done()
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and getattr(errors[0], "flow", None) == "f"
    assert "waiting in stubborn()" in errors[0].getMessage() and "test_daemon.py" in errors[0].getMessage()
    release.set()
    await asyncio.wait_for(task, 5)
    # A task that honours the cancellation ends within it, quietly.
    quiet = asyncio.create_task(asyncio.sleep(30))
    await asyncio.sleep(0)
    assert await cancel_once(quiet, "g") is True and quiet.cancelled()
    assert len([r for r in caplog.records if r.levelname == "ERROR"]) == 1


STUBBORN_RUN = """
import asyncio, sys
from conveyor.cli import main
from conveyor.flows.filesource import FileSource

async def run(self, *args):
    while True:  # a source that swallows every cancellation and ignores the stop signal
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            print("swallowed a cancellation", flush=True)

FileSource.run = run
sys.exit(main(["run", "-c", sys.argv[1]]))
"""


async def test_sigterm_ends_the_daemon_even_when_a_flow_never_ends(tmp_path: Path) -> None:
    """A flow whose task ignores both the stop signal and its cancellation does not keep the
    daemon past its deadline: the drain, one cancellation, STOP_GRACE, one error, exit 0."""
    import subprocess
    import sys
    import time

    (tmp_path / "disk" / "in").mkdir(parents=True)
    cfg = write_config(
        tmp_path,
        {"disk": {"type": "local", "root": str(tmp_path / "disk")}},
        {"stuck": local_flow("in", tmp_path / "out")},
        shutdown_timeout="1s",
    )
    script = tmp_path / "stubborn_run.py"
    script.write_text(STUBBORN_RUN)
    log = tmp_path / "daemon.log"

    def start() -> subprocess.Popen[bytes]:
        with open(log, "wb") as out:
            return subprocess.Popen([sys.executable, str(script), str(cfg)], stdout=out, stderr=subprocess.STDOUT)

    proc = start()
    try:
        await wait_for(lambda: b"flow started" in log.read_bytes(), 20)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rc = await asyncio.to_thread(proc.wait, 20)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert rc == 0, text
    assert took < 10, text  # shutdown_timeout 1 s, STOP_GRACE 5 s, and room
    assert text.count("swallowed a cancellation") == 1, text  # cancelled once, not again at exit
    assert text.count("still running") == 1 and "waiting in run()" in text, text


def test_the_daemon_runs_on_uvloop_when_installed_unless_told_not_to(monkeypatch: Any) -> None:
    def new_event_loop() -> asyncio.AbstractEventLoop:
        raise AssertionError("only named, not called")

    monkeypatch.delenv("CONVEYOR_EVENT_LOOP", raising=False)
    monkeypatch.setitem(sys.modules, "uvloop", types.SimpleNamespace(new_event_loop=new_event_loop))
    assert loop_factory() is new_event_loop
    monkeypatch.setenv("CONVEYOR_EVENT_LOOP", "asyncio")
    assert loop_factory() is None
    monkeypatch.delenv("CONVEYOR_EVENT_LOOP")
    monkeypatch.setitem(sys.modules, "uvloop", None)  # not installed: importing it fails
    assert loop_factory() is None
