"""RabbitMQ through the whole daemon: poison messages dead-lettered after max_attempts, a relay
to another queue with confirms, and ``check --connect`` failing fast on bad credentials."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.harness import bodies, running, wait_for, write_config
from tests.servers.rabbitmq import (
    Vhost,
    close_connections,
    declare,
    drain,
    publish,
    rabbit_vhost_fixture,  # noqa: F401  (the rabbit_vhost fixture)
)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
async def test_poison_message_is_dead_lettered_after_max_attempts(
    rabbit_vhost: Vhost, tmp_path: Path, queue_type: str
) -> None:
    v = rabbit_vhost
    q, dlq = v.q(f"poison-{queue_type}"), v.q(f"poison-{queue_type}.dlq")
    await declare(v, dlq)
    args = {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dlq}
    source = {"instance": "mq", "queue": q, "max_attempts": 3, "declare": {"type": queue_type, "arguments": args}}
    flows = {
        # every delivery fails (connection refused: transient), one try per delivery
        "bad": {
            "source": source,
            "target": {"type": "http", "url": f"http://127.0.0.1:{closed_port()}/", "timeout": "2s"},
            "retry": {"attempts": 1, "backoff": "10ms", "max_backoff": "10ms"},
        },
    }
    cfg = write_config(tmp_path, {"mq": v.instance_config()}, flows)
    async with running(cfg):
        await wait_for(lambda: q in v.counts(), 20)
        await publish(v, q, [b"poison"], message_id="poison-1")
        dead = await wait_for(lambda: drain(v, dlq, wait=0.2), 60)
    assert [m.message_id for m in dead] == ["poison-1"]
    deaths = dead[0].headers["x-death"]
    assert deaths[0]["reason"] == "rejected"  # rejected once, not looped through requeues forever
    assert v.counts().get(q) == 0


async def test_relay_to_another_queue_with_confirms(rabbit_vhost: Vhost, tmp_path: Path) -> None:
    v = rabbit_vhost
    src, dst = v.q("relay-in"), v.q("relay-out")
    await declare(v, src)
    await declare(v, dst)
    n = 300
    await publish(v, src, [f"msg {i}".encode() for i in range(n)], headers={"origin": "test"})
    flows = {
        "relay": {
            "source": {"instance": "mq", "queue": src, "prefetch": 50},
            "target": {"instance": "mq", "routing_key": dst},
        }
    }
    cfg = write_config(tmp_path, {"mq": v.instance_config()}, flows)
    async with running(cfg):
        await wait_for(lambda: v.counts().get(src) == 0 and v.counts().get(dst) == n, 60, interval=0.5)
    got = await drain(v, dst)
    assert sorted(m.body for m in got) == sorted(f"msg {i}".encode() for i in range(n))
    assert all(m.headers["origin"] == "test" and m.headers["x-conveyor-flow"] == "relay" for m in got)
    assert len({m.message_id for m in got}) == n


async def test_directory_target_gets_message_metadata(rabbit_vhost: Vhost, tmp_path: Path) -> None:
    import json

    v = rabbit_vhost
    q = v.q("to-dir")
    await declare(v, q)
    await publish(v, q, [b"hello"], message_id="order-17", headers={"kind": "order"})
    out = tmp_path / "out"
    cfg = write_config(
        tmp_path,
        {"mq": v.instance_config()},
        {"d": {"source": {"instance": "mq", "queue": q}, "target": {"type": "directory", "path": str(out)}}},
    )
    async with running(cfg):
        await wait_for(lambda: bodies(out), 30)
    assert bodies(out) == {"order-17": b"hello"}
    meta = json.loads((out / "order-17.meta.json").read_text())
    assert meta["message"]["headers"] == {"kind": "order"} and meta["message"]["routing_key"] == q
    assert meta["source"] == {"instance": "mq", "type": "rabbitmq"}


async def test_graceful_stop_acks_in_flight_and_returns_the_rest(rabbit_vhost: Vhost, tmp_path: Path) -> None:
    import asyncio

    from aiohttp import web

    v = rabbit_vhost
    q = v.q("graceful")
    await declare(v, q)
    n = 40
    await publish(v, q, [f"{i}".encode() for i in range(n)])
    got: list[bytes] = []

    async def slow(request: web.Request) -> web.Response:
        body = await request.read()
        await asyncio.sleep(0.3)  # deliveries are in flight when the stop comes
        got.append(body)
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/", slow)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    flows = {
        "g": {
            "source": {"instance": "mq", "queue": q, "prefetch": 20},
            "target": {"type": "http", "url": f"http://127.0.0.1:{port}/"},
            "max_in_flight": 4,
        }
    }
    cfg = write_config(tmp_path, {"mq": v.instance_config()}, flows)
    try:
        async with running(cfg):
            await wait_for(lambda: len(got) >= 6, 30)
        # running() has drained and stopped the daemon (exit code 0)
        delivered = len(got)
        assert delivered < n
        # every delivered message was acked, everything else is back on the queue: nothing lost or doubled
        assert v.counts().get(q) == n - delivered
        left = {int(m.body) for m in await drain(v, q)}
        assert left | {int(b) for b in got} == set(range(n)) and not left & {int(b) for b in got}
    finally:
        await runner.cleanup()


async def test_broker_closing_the_connection_is_survived(rabbit_vhost: Vhost, tmp_path: Path) -> None:
    import asyncio

    v = rabbit_vhost
    src, dst = v.q("forced-in"), v.q("forced-out")
    await declare(v, src)
    await declare(v, dst)
    n = 400
    await publish(v, src, [f"{i}".encode() for i in range(n)])
    flows = {
        "r": {
            "source": {"instance": "mq", "queue": src, "prefetch": 20},
            "target": {"instance": "mq", "routing_key": dst},
            "max_in_flight": 4,
        }
    }
    cfg = write_config(tmp_path, {"mq": v.instance_config()}, flows)
    states: list[str] = []

    class Watch:
        def on_event(self, kind: str, **fields: Any) -> None:
            if kind == "instance_state" and fields["instance"] == "mq":
                states.append(fields["state"])

    async with running(cfg) as daemon:
        daemon.status.observers.append(Watch())
        await wait_for(lambda: "r" in daemon.status.flows and daemon.status.flows["r"].delivered >= 50, 30)
        assert await asyncio.to_thread(close_connections, v) >= 1  # what a broker restart does to clients
        await wait_for(lambda: "down" in states, 10)  # /status shows the drop
        await wait_for(lambda: states[-1] == "up", 30)  # and the reconnect, after the supervisor's backoff
        await publish(v, src, [f"{i}".encode() for i in range(n, n + 100)])
        n += 100
        await wait_for(lambda: daemon.status.flows["r"].delivered >= n, 60)
    got = await drain(v, dst)
    assert {int(m.body) for m in got} == set(range(n))  # nothing lost (a few may be doubled)
    assert v.counts().get(src) == 0


def _check(cfg: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "conveyor", "check", "-c", str(cfg), "--connect"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_check_connect_fails_fast_on_bad_login(rabbit_vhost: Vhost, tmp_path: Path) -> None:
    flows: dict[str, Any] = {}
    good = write_config(tmp_path, {"mq": rabbit_vhost.instance_config()}, flows)
    r = _check(good)
    assert r.returncode == 0, r.stderr + r.stdout
    bad = write_config(tmp_path, {"mq": rabbit_vhost.instance_config(password="not-the-password")}, flows)
    r = _check(bad)
    assert r.returncode == 2
    assert "login refused for guest@127.0.0.1:5672/" in r.stdout + r.stderr
    assert "not-the-password" not in r.stdout + r.stderr
    novhost = write_config(tmp_path, {"mq": rabbit_vhost.instance_config(vhost="nope")}, flows)
    r = _check(novhost)
    assert r.returncode == 2 and "vhost 'nope' does not exist" in r.stdout + r.stderr


async def test_a_poll_on_demand_of_a_queue_flow_says_there_is_none(rabbit_vhost: Vhost, tmp_path: Path) -> None:
    import aiohttp

    from tests.servers.ops import api_headers, daemon_in_process, get_json

    v = rabbit_vhost
    q = v.q("no-poll")
    flows = {"mq": {"source": {"instance": "mq", "queue": q}, "target": {"type": "directory", "path": str(tmp_path)}}}
    cfg = write_config(tmp_path, {"mq": v.instance_config()}, flows, health={"listen": "127.0.0.1:0"})
    async with daemon_in_process(cfg) as d, aiohttp.ClientSession() as s:
        code, doc = await get_json(s, f"{d.health.url}/flows/mq/poll", method="POST", headers=api_headers(cfg))
    assert code == 409 and "reads from a broker" in doc["error"], doc
