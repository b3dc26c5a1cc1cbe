"""The health server's API against hostile browsers and peers, over real HTTP: the bearer token
(made at first start in the state folder, read there by the CLI), the Host check against DNS
rebinding, cross-site refusals, and the probes that stay open."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.servers.ops import (
    CONVEYOR,
    DaemonProcess,
    daemon_in_process,
    free_port,
    get_json,
    http_sink,
    local_flow,
    status,
    wait_for,
    write_config,
)

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
TOKEN_FILE = "health-token"


def _config(tmp_path: Path, url: str, listen: str = "127.0.0.1:0", **health: Any) -> Path:
    inst, flow = local_flow(tmp_path, {"type": "http", "url": url}, poll_interval="300ms", after="keep")
    (tmp_path / "in" / "a.csv").write_text("a")
    return write_config(
        tmp_path / "c.yaml", {"health": {"listen": listen, **health}, "instances": {"box": inst}, "flows": {"f": flow}}
    )


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def file_token(tmp_path: Path) -> str:
    """The token the daemon made beside its state database (write_config puts it in tmp_path)."""
    return (tmp_path / TOKEN_FILE).read_text().strip()


async def _failed_item(d: Any) -> str:
    await wait_for(lambda: d.status.flows["f"].failed == 1, 15)
    return str((await d.store.list("f", "failed"))[0].id)


async def _state(d: Any, pid: str) -> str | None:
    item = (await d.store.get_many("f", [pid])).get(pid)
    return None if item is None else str(item.state)


async def test_a_cross_site_form_post_is_refused(tmp_path: Path) -> None:
    """What a page on another site can make a browser send to 127.0.0.1: a form POST, no token."""
    async with (
        http_sink(default=status(400)) as sink,
        daemon_in_process(_config(tmp_path, sink.url)) as d,
        aiohttp.ClientSession() as s,
    ):
        pid = await _failed_item(d)
        url = f"{d.health.url}/flows/f/items/{pid}/forget"
        for headers in (
            {**FORM, "Origin": "https://evil.example"},
            {**FORM, "Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"},
            {"Content-Type": "text/plain", "Origin": "null"},
        ):
            async with s.post(url, data="id=1", headers=headers) as r:
                assert r.status == 403, (headers, await r.text())
                assert "cross-" in (await r.json())["error"]
        # Cross-site stays refused with the right token: a page must not ride on it.
        token = bearer(file_token(tmp_path))
        code, doc = await get_json(s, url, method="POST", headers={**token, "Sec-Fetch-Site": "cross-site"})
        assert code == 403 and "Sec-Fetch-Site" in doc["error"]
        code, doc = await get_json(s, url, method="POST", headers={**token, "Origin": "http://localhost:1"})
        assert code == 403 and "Origin" in doc["error"]  # another port is another origin
        # A form body is refused even with the token and no Origin.
        async with s.post(url, data="id=1", headers={**token, **FORM}) as r:
            assert r.status == 415 and "Content-Type" in (await r.json())["error"]
        assert await _state(d, pid) == "failed"
        # The same origin, with the token: allowed (a JSON body or none).
        origin = d.health.url
        code, doc = await get_json(
            s,
            f"{d.health.url}/flows/f/items/{pid}/retry",
            method="POST",
            json={},
            headers={**token, "Origin": origin, "Sec-Fetch-Site": "same-origin"},
        )
        assert code == 200 and doc["action"] == "retry", doc


async def test_a_foreign_host_name_is_not_answered(tmp_path: Path) -> None:
    """DNS rebinding: attacker.example resolves to 127.0.0.1, so the browser sends its name."""
    async with (
        http_sink(default=status(400)) as sink,
        daemon_in_process(_config(tmp_path, sink.url)) as d,
        aiohttp.ClientSession() as s,
    ):
        pid = await _failed_item(d)
        port = d.health.port
        rebound = {"Host": f"attacker.example:{port}"}
        for method, path in (("GET", "/flows/f/items"), ("GET", "/status"), ("POST", f"/flows/f/items/{pid}/forget")):
            code, doc = await get_json(s, d.health.url + path, method=method, headers=rebound)
            assert code == 421, (path, doc)
            assert "attacker.example" in doc["error"] and "health.allowed_hosts" in doc["error"]
        # Not with the token either: the name is wrong, whoever asks.
        token = bearer(file_token(tmp_path))
        code, _ = await get_json(
            s, f"{d.health.url}/flows/f/items/{pid}/forget", method="POST", headers={**rebound, **token}
        )
        assert code == 421
        assert await _state(d, pid) == "failed"
        # The names of this server, with any port (SSH tunnels), are answered.
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "LOCALHOST.", "[::1]:9999", "127.0.0.1"):
            code, _ = await get_json(s, d.health.url + "/flows/f/items", headers={"Host": host, **token})
            assert code == 200, host
        # Probes stay open to any Host and without a token (kubelet, systemd, Prometheus).
        for probe in ("/healthz", "/readyz", "/metrics"):
            async with s.get(d.health.url + probe, headers=rebound) as r:
                assert r.status in (200, 503), probe


async def test_allowed_hosts_and_a_wildcard_listener(tmp_path: Path) -> None:
    async with http_sink() as sink:
        config = _config(tmp_path, sink.url, "0.0.0.0:0", allowed_hosts=["conveyor.internal"])
        async with daemon_in_process(config) as d, aiohttp.ClientSession() as s:
            url = f"http://127.0.0.1:{d.health.port}/status"
            for host, want in (
                ("conveyor.internal:8470", 200),
                ("10.1.2.3:8470", 200),
                ("[fe80::1]", 200),
                ("conveyor.internal.evil.example", 421),
                ("evil.example", 421),
                ("a b", 421),
                ("[::1", 421),
            ):
                async with s.get(url, headers={"Host": host}) as r:
                    assert r.status == want, host


async def test_the_token_is_needed_and_made_at_first_start(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    async with (
        http_sink(default=status(400)) as sink,
        daemon_in_process(_config(tmp_path, sink.url)) as d,
        aiohttp.ClientSession() as s,
    ):
        pid = await _failed_item(d)
        base = d.health.url + "/flows/f/items"
        async with s.post(f"{base}/{pid}/forget") as r:  # from 127.0.0.1, no token
            assert r.status == 401, await r.text()
        path = tmp_path / TOKEN_FILE
        assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_ISREG(path.lstat().st_mode)
        token = file_token(tmp_path)
        assert len(token) >= 32
        for headers in (
            {},
            {"Authorization": "Bearer "},
            {"Authorization": token},
            {"Authorization": f"Basic {token}"},
            bearer("wrong"),
            bearer(token + "x"),
        ):
            for method, url in (("POST", f"{base}/{pid}/retry"), ("POST", f"{base}/{pid}/forget"), ("GET", base)):
                async with s.request(method, url, headers=headers) as r:
                    assert r.status == 401, (headers, method, url)
                    assert r.headers["WWW-Authenticate"].startswith("Bearer")
                    doc = await r.json()
                assert "Authorization: Bearer" in doc["error"] or "wrong bearer token" in doc["error"]
                assert token not in doc["error"]
        assert await _state(d, pid) == "failed"
        code, doc = await get_json(s, base + "?state=failed", headers=bearer(token))
        assert code == 200 and [i["id"] for i in doc["items"]] == [pid]
        code, doc = await get_json(s, f"{base}/{pid}/retry", method="POST", headers=bearer(token))
        assert code == 200 and doc["item"]["state"] in ("pending", "in_flight", "failed")
        code, _ = await get_json(s, d.health.url + "/status")
        assert code == 200  # counters and states, no item ids: open
    # A restart keeps the token it made.
    async with http_sink() as sink, daemon_in_process(_config(tmp_path, sink.url)):
        assert file_token(tmp_path) == token
    assert f"made an API token for the ledger in {tmp_path / TOKEN_FILE}" in caplog.text
    assert token not in caplog.text


async def test_public_listings_and_a_configured_token(tmp_path: Path) -> None:
    (tmp_path / "tok").write_text("configured-token-0123456789\n")
    async with http_sink(default=status(400)) as sink:
        config = _config(tmp_path, sink.url, token=f"${{file:{tmp_path / 'tok'}}}", public_listings=True)
        async with daemon_in_process(config) as d, aiohttp.ClientSession() as s:
            pid = await _failed_item(d)
            assert not (tmp_path / TOKEN_FILE).exists()  # the config names one: no file is made
            code, doc = await get_json(s, d.health.url + "/flows/f/items")
            assert code == 200 and [i["id"] for i in doc["items"]] == [pid]
            url = f"{d.health.url}/flows/f/items/{pid}/forget"
            code, _ = await get_json(s, url, method="POST")
            assert code == 401
            code, _ = await get_json(s, url, method="POST", headers=bearer("configured-token-0123456789"))
            assert code == 200


@pytest.mark.parametrize("plant", ["symlink", "world-readable", "empty", "fifo"])
def test_an_unsafe_token_file_stops_the_start(tmp_path: Path, plant: str) -> None:
    secret = tmp_path / "secret"
    secret.write_text("not-for-the-api\n")
    path = tmp_path / TOKEN_FILE
    if plant == "symlink":
        path.symlink_to(secret)
    elif plant == "world-readable":
        path.write_text("t" * 40)
        path.chmod(0o644)
    elif plant == "empty":
        path.touch(mode=0o600)
    else:
        os.mkfifo(path, 0o600)
    config = _config(tmp_path, "http://127.0.0.1:9/", f"127.0.0.1:{free_port()}")
    p = subprocess.run([*CONVEYOR, "run", "-c", str(config)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 1, p.stderr
    assert f"token file {path}" in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert "not-for-the-api" not in p.stderr


async def _cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> tuple[int, str, str]:
    environ = {k: v for k, v in os.environ.items() if k != "CONVEYOR_TOKEN"}
    p = await asyncio.create_subprocess_exec(
        *CONVEYOR,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**environ, **(env or {})},
        cwd=cwd,
    )
    out, err = await asyncio.wait_for(p.communicate(), 30)
    assert p.returncode is not None
    return p.returncode, out.decode(), err.decode()


async def test_the_cli_reads_the_token_beside_the_state(tmp_path: Path) -> None:
    """`conveyor run` makes the token; `conveyor ledger -c` finds it without being told, also
    from another folder when the config's state path is relative to the daemon's."""
    async with http_sink(plan=[status(400, "bad row")]) as sink:
        port = free_port()
        inst, flow = local_flow(tmp_path, {"type": "http", "url": sink.url}, poll_interval="300ms", after="keep")
        config = write_config(
            tmp_path / "c.yaml",
            {
                "health": {"listen": f"127.0.0.1:{port}"},
                "state": "var/s.db",
                "instances": {"box": inst},
                "flows": {"f": flow},
            },
        )
        (tmp_path / "in" / "a.csv").write_text("a")
        d = DaemonProcess(config, port).start()  # cwd: tmp_path
        try:
            await d.wait_listening()
            path = tmp_path / "var" / TOKEN_FILE
            await wait_for(path.exists, 10)
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            token = path.read_text().strip()

            async def failed() -> list[Any]:
                async with aiohttp.ClientSession() as s:
                    _, doc = await get_json(s, f"{d.url}/flows/f/items?state=failed", headers=bearer(token))
                    return list(doc["items"])

            pid = (await wait_for(failed, 20))[0]["id"]

            code, out, err = await _cli("ledger", "-c", str(config), "f", "--state", "failed", cwd=tmp_path)
            assert code == 0 and pid in out, err
            code, out, err = await _cli("ledger", "-c", str(config), "f", "--retry", pid, cwd=tmp_path)
            assert code == 0 and "delivered again" in out, err
            await wait_for(lambda: len(sink.received) == 2, 20)

            # From another folder the relative state path points elsewhere: one line saying what to do.
            elsewhere = tmp_path / "elsewhere"
            elsewhere.mkdir()
            code, out, err = await _cli("ledger", "-c", str(config), "f", cwd=elsewhere)
            assert code == 1 and len(err.strip().splitlines()) == 1, err
            assert f"no token file at {elsewhere / 'var' / TOKEN_FILE}: run from the daemon's working folder" in err
            assert "CONVEYOR_TOKEN" in err
            code, out, err = await _cli("ledger", "-c", str(config), "f", cwd=elsewhere, env={"CONVEYOR_TOKEN": token})
            assert code == 0 and pid in out, err
            # --url without -c: a local config's token is not sent to an address it does not name.
            code, out, err = await _cli("ledger", "--url", d.url, "f", cwd=tmp_path)
            assert code == 1 and "give -c CONFIG" in err, err
            code, out, err = await _cli("ledger", "--url", d.url, "f", cwd=tmp_path, env={"CONVEYOR_TOKEN": "nope"})
            assert code == 1 and "CONVEYOR_TOKEN is not the daemon's token" in err, err
            code, out, err = await _cli("status", "-c", str(config), cwd=elsewhere)
            assert code == 0 and "box" in out, err
        finally:
            assert d.stop() == 0
    assert token not in d.output()


async def test_a_reload_changes_the_token(tmp_path: Path) -> None:
    async with http_sink() as sink:
        config = _config(tmp_path, sink.url)
        async with daemon_in_process(config) as d, aiohttp.ClientSession() as s:
            url = d.health.url + "/flows/f/items"
            made = bearer(file_token(tmp_path))
            code, _ = await get_json(s, url, headers=made)
            assert code == 200
            _config(tmp_path, sink.url, token="set-by-reload-0123456789")
            assert await d.reload()
            code, _ = await get_json(s, url, headers=made)
            assert code == 401
            code, _ = await get_json(s, url, headers=bearer("set-by-reload-0123456789"))
            assert code == 200


def test_the_cli_finds_the_token_of_the_shipped_unit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under the shipped unit the daemon's working folder and $STATE_DIRECTORY are its state
    folder; an operator's shell has neither, and still finds the token."""
    import argparse

    from conveyor import remote
    from conveyor.health_auth import make_or_read_token

    unit = tmp_path / "lib" / "conveyor"
    monkeypatch.setattr(remote, "UNIT_STATE_DIRECTORY", str(unit))
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    monkeypatch.delenv("CONVEYOR_TOKEN", raising=False)
    monkeypatch.chdir(tmp_path)
    for state, folder in (("var/state.db", unit / "var"), (None, unit)):
        config = tmp_path / "c.yaml"
        config.write_text("health: {listen: 127.0.0.1:8470}\n" + (f"state: {state}\n" if state else ""))
        token, made = make_or_read_token(folder / TOKEN_FILE)
        assert made
        found = remote.find_token(argparse.Namespace(config=config, url=None))
        assert found.value == token, found.hint
