"""Schedules, polls on demand and expected arrivals, through ``conveyor run`` on a local folder and
OpenSSH sshd, watched over the daemon's own HTTP endpoints and its log.

Schedules use the 6-field form (seconds first), so a cron that fires every two seconds runs in a
test; the window is an hour range on the clocks of a fixed time zone. Deadlines are set a few
seconds ahead (or behind) of the clock, to the second.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import pytest

from tests.backends.sftp import ssh_client_keys, sshd
from tests.harness import bodies
from tests.servers.ops import (
    CONVEYOR,
    DaemonProcess,
    Sink,
    free_port,
    get_json,
    http_sink,
    status,
    wait_for,
    write_config,
)
from tests.servers.sshd import Sshd

__all__ = ["ssh_client_keys", "sshd"]

ZONE = "Asia/Kolkata"
"""A fixed zone for the schedules, half an hour off UTC: hours on its clocks are not UTC hours."""
LONDON = ZoneInfo("Europe/London")
DAYS = ("MON", "TUE", "WED", "THU", "FRI", "SAT", "SUN")


def hours(*offsets: int) -> str:
    """Hours on the clocks of ZONE, ``offsets`` from the current one, as a cron field."""
    now = dt.datetime.now(ZoneInfo(ZONE)).hour
    return ",".join(str((now + o) % 24) for o in offsets)


def source_of(kind: str, tmp_path: Path, request: pytest.FixtureRequest | None = None) -> tuple[dict[str, Any], Path]:
    """An instance to read from (a local folder, or OpenSSH sshd) and the folder files go in."""
    if kind == "local" or request is None:
        folder = tmp_path / "in"
        folder.mkdir(exist_ok=True)
        return {"type": "local", "root": str(tmp_path)}, folder
    server: Sshd = request.getfixturevalue("sshd")
    folder = server.root / f"sched-{os.getpid()}-{tmp_path.name}" / "in"
    folder.mkdir(parents=True)
    server.chown(folder.parent)
    server.chown(folder)
    return server.instance_config(root=str(folder.parent)), folder


def put(folder: Path, name: str, data: bytes) -> None:
    """A file the partner dropped (owned like its folder, so an sftp source may delete it)."""
    path = folder / name
    path.write_bytes(data)
    st = folder.stat()
    os.chown(path, st.st_uid, st.st_gid)


def config(tmp_path: Path, instance: dict[str, Any], flows: dict[str, Any], port: int) -> Path:
    return write_config(
        tmp_path / "c.yaml",
        {"health": {"listen": f"127.0.0.1:{port}"}, "instances": {"box": instance}, "flows": flows},
    )


def flow(out: Path, **source: Any) -> dict[str, Any]:
    return {
        "timezone": ZONE,
        "source": {"instance": "box", "path": "in", "min_age": "0s", "after": "delete", **source},
        "target": {"type": "directory", "path": str(out), "filename": "{name}"},
    }


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def flows(s: aiohttp.ClientSession, d: DaemonProcess) -> dict[str, Any]:
    code, doc = await get_json(s, d.url + "/status")
    assert code == 200, doc
    return dict(doc["flows"])


async def gauge(s: aiohttp.ClientSession, d: DaemonProcess, flow: str) -> float | None:
    async with s.get(d.url + "/metrics") as r:
        text = await r.text()
    for line in text.splitlines():
        if line.startswith(f'conveyor_flow_expectation_missed{{flow="{flow}"}}'):
            return float(line.split()[-1])
    return None


def logged(d: DaemonProcess, level: str, text: str) -> list[dict[str, Any]]:
    out = []
    for line in d.output().splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if doc.get("level") == level and text in doc.get("msg", ""):
            out.append(doc)
    return out


async def cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    environ = {k: v for k, v in os.environ.items() if k != "CONVEYOR_TOKEN"}
    p = await asyncio.create_subprocess_exec(
        *CONVEYOR,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**environ, **(env or {})},
    )
    out, err = await asyncio.wait_for(p.communicate(), 30)
    assert p.returncode is not None
    return p.returncode, out.decode(), err.decode()


@pytest.mark.parametrize("kind", ["local", "sftp"])
async def test_a_schedule_lists_in_its_window_only_and_a_poll_on_demand_lists_now(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest, session: aiohttp.ClientSession
) -> None:
    instance, folder = source_of(kind, tmp_path, request)
    other = folder.parent / "other"
    other.mkdir()
    os.chown(other, folder.stat().st_uid, folder.stat().st_gid)
    out_in, out_off = tmp_path / "out-in", tmp_path / "out-off"
    port = free_port()
    # Every two seconds in this hour and the next on ZONE's clocks; the other flow in hours far away.
    inside, outside = f"*/2 * {hours(0, 1)} * * *", f"*/2 * {hours(12)} * * *"
    cfg = config(
        tmp_path,
        instance,
        {
            "open": flow(out_in, schedule=inside),
            "closed": flow(out_off, schedule=outside, path="other", min_age="1s"),
        },
        port,
    )
    put(folder, "a.csv", b"a")
    put(other, "z.csv", b"z")
    d = DaemonProcess(cfg, port).start()
    try:
        await d.wait_listening()
        await wait_for(lambda: bodies(out_in) == {"a.csv": b"a"}, 20)
        put(folder, "b.csv", b"b")
        await wait_for(lambda: "b.csv" in bodies(out_in), 20)  # a later firing took it
        doc = await flows(session, d)
        assert doc["open"]["schedule"] == inside and doc["open"]["last_poll"]
        # Outside its hours the other flow never listed, and says when it will.
        assert doc["closed"]["last_poll"] is None and bodies(out_off) == {}
        next_poll = dt.datetime.fromisoformat(doc["closed"]["next_poll"].replace("Z", "+00:00"))
        assert next_poll.astimezone(ZoneInfo(ZONE)).hour == int(outside.split()[2])
        assert (other / "z.csv").exists()

        # A poll on demand needs the API token, like the other calls that change something.
        url = f"{d.url}/flows/closed/poll"
        code, answer = await get_json(session, url, method="POST")
        assert code == 401 and "Authorization: Bearer" in answer["error"]
        code, answer = await get_json(session, url, method="POST", headers={"Authorization": "Bearer wrong"})
        assert code == 401
        assert bodies(out_off) == {}
        token = (tmp_path / "health-token").read_text().strip()
        code, answer = await get_json(session, url, method="POST", headers={"Authorization": f"Bearer {token}"})
        assert (code, answer) == (202, {"flow": "closed", "poll": "requested"})
        # The file was new to that listing: it is taken once it kept still for min_age, by a
        # listing that follows without waiting for the schedule.
        await wait_for(lambda: bodies(out_off) == {"z.csv": b"z"}, 20)
        await wait_for(lambda: not (other / "z.csv").exists(), 20)  # deleted once delivered, a moment later

        put(other, "y.csv", b"y")
        code, printed, err = await cli("poll", "-c", str(cfg), "closed")
        assert code == 0 and "closed: poll requested" in printed, err
        await wait_for(lambda: "y.csv" in bodies(out_off), 20)
        code, printed, err = await cli("poll", "-c", str(cfg), "nope")
        assert code == 1 and "no flow named 'nope'" in err, err
        code, printed, err = await cli("poll", "--url", d.url, "closed")
        assert code == 1 and "wants its API token" in err, err
        code, printed, err = await cli("poll", "--url", d.url, "closed", env={"CONVEYOR_TOKEN": token})
        assert code == 0, err
        for _ in range(100):  # the ledger counts a delivery a moment after the body is in place
            if (await flows(session, d))["closed"]["delivered"] == 2:
                break
            await asyncio.sleep(0.1)
        assert (await flows(session, d))["closed"]["delivered"] == 2
    finally:
        d.stop()
    assert token not in d.output()


def deadline_in(seconds: float) -> dt.datetime:
    return (dt.datetime.now(LONDON) + dt.timedelta(seconds=seconds)).replace(microsecond=0)


def expect(by: dt.datetime, on: str, alert: Sink, **more: Any) -> dict[str, Any]:
    return {
        "by": by.strftime("%H:%M:%S"),
        "on": on,
        "timezone": "Europe/London",
        "alert_url": alert.url,
        **more,
    }


def alerts(sink: Sink) -> list[dict[str, Any]]:
    return [json.loads(r.body) for r in sink.received]


@pytest.mark.parametrize("kind", ["local", "sftp"])
async def test_an_expectation_missed_then_met(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest, session: aiohttp.ClientSession
) -> None:
    instance, folder = source_of(kind, tmp_path, request)
    out = tmp_path / "out"
    port = free_port()
    async with http_sink() as sink:
        by = deadline_in(5)
        # Only on the deadline's weekday: the last one passed a week ago, too long to look back at.
        f = {**flow(out, poll_interval="200ms"), "expect": expect(by, DAYS[by.weekday()], sink, min_files=2)}
        d = DaemonProcess(config(tmp_path, instance, {"f": f}, port), port).start()
        try:
            await d.wait_listening()
            first = (await flows(session, d))["f"]["expectation"]
            assert first["state"] == "waiting" and first["deadline"] is None
            assert first["next_deadline"] == by.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            assert await gauge(session, d, "f") == 0
            put(folder, "one.csv", b"1")
            await wait_for(lambda: "one.csv" in bodies(out), 20)

            await wait_for(lambda: alerts(sink), 30)
            missed = alerts(sink)[0]
            assert missed["event"] == "missed" and missed["flow"] == "f"
            assert (missed["arrived"], missed["min_files"]) == (1, 2)
            assert missed["deadline"] == first["next_deadline"]
            window = by - dt.timedelta(days=1)
            assert missed["window_opened"] == window.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            status = (await flows(session, d))["f"]["expectation"]
            assert status["state"] == "missed" and status["missed_since"]
            assert await gauge(session, d, "f") == 1
            code, printed, err = await cli("status", "--url", d.url)
            assert code == 0 and f"expected files missed:\n  f: 1 of 2 by {missed['deadline']}" in printed, err
            (line,) = logged(d, "error", "expected files missed")
            assert line["flow"] == "f" and "1 of 2 arrived" in line["msg"]
            # A late partner is not conveyor being unready.
            async with session.get(d.url + "/readyz") as r:
                assert r.status == 200, await r.text()

            put(folder, "two.csv", b"2")
            await wait_for(lambda: len(alerts(sink)) == 2, 30)
            met = alerts(sink)[1]
            assert met["event"] == "met" and met["arrived"] == 2 and met["deadline"] == missed["deadline"]
            assert (await flows(session, d))["f"]["expectation"]["state"] == "met"
            assert await gauge(session, d, "f") == 0
            assert logged(d, "info", "expected files arrived")
        finally:
            d.stop()
        assert [r.headers.get("Content-Type", "").split(";")[0] for r in sink.received] == ["application/json"] * 2


def passed_deadline(tmp_path: Path, sink: Sink) -> tuple[Path, Path, Path, int]:
    """A local flow whose deadline, every day, passed a minute ago: (config, in, out, port)."""
    instance, folder = source_of("local", tmp_path)
    out = tmp_path / "out"
    port = free_port()
    f = {**flow(out, poll_interval="200ms"), "expect": expect(deadline_in(-60), "MON-SUN", sink)}
    return config(tmp_path, instance, {"f": f}, port), folder, out, port


async def test_a_deadline_passed_before_the_start_is_checked_against_the_ledger(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    async with http_sink() as sink:
        cfg, folder, _out, port = passed_deadline(tmp_path, sink)

        # Nothing arrived since the window opened: missed as soon as the daemon starts.
        d = DaemonProcess(cfg, port).start()
        try:
            await d.wait_listening()
            await wait_for(lambda: alerts(sink), 20)
            assert alerts(sink)[0]["event"] == "missed" and alerts(sink)[0]["arrived"] == 0
            assert await gauge(session, d, "f") == 1
            put(folder, "late.csv", b"late")
            await wait_for(lambda: len(alerts(sink)) == 2, 20)
            assert alerts(sink)[1]["event"] == "met"
        finally:
            d.stop()

        # The ledger remembers the arrival: a restart finds the deadline met and says nothing.
        d = DaemonProcess(cfg, port).start()
        try:
            await d.wait_listening()
            doc = await wait_for(lambda: _expectation(session, d, "met"), 20)
            assert doc["arrived"] == 1 and doc["deadline"] == alerts(sink)[0]["deadline"]
            assert await gauge(session, d, "f") == 0
        finally:
            d.stop()
        assert len(alerts(sink)) == 2
        assert not logged(d, "error", "expected files missed")


async def _expectation(session: aiohttp.ClientSession, d: DaemonProcess, state: str) -> dict[str, Any] | None:
    doc = (await flows(session, d))["f"].get("expectation")
    return doc if doc and doc["state"] == state else None


async def test_a_failing_alert_url_is_retried_and_blocks_nothing(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    async with http_sink(default=status(500, "down")) as sink:
        cfg, folder, out, port = passed_deadline(tmp_path, sink)
        d = DaemonProcess(cfg, port).start()
        try:
            await d.wait_listening()
            await wait_for(lambda: _expectation(session, d, "missed"), 20)
            put(folder, "a.csv", b"a")
            await wait_for(lambda: bodies(out) == {"a.csv": b"a"}, 20)  # delivery goes on meanwhile
            await wait_for(lambda: logged(d, "error", "alert was not sent after 4 tries"), 40)
            assert len(sink.received) >= 4
        finally:
            d.stop()


async def test_a_flow_that_cannot_start_is_still_watched_and_the_daemon_stops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from conveyor.daemon import Daemon
    from tests.harness import running

    def cannot_build(self: Daemon, flow: Any) -> Any:
        raise RuntimeError("no such library")

    monkeypatch.setattr(Daemon, "build_flow", cannot_build)
    async with http_sink() as sink:
        cfg, _folder, _out, _port = passed_deadline(tmp_path, sink)
        async with running(cfg) as d:
            await wait_for(lambda: alerts(sink), 20)
            assert d.status.flows["f"].state == "failed"
            assert d.status.flows["f"].expectation["state"] == "missed"  # type: ignore[index]
            assert await d.reload()  # the watch of a flow that failed is started again, not doubled
            assert list(d.watchers) == ["f"]
        assert d.watchers == {}
