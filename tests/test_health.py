"""The health endpoint over real HTTP: /healthz, /readyz (including stalls), /status, /metrics."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

import conveyor.health
from tests.servers.ops import (
    CONVEYOR,
    api_headers,
    daemon_in_process,
    delayed,
    free_port,
    get_json,
    http_sink,
    local_flow,
    wait_for,
    write_config,
)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@contextlib.asynccontextmanager
async def blackhole() -> AsyncIterator[int]:
    """A TCP server that accepts connections and never says a word (a hung FTP server)."""
    held: list[asyncio.StreamWriter] = []

    async def accept(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        held.append(w)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        for w in held:
            w.close()
        server.close()
        await server.wait_closed()


def flow_count(d: Any, field: str) -> int | None:
    """A counter of flow "f", or None before the flow has started (the daemon starts it after
    the health server is up, so a test can get here first)."""
    st = d.status.flows.get("f")
    return None if st is None else int(getattr(st, field))


async def test_endpoints_on_a_moving_flow(tmp_path: Path) -> None:
    inst, flow = local_flow(tmp_path, {"type": "directory", "path": str(tmp_path / "out"), "fsync": False})
    config = write_config(
        tmp_path / "c.yaml",
        {"health": {"listen": "127.0.0.1:0"}, "replica": "r1", "instances": {"box": inst}, "flows": {"f": flow}},
    )
    for i in range(3):
        (tmp_path / "in" / f"{i}.csv").write_text("x" * (10 + i))
    async with daemon_in_process(config) as d, aiohttp.ClientSession() as s:
        base = d.health.url
        await wait_for(lambda: flow_count(d, "delivered") == 3)
        code, doc = await get_json(s, base + "/healthz")
        assert code == 200 and doc["status"] == "ok" and doc["problems"] == []
        code, doc = await wait_for(lambda: _ready(s, base))
        assert code == 200 and doc == {"ready": True, "reasons": {}}
        code, doc = await get_json(s, base + "/status")
        assert code == 200
        assert doc["replica"] == "r1" and doc["config"].endswith("c.yaml") and doc["version"]
        assert doc["instances"]["box"]["state"] == "up"
        f = doc["flows"]["f"]
        assert f["delivered"] == 3 and f["bytes"] == 33 and f["in_flight"] == 0 and f["last_delivery"]
        async with s.get(base + "/metrics") as r:
            assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
            m = samples(await r.text())
        assert m[("conveyor_payloads_total", (("flow", "f"), ("outcome", "delivered")))] == 3
        assert m[("conveyor_payload_bytes_total", (("flow", "f"),))] == 33
        assert m[("conveyor_delivery_seconds_count", (("flow", "f"),))] == 3
        assert m[("conveyor_instance_up", (("instance", "box"),))] == 1
        assert m[("conveyor_in_flight", (("flow", "f"),))] == 0
        auth = api_headers(config)
        code, doc = await get_json(s, base + "/flows/nope/items", headers=auth)
        assert code == 404 and "nope" in doc["error"]
        code, doc = await get_json(s, base + "/flows/f/items?state=bogus", headers=auth)
        assert code == 400
        async with s.get(base + "/nothing-here") as r:
            assert r.status == 404


async def _ready(s: aiohttp.ClientSession, base: str) -> tuple[int, dict[str, object]] | None:
    code, doc = await get_json(s, base + "/readyz")
    return (code, doc) if code == 200 else None


async def test_readyz_stalled_file_sources_and_connect_metrics(tmp_path: Path) -> None:
    """A poll that hangs (a server that accepts and never answers) and a poll that keeps
    failing (the local folder was removed) both turn into `stalled` after 3 x poll_interval
    (plus the status board's 5 s grace)."""
    async with blackhole() as port:
        inst, flow = local_flow(
            tmp_path / "box", {"type": "directory", "path": str(tmp_path / "out")}, poll_interval="1s"
        )
        inst["create"] = False  # else the folder removed below is simply made again
        closed = free_port()
        config = write_config(
            tmp_path / "c.yaml",
            {
                "health": {"listen": "127.0.0.1:0"},
                "instances": {
                    "box": inst,
                    "hung": {"type": "ftp", "host": "127.0.0.1", "port": port, "password": "pw", "timeout": "60s"},
                    "refused": {"type": "ftp", "host": "127.0.0.1", "port": closed, "password": "pw", "timeout": "2s"},
                },
                "flows": {
                    "local": flow,
                    "hung": {
                        "source": {"instance": "hung", "path": "out", "poll_interval": "1s"},
                        "target": {"type": "directory", "path": str(tmp_path / "out2")},
                    },
                    "refused": {
                        "source": {"instance": "refused", "path": "out", "poll_interval": "1s"},
                        "target": {"type": "directory", "path": str(tmp_path / "out3")},
                    },
                },
            },
        )
        async with daemon_in_process(config) as d, aiohttp.ClientSession() as s:
            base = d.health.url
            await wait_for(lambda: d.status.flows["local"].last_poll)
            shutil.rmtree(tmp_path / "box")
            started = time.monotonic()

            async def stalled() -> dict[str, str] | None:
                code, doc = await get_json(s, base + "/readyz")
                assert code == 503
                flows = doc["reasons"].get("flows", {})
                ok = all(flows.get(n, "").startswith("stalled") for n in ("hung", "local"))
                return flows if ok else None

            flows = await wait_for(stalled, 20, 0.5)
            took = time.monotonic() - started
            assert "last completed poll" in flows["hung"] and "poll_interval 1s" in flows["hung"]
            assert took >= 3.0
            code, doc = await get_json(s, base + "/readyz")
            inst_reasons = doc["reasons"]["instances"]
            assert inst_reasons["hung"].startswith("connecting") and inst_reasons["refused"].startswith("down")
            code, doc = await get_json(s, base + "/healthz")
            assert code == 200  # not ready, but alive: restarting would not help
            async with s.get(base + "/metrics") as r:
                m = samples(await r.text())
            assert m[("conveyor_connect_attempts_total", (("instance", "refused"), ("outcome", "error")))] >= 1
            assert m[("conveyor_instance_up", (("instance", "refused"),))] == 0
            assert m[("conveyor_instance_up", (("instance", "hung"),))] == 0


async def test_readyz_stalled_by_a_delivery_past_its_timeout(tmp_path: Path) -> None:
    async with http_sink(plan=[delayed(4.0)]) as sink:
        inst, flow = local_flow(tmp_path, {"type": "http", "url": sink.url, "timeout": "1s"}, poll_interval="30s")
        flow["retry"] = {"attempts": 3, "backoff": "3s", "max_backoff": "3s"}
        config = write_config(
            tmp_path / "c.yaml", {"health": {"listen": "127.0.0.1:0"}, "instances": {"box": inst}, "flows": {"f": flow}}
        )
        (tmp_path / "in" / "a.txt").write_text("slow")
        async with daemon_in_process(config) as d, aiohttp.ClientSession() as s:
            base = d.health.url

            async def stuck() -> str | None:
                code, doc = await get_json(s, base + "/readyz")
                reason = doc["reasons"].get("flows", {}).get("f", "")
                return reason if code == 503 and reason.startswith("stalled") else None

            reason = await wait_for(stuck, 10, 0.1)
            assert "in flight" in reason and "timeout 1s" in reason
            await wait_for(lambda: flow_count(d, "delivered") == 1, 15)
            await wait_for(lambda: _ready(s, base), 5)


async def test_healthz_reports_a_blocked_event_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(conveyor.health, "LAG_MEMORY", 1.5)
    inst, flow = local_flow(tmp_path, {"type": "directory", "path": str(tmp_path / "out")})
    config = write_config(
        tmp_path / "c.yaml", {"health": {"listen": "127.0.0.1:0"}, "instances": {"box": inst}, "flows": {"f": flow}}
    )
    async with daemon_in_process(config, stall_after=1.0) as d, aiohttp.ClientSession() as s:
        base = d.health.url

        async def healthy() -> bool:
            code, _ = await get_json(s, base + "/healthz")
            return code == 200

        await wait_for(healthy, 5)
        # Asked from another thread while the daemon loop is blocked: the server thread answers
        # during the stall, not after it.
        during: list[tuple[float, int, str]] = []

        def ask() -> None:
            time.sleep(1.5)  # well inside the 3 s stall: the loop cannot tell us it started
            t0 = time.monotonic()
            try:
                urllib.request.urlopen(base + "/healthz", timeout=5)
            except urllib.error.HTTPError as e:
                during.append((time.monotonic() - t0, e.code, e.read().decode()))

        asker = threading.Thread(target=ask)
        asker.start()
        asyncio.get_running_loop().call_soon(time.sleep, 3.0)  # a blocking call in the daemon loop
        await asyncio.sleep(0.1)  # yields to the loop, which runs the stall
        await asyncio.to_thread(asker.join)
        took, code_during, text = during[0]
        assert code_during == 503 and "event loop blocked" in text and took < 1.0
        code, doc = await get_json(s, base + "/healthz")
        assert code == 503 and "event loop blocked" in doc["problems"][0]  # remembered after the stall
        await wait_for(healthy, 6)  # recovers once the stall is older than LAG_MEMORY


async def test_readyz_during_the_drain(tmp_path: Path) -> None:
    async with http_sink(plan=[delayed(1.5)]) as sink:
        inst, flow = local_flow(tmp_path, {"type": "http", "url": sink.url}, poll_interval="30s")
        config = write_config(
            tmp_path / "c.yaml", {"health": {"listen": "127.0.0.1:0"}, "instances": {"box": inst}, "flows": {"f": flow}}
        )
        (tmp_path / "in" / "a.txt").write_text("x")
        async with daemon_in_process(config) as d, aiohttp.ClientSession() as s:
            base = d.health.url
            await wait_for(lambda: flow_count(d, "in_flight") == 1)
            d.request_stop()

            async def stopping() -> bool:
                code, doc = await get_json(s, base + "/readyz")
                return bool(code == 503 and doc["reasons"].get("daemon") == "stopping")

            await wait_for(stopping, 5)
            await wait_for(lambda: flow_count(d, "delivered") == 1, 5)


def test_busy_health_port_is_a_fatal_start_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        inst, flow = local_flow(tmp_path, {"type": "directory", "path": str(tmp_path / "out")})
        config = write_config(
            tmp_path / "c.yaml",
            {"health": {"listen": f"127.0.0.1:{port}"}, "instances": {"box": inst}, "flows": {"f": flow}},
        )
        p = subprocess.run([*CONVEYOR, "run", "-c", str(config)], capture_output=True, text=True, timeout=30)
    assert p.returncode == 1
    assert f"health endpoint cannot listen on 127.0.0.1:{port}" in p.stderr
    assert "set health.listen to another port" in p.stderr
    assert "Traceback" not in p.stderr  # a start error that says what to do, not a crash


async def test_endpoints_follow_a_reload(tmp_path: Path) -> None:
    inst, flow = local_flow(tmp_path, {"type": "directory", "path": str(tmp_path / "out")})
    doc = {"health": {"listen": "127.0.0.1:0"}, "instances": {"box": inst}, "flows": {"f": flow}}
    config = write_config(tmp_path / "c.yaml", doc)
    async with daemon_in_process(config) as d, aiohttp.ClientSession(headers=api_headers(config)) as s:
        base = d.health.url
        code, _ = await get_json(s, base + "/flows/g/items")
        assert code == 404
        (tmp_path / "in2").mkdir()
        doc["flows"] = {"g": {**flow, "source": {**flow["source"], "path": "in2"}}}
        write_config(config, doc)
        assert await d.reload()
        code, _ = await get_json(s, base + "/flows/g/items")
        assert code == 200
        code, _ = await get_json(s, base + "/flows/f/items")
        assert code == 404
        code, st = await get_json(s, base + "/status")
        assert list(st["flows"]) == ["g"]
        await wait_for(lambda: _ready(s, base))


def test_metrics_registries_are_per_daemon_and_never_raise() -> None:
    from conveyor.metrics import Metrics
    from conveyor.status import StatusBoard

    boards = [StatusBoard(), StatusBoard()]
    metrics = [Metrics(b) for b in boards]
    for m in metrics:
        m.attach()
    boards[0].add_flow("f")
    boards[0].delivery_started("f", "x")
    boards[0].delivery_ended("f", "x", "delivered", 10, 0.2)
    metrics[0].on_event("payload")  # malformed event: logged once, not raised
    boards[1].add_instance("i", "local", "/srv")
    boards[1].connect_attempt("i", False)
    m0, m1 = samples(metrics[0].exposition().decode()), samples(metrics[1].exposition().decode())
    assert m0[("conveyor_payloads_total", (("flow", "f"), ("outcome", "delivered")))] == 1
    assert m0[("conveyor_delivery_seconds_sum", (("flow", "f"),))] == 0.2
    assert not any(name == "conveyor_connect_attempts_total" for name, _ in m0)
    assert m1[("conveyor_connect_attempts_total", (("instance", "i"), ("outcome", "error")))] == 1
    assert m1[("conveyor_instance_up", (("instance", "i"),))] == 0  # registered, never up
    assert not any(name == "conveyor_payloads_total" for name, _ in m1)
