"""The http target against a real aiohttp server that answers each status class, delays and drops."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import ssl
import time
from email.utils import formatdate
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from aiohttp import web

from conveyor.errors import Rejected, RetryAfter, Transient
from conveyor.payload import Body, Payload
from conveyor.targets.http.config import HttpTargetConfig
from conveyor.targets.http.target import HttpRejected, HttpTarget, meta_header, retry_after
from tests.servers.ops import (
    DaemonProcess,
    api_headers,
    daemon_in_process,
    delayed,
    drop,
    free_port,
    get_json,
    http_sink,
    local_flow,
    serve,
    status,
    wait_for,
    write_config,
)
from tests.servers.rabbitmq import rabbit_vhost_fixture  # noqa: F401  (the rabbit_vhost fixture)


def cfg(url: str, **kw: object) -> HttpTargetConfig:
    return HttpTargetConfig.model_validate({"type": "http", "url": url, **kw})


def payload(data: bytes = b"id,qty\n1,2\n", name: str | None = "ORD_1.csv", body: Body | None = None) -> Payload:
    return Payload(
        id="3f5c" * 8,
        flow="orders",
        source_instance="partner",
        source_type="sftp",
        body=body or Body.from_bytes(data),
        name=name,
        file={"path": f"out/{name}", "mtime": "x"},
    )


@pytest.mark.parametrize("code", [200, 201, 204])
async def test_2xx_is_delivered_with_headers(code: int) -> None:
    async with http_sink(default=status(code)) as sink:
        t = HttpTarget("orders", cfg(sink.url, headers={"Authorization": "Bearer abc"}))
        try:
            p = payload()
            await t.deliver(p)
        finally:
            await t.close()
    r = sink.received[0]
    assert r.body == b"id,qty\n1,2\n"
    assert r.headers["Idempotency-Key"] == p.id
    assert r.headers["X-Conveyor-Flow"] == "orders"
    assert r.headers["Content-Type"] == "text/csv"
    assert r.headers["Authorization"] == "Bearer abc"
    meta = meta_header(r.headers["X-Conveyor-Meta"])
    assert meta["id"] == p.id and meta["flow"] == "orders" and meta["name"] == "ORD_1.csv"
    assert meta["sha256"] == hashlib.sha256(b"id,qty\n1,2\n").hexdigest() and meta["size"] == 11
    assert meta["source"] == {"instance": "partner", "type": "sftp"}


async def test_content_type_config_then_name_then_payload() -> None:
    async with http_sink() as sink:
        t1 = HttpTarget("f", cfg(sink.url, content_type="application/x-edi"))
        t2 = HttpTarget("f", cfg(sink.url))
        try:
            await t1.deliver(payload())
            await t2.deliver(payload(name="noext"))
            await t2.deliver(payload(name="a.json"))
        finally:
            await t1.close()
            await t2.close()
    assert [r.headers["Content-Type"] for r in sink.received] == [
        "application/x-edi",
        "application/octet-stream",
        "application/json",
    ]


@pytest.mark.parametrize("code", [400, 404, 409, 413, 301])
async def test_other_statuses_are_rejected_with_excerpt(code: int) -> None:
    async with http_sink(default=status(code, "bad  row 7:\n  qty missing " + "x" * 500)) as sink:
        t = HttpTarget("f", cfg(sink.url + "?token=querysecret"))
        try:
            with pytest.raises(Rejected) as ei:
                await t.deliver(payload())
        finally:
            await t.close()
    assert isinstance(ei.value, HttpRejected) and ei.value.status == code
    text = str(ei.value)
    assert f"HTTP {code}" in text and "bad row 7: qty missing" in text
    assert len(text) < 400 and "querysecret" not in text


@pytest.mark.parametrize("code", [408, 500, 502, 503])
async def test_retryable_statuses_are_transient(code: int) -> None:
    async with http_sink(default=status(code)) as sink:
        t = HttpTarget("f", cfg(sink.url))
        try:
            with pytest.raises(Transient) as ei:
                await t.deliver(payload())
        finally:
            await t.close()
    assert not isinstance(ei.value, RetryAfter) and f"HTTP {code}" in str(ei.value)


async def test_429_retry_after_seconds_and_date() -> None:
    future = formatdate(time.time() + 120, usegmt=True)
    async with http_sink(
        plan=[status(429, headers={"Retry-After": "7"}), status(503, headers={"Retry-After": future})]
    ) as sink:
        t = HttpTarget("f", cfg(sink.url))
        try:
            with pytest.raises(RetryAfter) as e1:
                await t.deliver(payload())
            with pytest.raises(RetryAfter) as e2:
                await t.deliver(payload())
        finally:
            await t.close()
    assert e1.value.delay == 7
    assert 100 < e2.value.delay <= 121
    assert retry_after("garbage") is None and retry_after("999999") == 3600


async def test_slow_server_times_out_and_dropped_connection_is_transient() -> None:
    async with http_sink(plan=[delayed(1.5), drop(), drop()]) as sink:
        t = HttpTarget("f", cfg(sink.url, timeout="500ms"))
        try:
            started = time.monotonic()
            with pytest.raises(Transient, match="timeout"):
                await t.deliver(payload())
            assert time.monotonic() - started < 1.4
            with pytest.raises(Transient, match="closed the connection"):
                await t.deliver(payload())  # dropped twice: the immediate second try, then give up
        finally:
            await t.close()
    assert len(sink.received) == 3


async def test_one_dropped_connection_is_tried_again_at_once() -> None:
    async with http_sink(plan=[status(200), drop()]) as sink:
        t = HttpTarget("f", cfg(sink.url))
        try:
            await t.deliver(payload())
            await t.deliver(payload())  # dropped, then delivered on a new connection
        finally:
            await t.close()
    assert len(sink.received) == 3


async def test_keep_alive_races_with_the_server_idle_timeout() -> None:
    """A server that closes idle connections after 0.3 s, and a client sending just then:
    the stale pooled connection must not turn into a failed attempt."""

    async def ok(r: web.Request) -> web.Response:
        await r.read()
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", ok)
    runner = web.AppRunner(app, access_log=None, keepalive_timeout=0.3)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    t = HttpTarget("f", cfg(f"http://127.0.0.1:{runner.addresses[0][1]}/hook"))
    try:
        for i in range(12):
            await t.deliver(payload())
            await asyncio.sleep(0.28 + (i % 5) * 0.01)
    finally:
        await t.close()
        await runner.cleanup()


async def test_connection_refused_is_transient() -> None:
    t = HttpTarget("f", cfg(f"http://user:urlpass@127.0.0.1:{free_port()}/hook"))
    try:
        with pytest.raises(Transient, match="cannot connect") as ei:
            await t.deliver(payload())
    finally:
        await t.close()
    assert "urlpass" not in str(ei.value)


async def test_streams_a_file_body_with_content_length(tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    async with http_sink(keep_bodies_up_to=0) as sink:
        t = HttpTarget("f", cfg(sink.url))
        try:
            await t.deliver(payload(body=Body.from_file(big, owned=False), name="big.bin"))
        finally:
            await t.close()
    r = sink.received[0]
    assert r.size == big.stat().st_size and r.sha256 == hashlib.sha256(big.read_bytes()).hexdigest()
    assert r.headers["Content-Length"] == str(big.stat().st_size) and "Transfer-Encoding" not in r.headers


async def test_tls_verified_by_default_ca_file_and_off(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    hits: list[int] = []

    async def ok(_r: web.Request) -> web.Response:
        hits.append(1)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", ok)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx)
    await site.start()
    url = f"https://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/hook"  # type: ignore[union-attr]
    targets = [
        HttpTarget("f", cfg(url)),
        HttpTarget("f", cfg(url, ca_file=str(ca_file))),
        HttpTarget("f", cfg(url, tls_verify=False)),
    ]
    try:
        with pytest.raises(Transient, match="certificate"):
            await targets[0].deliver(payload())
        await targets[1].deliver(payload())
        await targets[2].deliver(payload())
    finally:
        for t in targets:
            await t.close()
        await runner.cleanup()
    assert len(hits) == 2


async def test_config_rejects_non_http_url() -> None:
    with pytest.raises(ValueError, match="http:// or https://"):
        cfg("ftp://x/y")


# -- through the daemon --------------------------------------------------------------------
async def test_retries_honour_retry_after_then_delivers(tmp_path: Path) -> None:
    async with http_sink(plan=[status(503, headers={"Retry-After": "1"}), status(500)]) as sink:
        # One poll takes the file; a long poll_interval keeps the request count exact.
        inst, flow = local_flow(tmp_path, {"type": "http", "url": sink.url}, poll_interval="10s")
        flow["retry"] = {"attempts": 5, "backoff": "50ms", "max_backoff": "100ms"}
        config = write_config(
            tmp_path / "c.yaml", {"health": {"listen": "127.0.0.1:0"}, "instances": {"box": inst}, "flows": {"f": flow}}
        )
        (tmp_path / "in" / "a.txt").write_text("hello")
        async with daemon_in_process(config) as d:
            await wait_for(lambda: d.status.flows["f"].delivered == 1, 15)
            items = await d.store.list("f", None)
    gaps = len(sink.received)
    assert gaps == 3 and items[0].state == "delivered" and items[0].attempts == 1
    assert not (tmp_path / "in" / "a.txt").exists()
    assert {r.headers["Idempotency-Key"] for r in sink.received} == {items[0].id}


@pytest.mark.parametrize("on_failure", [None, "failed"])
async def test_permanent_failure_is_failed_in_ledger(tmp_path: Path, on_failure: str | None) -> None:
    async with http_sink(default=status(400, "schema violation")) as sink:
        extra = {"on_failure": {"move": on_failure}} if on_failure else {}
        inst, flow = local_flow(tmp_path, {"type": "http", "url": sink.url}, **extra)
        config = write_config(
            tmp_path / "c.yaml", {"health": {"listen": "127.0.0.1:0"}, "instances": {"box": inst}, "flows": {"f": flow}}
        )
        (tmp_path / "in" / "bad.csv").write_text("nope")
        async with daemon_in_process(config) as d, aiohttp.ClientSession() as s:
            await wait_for(lambda: d.status.flows["f"].failed == 1, 15)
            await asyncio.sleep(1.0)  # several more polls: the failed file is not taken again
            code, doc = await get_json(s, d.health.url + "/flows/f/items?state=failed", headers=api_headers(config))
    assert code == 200 and len(doc["items"]) == 1
    item = doc["items"][0]
    assert item["state"] == "failed" and item["attempts"] == 1 and "HTTP 400" in item["last_error"]
    assert "schema violation" in item["last_error"]
    assert len(sink.received) == 1
    if on_failure:
        assert (tmp_path / "failed" / "bad.csv").read_text() == "nope"
        assert not (tmp_path / "in" / "bad.csv").exists()
    else:
        assert (tmp_path / "in" / "bad.csv").read_text() == "nope"


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_large_file_streams_with_flat_rss(tmp_path: Path) -> None:
    size = 160 * 1024 * 1024
    async with http_sink(keep_bodies_up_to=0) as sink:
        port = free_port()
        inst, flow = local_flow(tmp_path, {"type": "http", "url": sink.url}, poll_interval="3s")
        config = write_config(
            tmp_path / "c.yaml",
            {
                "health": {"listen": f"127.0.0.1:{port}"},
                "spool_threshold": "1MiB",
                "log": {"level": "info"},
                "instances": {"box": inst},
                "flows": {"f": flow},
            },
        )
        d = DaemonProcess(config, port).start()
        try:
            await d.wait_listening()
            await asyncio.sleep(0.5)  # idle a moment: the baseline is the settled start-up RSS
            before = d.rss_kib()
            data = tmp_path / "big.tmpw"
            await asyncio.to_thread(_write_big, data, size)
            data.rename(tmp_path / "in" / "big.bin")
            await wait_for(lambda: sink.received, 60)
            peak = d.rss_kib("VmHWM")
        finally:
            assert d.stop() == 0
    print(f"RSS before {before // 1024} MiB, peak {peak // 1024} MiB for a {size >> 20} MiB body")
    assert sink.received[0].size == size
    assert (peak - before) < 48 * 1024, f"RSS grew {(peak - before) // 1024} MiB for a {size >> 20} MiB body"


def _write_big(path: Path, size: int) -> None:
    chunk = os.urandom(1 << 20)
    with open(path, "wb") as f:
        for _ in range(size >> 20):
            f.write(chunk)


async def test_rabbitmq_message_refused_by_http_is_rejected_and_failed(rabbit_vhost: Any, tmp_path: Path) -> None:
    """A 4xx from the http target rejects the message at once (dead-lettered, not requeued)
    and the ledger says `failed` with the status."""
    from tests.servers.rabbitmq import declare, drain, publish

    v = rabbit_vhost
    q, dlq = v.q("http-refused"), v.q("http-refused.dlq")
    await declare(v, dlq)
    async with http_sink(default=status(422, "unprocessable order")) as sink:
        source = {
            "instance": "mq",
            "queue": q,
            "max_attempts": 5,
            "declare": {"arguments": {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dlq}},
        }
        config = write_config(
            tmp_path / "c.yaml",
            {
                "health": {"listen": "127.0.0.1:0"},
                "instances": {"mq": v.instance_config()},
                "flows": {"m": {"source": source, "target": {"type": "http", "url": sink.url}}},
            },
        )
        async with daemon_in_process(config) as d, aiohttp.ClientSession() as s:
            await wait_for(lambda: q in v.counts(), 20)
            await publish(v, q, [b'{"order": 1}'], message_id="order-1")
            dead = await wait_for(lambda: drain(v, dlq, wait=0.2), 30)
            code, doc = await get_json(s, d.health.url + "/flows/m/items?state=failed", headers=api_headers(config))
    assert [m.message_id for m in dead] == ["order-1"]
    assert len(sink.received) == 1  # no retries of a refusal
    assert meta_header(sink.received[0].headers["X-Conveyor-Meta"])["message"]["id"] == "order-1"
    assert code == 200 and len(doc["items"]) == 1
    assert "HTTP 422" in doc["items"][0]["last_error"] and "unprocessable order" in doc["items"][0]["last_error"]


async def _reading_server(rate: int, stop_after: int | None) -> tuple[asyncio.Server, str, list[int]]:
    """A raw HTTP server that reads request bodies at ``rate`` bytes per 20 ms (stopping for good
    after ``stop_after`` bytes, if given), then answers 201; the sizes it read completely."""
    done: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
            )
            got = 0
            while got < length:
                if stop_after is not None and got >= stop_after:
                    await asyncio.sleep(30)
                got += len(await reader.read(min(rate, length - got)))
                await asyncio.sleep(0.02)
            done.append(got)
            writer.write(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client gave up
        finally:
            writer.close()

    # A small, fixed receive buffer (autotuning could hold tens of MiB on loopback): the
    # client's chunks are taken at the reading pace.
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)
    sock.bind(("127.0.0.1", 0))
    server = await asyncio.start_server(handle, sock=sock)
    return server, f"http://127.0.0.1:{sock.getsockname()[1]}/in", done


async def test_timeout_is_inactivity_not_a_cap_on_a_slow_upload(tmp_path: Path) -> None:
    """A 16 MiB file taken slowly but steadily (about 2 s) goes through a 1 s timeout; the
    same upload to a server that stops reading fails within the limit and a tick. (After the
    last chunk the socket buffers, several MiB here, must drain within the limit: that wait
    for the answer counts as inactivity.)"""
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(16 * 1024 * 1024))
    server, url, done = await _reading_server(256 * 1024, None)
    t = HttpTarget("f", cfg(url, timeout="1s"))
    try:
        started = time.monotonic()
        await t.deliver(payload(body=Body.from_file(big, owned=False), name="big.bin"))
        assert time.monotonic() - started > 1.3 and done == [big.stat().st_size]
    finally:
        await t.close()
        server.close()
    server, url, done = await _reading_server(256 * 1024, 1024 * 1024)
    t = HttpTarget("f", cfg(url, timeout="1s"))
    try:
        started = time.monotonic()
        with pytest.raises(Transient, match=r"no progress for 1s \(timeout\)"):
            await t.deliver(payload(body=Body.from_file(big, owned=False), name="big.bin"))
        assert time.monotonic() - started < 3.0 and done == []
    finally:
        await t.close()
        server.close()


async def test_an_endless_2xx_answer_is_not_read_to_its_end() -> None:
    sent = 0

    async def endless(request: web.Request) -> web.StreamResponse:
        nonlocal sent
        await request.read()
        resp = web.StreamResponse(status=200)
        await resp.prepare(request)
        chunk = b"z" * 65536
        with contextlib.suppress(ConnectionError, RuntimeError):
            for _ in range(4096):  # up to 256 MiB, unless the client goes away first
                await resp.write(chunk)
                sent += len(chunk)
        return resp

    app = web.Application()
    app.router.add_post("/hook", endless)
    async with serve(app) as port:
        target = HttpTarget("f", cfg(f"http://127.0.0.1:{port}/hook", timeout="5s"))
        try:
            started = time.monotonic()
            await asyncio.wait_for(target.deliver(payload()), 20)
            assert time.monotonic() - started < 5
        finally:
            await target.close()
        await asyncio.sleep(0.5)
    assert sent < 64 * 1024 * 1024, f"the server got {sent} bytes out: the answer was read on"
