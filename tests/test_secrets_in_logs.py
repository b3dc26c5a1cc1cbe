"""Secrets never leave the daemon: run a config full of known secrets, whose connections all
fail (closed loopback ports), at debug level, then grep everything it said."""

from __future__ import annotations

import asyncio
import base64
import json
import urllib.parse
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from tests.servers.ops import DaemonProcess, free_port, get_json, http_sink, wait_for, write_config

SECRETS = {
    "sftp": "sftpPW-q7Zr41xK",
    "ftp": "ftpPW-m2Lp90aB",
    "mq": "mqPW-from-file-T5v8Qw",  # read through ${file:...}
    "header": "hdrTOKEN-9Kx2Lw7Pq",  # an http target Authorization header
    "health": "healthTOKEN-Rr3Nn8Ss",  # health.token
    "oauth_secret": "oauthSECRET-Jj4Hh6Gg",
    "oauth_refresh": "oauthREFRESH-Uu1Ii2Oo",
    "url_pass": "urlPASS-Zz9Yy8Xx",  # user:pass in the http target's URL
    "env": "envPW-Cc5Dd6Ee",  # an ${ENV} value (the sftp passphrase)
}


def forms(secret: str) -> list[str]:
    """The secret and the encodings it could leak in (basic auth, URLs)."""
    return [secret, base64.b64encode(secret.encode()).decode().rstrip("="), urllib.parse.quote(secret)]


def echo_headers(request: web.Request) -> web.Response:
    """A careless server that quotes the request's credentials back in its error page."""
    return web.Response(status=400, text=f"bad request; you sent {dict(request.headers)}")


@pytest.mark.parametrize("fmt", ["json", "text"])
async def test_no_secret_in_any_output(tmp_path: Path, fmt: str) -> None:
    async with http_sink(default=echo_headers) as sink:
        await _run(tmp_path, fmt, sink.url)
        assert sink.received


