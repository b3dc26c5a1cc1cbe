"""Helpers for the operations tests: a daemon in-process or as a subprocess, and an HTTP sink.

The sink is a real aiohttp server on a random loopback port whose answers the test
scripts (status, delay, Retry-After, dropping the connection) and which records every
request it received.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web

from conveyor.netloc import hostport

CONVEYOR = [sys.executable, "-m", "conveyor"]


def free_port() -> int:
    """A port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def write_config(path: Path, doc: dict[str, Any]) -> Path:
    """Write a YAML config (state/spool under the same folder unless given)."""
    base = path.parent
    doc.setdefault("state", str(base / "state.db"))
    doc.setdefault("spool_dir", str(base / "spool"))
    doc.setdefault("log", {"level": "debug", "format": "json"})
    doc.setdefault("health", {"listen": "127.0.0.1:0"})  # a free port: a daemon on the default one may run here
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def local_flow(root: Path, target: dict[str, Any], **source: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """A `local` instance on ``root`` and a flow reading ``root/in`` into ``target``."""
    (root / "in").mkdir(parents=True, exist_ok=True)
    inst = {"type": "local", "root": str(root), "create": True}
    src = {"instance": "box", "path": "in", "poll_interval": "200ms", "min_age": "0s", "after": "delete"}
    src.update(source)
    return inst, {"source": src, "target": target}


# -- an HTTP sink ---------------------------------------------------------------------
@dataclass
class Received:
    """One request the sink saw."""

    headers: dict[str, str]
    size: int
    sha256: str
    body: bytes


@dataclass
class Sink:
    """A scriptable HTTP endpoint: ``plan`` answers requests in turn, then ``default``."""

    plan: list[Callable[[web.Request], Any]] = field(default_factory=list)
    default: Callable[[web.Request], Any] | None = None
    received: list[Received] = field(default_factory=list)
    keep_bodies_up_to: int = 1 << 20
    url: str = ""
    event: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        h = hashlib.sha256()
        size = 0
        kept = bytearray()
        async for chunk in request.content.iter_chunked(1 << 16):
            h.update(chunk)
            size += len(chunk)
            if len(kept) < self.keep_bodies_up_to:
                kept += chunk[: self.keep_bodies_up_to - len(kept)]
        self.received.append(Received(dict(request.headers), size, h.hexdigest(), bytes(kept)))
        self.event.set()
        answer = self.plan.pop(0) if self.plan else self.default
        if answer is None:
            return web.Response(status=200, text="ok")
        result = answer(request)
        if asyncio.iscoroutine(result):
            result = await result
        assert isinstance(result, web.StreamResponse)
        return result


def status(code: int, text: str = "", headers: dict[str, str] | None = None) -> Callable[[web.Request], Any]:
    """An answer with that status."""
    return lambda _r: web.Response(status=code, text=text, headers=headers)


def delayed(seconds: float, code: int = 200) -> Callable[[web.Request], Any]:
    """An answer after a delay."""

    async def answer(_r: web.Request) -> web.Response:
        await asyncio.sleep(seconds)
        return web.Response(status=code, text="late")

    return answer


def drop() -> Callable[[web.Request], Any]:
    """Close the connection without answering."""

    async def answer(r: web.Request) -> web.Response:
        assert r.transport is not None
        r.transport.close()
        await asyncio.sleep(0.05)
        return web.Response(status=200)

    return answer


@contextlib.asynccontextmanager
async def small_disk(folder: Path, size: str = "2m") -> AsyncIterator[Path]:
    """A tmpfs of ``size`` mounted on ``folder`` for the block (needs root), unmounted after:
    a server's folder whose disk fills up."""
    mounted = await asyncio.to_thread(
        subprocess.run,
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    assert mounted.returncode == 0, f"this test mounts a tmpfs (run as root): {mounted.stderr.strip()}"
    try:
        yield folder
    finally:
        await asyncio.to_thread(subprocess.run, ["umount", "-l", str(folder)], check=False)


@contextlib.asynccontextmanager
async def serve(
    app: web.Application, host: str = "127.0.0.1", ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[int]:
    """Serve ``app`` on a random port of ``host`` (a loopback address; HTTPS with ``ssl_context``)
    for the duration of the block; yields the port."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, 0, ssl_context=ssl_context)
    await site.start()
    try:
        yield site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def http_sink(host: str = "127.0.0.1", **kw: Any) -> AsyncIterator[Sink]:
    """Run a Sink on a random port of ``host`` (a loopback address) for the duration of the block."""
    sink = Sink(**kw)
    app = web.Application(client_max_size=1 << 40)
    app.router.add_route("*", "/{tail:.*}", sink.handle)
    async with serve(app, host) as port:
        sink.url = f"http://{hostport(host, port)}/hook"
        yield sink


# -- the daemon ---------------------------------------------------------------------------
@contextlib.asynccontextmanager
async def daemon_in_process(config_path: Path, **health: Any) -> AsyncIterator[Any]:
    """Run the daemon in this event loop; yields it once the health server listens."""
    from conveyor.config import load_config
    from conveyor.daemon import Daemon
    from conveyor.health import HealthServer

    daemon = Daemon(load_config(config_path))
    server = next(a for a in daemon.addons if isinstance(a, HealthServer))
    for k, v in health.items():
        setattr(server, k, v)
    task = asyncio.create_task(daemon.run())
    for _ in range(200):
        if server._runner is not None and server.port:
            break
        if task.done():
            await task
        await asyncio.sleep(0.02)
    daemon.health = server  # type: ignore[attr-defined]  # for the tests: the server of this daemon
    try:
        yield daemon
    finally:
        daemon.request_stop()
        rc = await asyncio.wait_for(task, 30)
        assert rc == 0, f"daemon.run() returned {rc}"


async def wait_for(check: Callable[[], Any], limit: float = 10.0, every: float = 0.05) -> Any:
    """The harness's wait_for with this module's shorter default limit."""
    from tests import harness

    return await harness.wait_for(check, limit, every)


async def get_json(session: aiohttp.ClientSession, url: str, **kw: Any) -> tuple[int, Any]:
    """GET/POST (method= in kw) and return (status, json)."""
    method = kw.pop("method", "GET")
    async with session.request(method, url, **kw) as r:
        return r.status, await r.json(content_type=None)


def api_headers(config: Path) -> dict[str, str]:
    """The bearer header for the ledger API of a daemon started on ``config``: its
    ``health.token``, else the token the daemon made beside its state database."""
    from conveyor.config import load_config
    from conveyor.health_auth import read_token, token_path

    cfg = load_config(config)
    token = cfg.health.token.get_secret_value() if cfg.health.token else read_token(token_path(cfg.state))
    return {"Authorization": f"Bearer {token}"}


class DaemonProcess:
    """``conveyor run -c`` as a subprocess; stdout and stderr go to files for later greps."""

    def __init__(self, config: Path, port: int, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.url = f"http://127.0.0.1:{port}"
        self.out = config.parent / "daemon.stdout"
        self.err = config.parent / "daemon.stderr"
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> DaemonProcess:
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen(
                [*CONVEYOR, "run", "-c", str(self.config)], stdout=out, stderr=err, env=self.env, cwd=self.config.parent
            )
        return self

    async def wait_listening(self, limit: float = 20.0) -> None:
        assert self.proc is not None
        async with aiohttp.ClientSession() as s:
            deadline = time.monotonic() + limit
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise AssertionError(f"daemon exited {self.proc.returncode}: {self.err.read_text()[-2000:]}")
                try:
                    async with s.get(self.url + "/healthz") as r:
                        if r.status in (200, 503):
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        raise AssertionError("daemon's health endpoint never answered")

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; the exit code must be 0 (-9: still running ``timeout`` s after SIGTERM)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        rc = self.proc.returncode
        assert rc == 0, f"daemon exited {rc} when stopped; its output ends:\n{self.output()[-3000:]}"
        return rc

    def output(self) -> str:
        return self.out.read_text(errors="replace") + self.err.read_text(errors="replace")

    def rss_kib(self, key: str = "VmRSS") -> int:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        raise KeyError(key)
