"""The ledger over HTTP and through `conveyor ledger` / `conveyor status` against a running daemon."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import aiohttp

from tests.servers.ops import (
    CONVEYOR,
    DaemonProcess,
    api_headers,
    daemon_in_process,
    free_port,
    get_json,
    http_sink,
    local_flow,
    status,
    wait_for,
    write_config,
)


def _config(tmp_path: Path, url: str, listen: str, **extra: Any) -> Path:
    inst, flow = local_flow(tmp_path, {"type": "http", "url": url}, poll_interval="300ms", after="keep")
    return write_config(
        tmp_path / "c.yaml", {"health": {"listen": listen, **extra}, "instances": {"box": inst}, "flows": {"f": flow}}
    )


async def test_list_retry_forget_over_http(tmp_path: Path) -> None:
    async with http_sink(plan=[status(422, "no")]) as sink:
        config = _config(tmp_path, sink.url, "127.0.0.1:0")
        (tmp_path / "in" / "a.csv").write_text("a")
        async with daemon_in_process(config) as d, aiohttp.ClientSession(headers=api_headers(config)) as s:
            base = d.health.url + "/flows/f/items"
            await wait_for(lambda: d.status.flows["f"].failed == 1)
            code, doc = await get_json(s, base + "?state=failed")
            assert code == 200 and [i["name"] for i in doc["items"]] == ["a.csv"]
            item = doc["items"][0]
            pid = item["id"]
            assert item["attempts"] == 1 and "HTTP 422" in item["last_error"] and item["updated_at"]
            code, doc = await get_json(s, base + "?state=delivered")
            assert doc["items"] == []
            # Not yet retried: polls go by and the failed file stays set aside.
            await asyncio.sleep(0.8)  # a few polls of 300 ms
            assert len(sink.received) == 1

            code, doc = await get_json(s, f"{base}/{pid}/retry", method="POST")
            assert code == 200 and doc["item"]["state"] == "pending" and doc["item"]["attempts"] == 0
            await wait_for(lambda: d.status.flows["f"].delivered == 1)
            code, doc = await get_json(s, base)
            assert [(i["id"], i["state"]) for i in doc["items"]] == [(pid, "delivered")]
            code, doc = await get_json(s, f"{base}/{pid}/retry", method="POST")
            assert code == 409 and "delivered" in doc["error"]

            # after: keep remembers the file; forgetting it makes the source take it again.
            code, doc = await get_json(s, f"{base}/{pid}/forget", method="POST")
            assert code == 200 and doc["item"] is None
            await wait_for(lambda: d.status.flows["f"].delivered == 2)
            assert [r.headers["Idempotency-Key"] for r in sink.received] == [pid] * 3

            for action in ("retry", "forget"):
                code, doc = await get_json(s, f"{base}/{'0' * 32}/{action}", method="POST")
                assert code == 404 and "no item" in doc["error"]
                code, doc = await get_json(s, f"{d.health.url}/flows/nope/items/{pid}/{action}", method="POST")
                assert code == 404 and "nope" in doc["error"]
            code, doc = await get_json(s, base + "?limit=1&offset=1")
            assert code == 200 and doc["items"] == []


async def test_every_peer_needs_the_token(tmp_path: Path) -> None:
    """Loopback is not trusted: a page in a local browser and a local user come from 127.0.0.1
    too. A client bound to 127.0.0.2 stands for a remote host; both need the token."""
    token = "tok-" + os.urandom(8).hex()
    async with http_sink(default=status(400)) as sink:
        config = _config(tmp_path, sink.url, "127.0.0.1:0", token=token)
        (tmp_path / "in" / "a.csv").write_text("a")
        async with daemon_in_process(config) as d:
            await wait_for(lambda: d.status.flows["f"].failed == 1)
            pid = (await d.store.list("f", "failed"))[0].id
            url = f"{d.health.url}/flows/f/items/{pid}/retry"
            for local_addr in ("127.0.0.1", "127.0.0.2"):
                conn = aiohttp.TCPConnector(local_addr=(local_addr, 0))
                async with aiohttp.ClientSession(connector=conn) as s:
                    code, doc = await get_json(s, d.health.url + "/flows/f/items")
                    assert code == 401 and "Authorization: Bearer" in doc["error"]
                    for headers in (
                        {},
                        {"Authorization": "Bearer wrong"},
                        {"Authorization": token},
                        {"Authorization": "Bearer "},
                    ):
                        code, doc = await get_json(s, url, method="POST", headers=headers)
                        assert code == 401, (local_addr, headers)
                    assert (await d.store.list("f", "failed"))[0].id == pid
            conn = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
            async with aiohttp.ClientSession(connector=conn) as s:
                code, doc = await get_json(s, url, method="POST", headers={"Authorization": f"Bearer {token}"})
                assert code == 200 and doc["item"]["state"] in ("pending", "in_flight", "failed")


async def _cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    p = await asyncio.create_subprocess_exec(
        *CONVEYOR,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    out, err = await asyncio.wait_for(p.communicate(), 30)
    assert p.returncode is not None
    return p.returncode, out.decode(), err.decode()


async def test_cli_against_a_daemon_subprocess(tmp_path: Path) -> None:
    async with http_sink(plan=[status(400, "bad row")]) as sink:
        port = free_port()
        config = _config(tmp_path, sink.url, f"127.0.0.1:{port}")
        (tmp_path / "in" / "a.csv").write_text("a")
        d = DaemonProcess(config, port).start()
        try:
            await d.wait_listening()
            await wait_for(lambda: sink.received, 15)

            async def failed() -> bool:
                code, doc = await get_json(s, f"{d.url}/flows/f/items?state=failed")
                return bool(code == 200 and doc["items"])

            async with aiohttp.ClientSession(headers=api_headers(config)) as s:
                await wait_for(failed, 15)

            code, out, err = await _cli("status", "-c", str(config))
            assert code == 0, err
            lines = out.splitlines()
            assert any(line.split()[:3] == ["box", "local", "up"] for line in lines), out
            flow_line = next(line for line in lines if line.startswith("f "))
            assert flow_line.split()[1:4] == ["running", "0", "1"], out

            code, out, err = await _cli("ledger", "-c", str(config), "f", "--state", "failed")
            assert code == 0, err
            row = next(line for line in out.splitlines() if "a.csv" in line)
            pid, state, attempts = row.split()[:3]
            assert state == "failed" and attempts == "1" and "HTTP 400" in row and "bad row" in row

            code, out, err = await _cli("ledger", "-c", str(config), "--url", d.url, "f", "--retry", pid)
            assert code == 0 and "delivered again" in out, err
            await wait_for(lambda: len(sink.received) == 2, 10)
            assert await _eventually_delivered(d.url, pid, api_headers(config))

            code, out, err = await _cli("ledger", "-c", str(config), "--url", d.url, "f", "--forget", pid)
            assert code == 0 and "forgotten" in out, err
            await wait_for(lambda: len(sink.received) == 3, 10)

            code, out, err = await _cli("ledger", "-c", str(config), "nope")
            assert code == 1 and "no flow named" in err
            code, out, err = await _cli("ledger", "-c", str(config), "f", "--retry", "0" * 32)
            assert code == 1 and "HTTP 404" in err
        finally:
            assert d.stop() == 0
    code, out, err = await _cli("status", "--url", f"127.0.0.1:{port}")
    assert code == 1 and "cannot reach the daemon" in err


async def _eventually_delivered(url: str, pid: str, headers: dict[str, str]) -> bool:
    async with aiohttp.ClientSession(headers=headers) as s:

        async def check() -> bool:
            _, doc = await get_json(s, f"{url}/flows/f/items?state=delivered")
            return any(i["id"] == pid for i in doc["items"])

        return bool(await wait_for(check, 10))


def test_cli_url_from_config_and_rendering(tmp_path: Path) -> None:
    import argparse

    from conveyor.remote import base_url, render_status

    def url_for(listen: str | None, **kw: Any) -> str:
        cfg = tmp_path / "c.yaml"
        cfg.write_text("health:\n  listen: " + (listen or "null") + "\n" if listen is not None else "instances: {}\n")
        return base_url(argparse.Namespace(config=cfg, url=kw.get("url")))

    assert url_for("127.0.0.1:9001") == "http://127.0.0.1:9001"
    assert url_for("0.0.0.0:9002") == "http://127.0.0.1:9002"
    assert url_for('"[::]:9003"') == "http://[::1]:9003"
    assert url_for(None) == "http://127.0.0.1:8470"  # health.listen's default
    assert url_for("127.0.0.1:9001", url="10.1.2.3:8470") == "http://10.1.2.3:8470"
    os.environ["CONVEYOR_TEST_PORT"] = "9004"
    try:
        assert url_for('"127.0.0.1:${CONVEYOR_TEST_PORT}"') == "http://127.0.0.1:9004"
    finally:
        del os.environ["CONVEYOR_TEST_PORT"]
    text = render_status(
        {
            "version": "0.1.0",
            "replica": "r1",
            "config": "/etc/c.yaml",
            "started": "t",
            "ready": False,
            "healthy": True,
            "instances": {
                "partner": {
                    "type": "sftp",
                    "state": "down",
                    "since": "t",
                    "address": "a@h:22",
                    "last_error": "auth failed",
                }
            },
            "flows": {
                "f": {
                    "state": "backoff",
                    "delivered": 3,
                    "failed": 1,
                    "in_flight": 0,
                    "bytes": 9,
                    "last_delivery": None,
                    "last_error": "x",
                }
            },
            "not_ready": {
                "flows": {"f": "stalled: last completed poll 99s ago"},
                "instances": {"partner": "down: auth failed"},
            },
        }
    )
    assert "ready: NO" in text and "flow f: stalled: last completed poll 99s ago" in text
    assert "instance partner: down: auth failed" in text
    assert any(line.split()[:3] == ["partner", "sftp", "down"] for line in text.splitlines())


async def test_kept_files_skip_the_ledger_until_forgotten(tmp_path: Path, monkeypatch: Any) -> None:
    """With after: keep every poll lists the delivered files again. The source remembers them
    as done and asks the ledger about them only every _RECHECK seconds, not every poll; a
    forget through the ledger API still makes the next poll take the file again."""
    from conveyor.flows import filesource

    monkeypatch.setattr(filesource, "_RECHECK", 2.0)
    async with http_sink() as sink:
        config = _config(tmp_path, sink.url, "127.0.0.1:0")
        (tmp_path / "in" / "a.csv").write_text("a")
        async with daemon_in_process(config) as d, aiohttp.ClientSession(headers=api_headers(config)) as s:
            await wait_for(lambda: d.status.flows["f"].delivered == 1)
            pid = sink.received[0].headers["Idempotency-Key"]
            asked: list[float] = []
            real = d.store.get_many

            async def counting(flow: str, ids: list[str]) -> Any:
                if pid in ids:
                    asked.append(asyncio.get_running_loop().time())
                return await real(flow, ids)

            monkeypatch.setattr(d.store, "get_many", counting)
            await asyncio.sleep(4.5)  # 15 polls of 300 ms
            assert 1 <= len(asked) <= 3, f"the ledger was asked {len(asked)} times in 15 polls"
            assert len(sink.received) == 1

            code, _ = await get_json(s, f"{d.health.url}/flows/f/items/{pid}/forget", method="POST")
            assert code == 200
            await wait_for(lambda: d.status.flows["f"].delivered == 2, 5)
            assert [r.headers["Idempotency-Key"] for r in sink.received] == [pid, pid]