async def _run(tmp_path: Path, fmt: str, echo_url: str) -> None:
    closed = free_port()
    port = free_port()
    (tmp_path / "mq-pass").write_text(SECRETS["mq"] + "\n")
    (tmp_path / "box" / "in").mkdir(parents=True)
    (tmp_path / "box" / "in" / "a.csv").write_text("x")
    (tmp_path / "box" / "ok").mkdir()
    (tmp_path / "box" / "echo").mkdir()
    (tmp_path / "box" / "echo" / "c.csv").write_text("z")
    (tmp_path / "box" / "ok" / "b.csv").write_text("y")
    config = write_config(
        tmp_path / "c.yaml",
        {
            "health": {"listen": f"127.0.0.1:{port}", "token": SECRETS["health"]},
            "log": {"level": "debug", "format": fmt},
            "instances": {
                "partner": {
                    "type": "sftp",
                    "host": "127.0.0.1",
                    "port": closed,
                    "username": "acme",
                    "password": SECRETS["sftp"],
                    "timeout": "1s",
                    "max_connection_attempts": 2,
                    "host_fingerprint": "SHA256:" + "A" * 43,
                },
                "keyed": {
                    "type": "sftp",
                    "host": "127.0.0.1",
                    "port": closed,
                    "username": "acme",
                    "private_key_file": str(tmp_path / "missing.pem"),
                    "passphrase": "${SFTP_PASSPHRASE}",
                    "timeout": "1s",
                    "host_fingerprint": "SHA256:" + "B" * 43,
                },
                "legacy": {
                    "type": "ftp",
                    "host": "127.0.0.1",
                    "port": closed,
                    "username": "acme",
                    "password": SECRETS["ftp"],
                    "timeout": "1s",
                },
                "events": {
                    "type": "rabbitmq",
                    "host": "127.0.0.1",
                    "port": closed,
                    "username": "conveyor",
                    "password": f"${{file:{tmp_path / 'mq-pass'}}}",
                    "timeout": "1s",
                },
                "gcp": {
                    "type": "pubsub",
                    "project": "acme",
                    "timeout": "2s",
                    "oauth": {
                        "client_id": "cid",
                        "client_secret": SECRETS["oauth_secret"],
                        "refresh_token": SECRETS["oauth_refresh"],
                        "token_uri": f"http://127.0.0.1:{closed}/token",
                    },
                },
                "box": {"type": "local", "root": str(tmp_path / "box")},
            },
            "flows": {
                "from-sftp": {
                    "source": {"instance": "partner", "path": "out", "poll_interval": "500ms"},
                    "target": {"type": "directory", "path": str(tmp_path / "o1")},
                },
                "from-keyed": {
                    "source": {"instance": "keyed", "path": "out", "poll_interval": "500ms"},
                    "target": {"type": "directory", "path": str(tmp_path / "o1")},
                },
                "from-ftp": {
                    "source": {"instance": "legacy", "path": "out", "poll_interval": "500ms"},
                    "target": {"instance": "partner", "path": "in"},
                },
                "from-mq": {
                    "source": {"instance": "events", "queue": "orders"},
                    "target": {
                        "type": "http",
                        "url": f"http://127.0.0.1:{closed}/hook",
                        "headers": {"Authorization": f"Bearer {SECRETS['header']}"},
                    },
                },
                "from-gcp": {
                    "source": {"instance": "gcp", "subscription": "s"},
                    "target": {"type": "directory", "path": str(tmp_path / "o2")},
                },
                "ok": {
                    "source": {"instance": "box", "path": "ok", "poll_interval": "500ms", "min_age": "0s"},
                    "target": {"type": "directory", "path": str(tmp_path / "o3")},
                },  # debug lines on success
                "echo": {
                    "source": {"instance": "box", "path": "echo", "poll_interval": "500ms", "min_age": "0s"},
                    "target": {
                        "type": "http",
                        "url": echo_url,
                        "headers": {"Authorization": f"Bearer {SECRETS['header']}"},
                    },
                },
                "to-http": {
                    "source": {"instance": "box", "path": "in", "poll_interval": "500ms", "min_age": "0s"},
                    "target": {
                        "type": "http",
                        "url": f"http://svc:{SECRETS['url_pass']}@127.0.0.1:{closed}/hook?x=1",
                        "headers": {"X-Api-Key": SECRETS["header"]},
                        "timeout": "1s",
                    },
                    "retry": {"attempts": 2, "backoff": "100ms"},
                },
            },
        },
    )
    d = DaemonProcess(config, port, env={"SFTP_PASSPHRASE": SECRETS["env"]}).start()
    served = []
    try:
        await d.wait_listening()
        async with aiohttp.ClientSession() as s:
            await wait_for(lambda: _failed(s, d.url, "to-http"), 45, 0.3)  # failed for good
            await wait_for(lambda: _failed(s, d.url, "echo"), 45, 0.3)
            await asyncio.sleep(2.0)  # let every connector fail a few more times
            for path in (
                "/status",
                "/readyz",
                "/healthz",
                "/metrics",
                "/flows/to-http/items",
                "/flows/echo/items",
                "/flows/from-mq/items?state=failed",
            ):
                async with s.get(d.url + path, headers={"Authorization": f"Bearer {SECRETS['health']}"}) as r:
                    served.append(await r.text())
            _, doc = await get_json(s, d.url + "/status")
    finally:
        rc = d.stop()
    out = d.output() + "\n".join(served)
    assert rc == 0, f"exit {rc} (-9: still running 30 s after SIGTERM); the daemon's log ends:\n{d.output()[-3000:]}"
    if fmt == "json":
        _check_json_lines(d.err.read_text())
    # The run did exercise the failure paths whose messages could carry secrets.
    assert doc["instances"]["partner"]["state"] != "up" and doc["instances"]["partner"]["last_error"]
    assert doc["instances"]["legacy"]["last_error"] and doc["flows"]["to-http"]["failed"] == 1
    assert ('"level": "debug"' if fmt == "json" else " debug ") in out
    assert "you sent" in out and "***" in out  # the echoed headers were logged, masked
    for name, secret in SECRETS.items():
        for form in forms(secret):
            assert form not in out, f"{name} secret leaked as {form!r}"


async def _failed(s: aiohttp.ClientSession, url: str, flow: str) -> bool:
    _, doc = await get_json(
        s, url + f"/flows/{flow}/items?state=failed", headers={"Authorization": f"Bearer {SECRETS['health']}"}
    )
    return bool(doc["items"])


def _check_json_lines(stderr: str) -> None:
    """One JSON object per line, with flow / instance / payload_id where a line concerns one."""
    docs = [json.loads(line) for line in stderr.splitlines() if line.strip()]
    assert docs and all({"ts", "level", "logger", "msg"} <= d.keys() for d in docs)
    delivered = [d for d in docs if d["msg"].startswith("delivered ")]
    refused = [d for d in docs if "failed for good" in d["msg"]]
    assert delivered and refused
    assert all(d.get("flow") and d.get("payload_id") for d in delivered + refused)
    assert {d["flow"] for d in refused} == {"echo"}
