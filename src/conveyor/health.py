"""The health HTTP server (SPEC section 7): /healthz, /readyz, /status, /metrics and the ledger.

It runs in the daemon's own event loop, so it can only answer when the loop is free: a
ticker records how late each of its wake-ups was, and /healthz reports a loop that was
blocked for longer than ``stall_after`` seconds as unhealthy even after it recovered.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
from typing import TYPE_CHECKING, Any

from aiohttp import web

from conveyor import __version__
from conveyor.health_ledger import add_ledger_routes
from conveyor.metrics import Metrics
from conveyor.redact import redact

if TYPE_CHECKING:
    from conveyor.daemon import Daemon

log = logging.getLogger("conveyor.health")

TICK = 0.25
"""Seconds between ticker wake-ups (the loop-lag probe)."""
STALL_AFTER = 10.0
"""A loop that was blocked this long makes /healthz answer 503."""
LAG_MEMORY = 30.0
"""How long a measured loop stall keeps /healthz unhealthy after the loop recovered."""

DAEMON_KEY: web.AppKey[Daemon] = web.AppKey("daemon")
SERVER_KEY: web.AppKey[HealthServer] = web.AppKey("health")


def parse_listen(listen: str) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or ``:port`` (all interfaces) → (host, port)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"health.listen {listen!r} is not host:port")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def json_response(doc: Any, status: int = 200) -> web.Response:
    """A JSON answer; the text is redacted as a last guard, whatever fed the document."""
    return web.Response(text=redact(json.dumps(doc, ensure_ascii=False, default=str)), status=status,
                        content_type="application/json")


class HealthServer:
    """Daemon add-on: the aiohttp server on ``health.listen`` plus the metrics exporter."""

    def __init__(self, listen: str, *, stall_after: float = STALL_AFTER) -> None:
        self.host, self.port = parse_listen(listen)
        self.stall_after = stall_after
        self.daemon: Daemon | None = None
        self.metrics: Metrics | None = None
        self.started = False
        self.stopping = False
        self._runner: web.AppRunner | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._last_tick = 0.0
        self._worst_lag = 0.0
        self._worst_lag_at = 0.0

    @property
    def url(self) -> str:
        """Base URL the server answers on (the real port when ``:0`` was configured)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def app(self) -> web.Application:
        """The aiohttp application."""
        assert self.daemon is not None
        app = web.Application()
        app[DAEMON_KEY] = self.daemon
        app[SERVER_KEY] = self
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/status", self.status)
        app.router.add_get("/metrics", self.metrics_text)
        add_ledger_routes(app)
        return app

    async def start(self, daemon: Daemon) -> None:
        """Bind the port (a busy port is a fatal start error) and start the loop-lag ticker."""
        self.daemon = daemon
        self.metrics = Metrics(daemon.status)
        self.metrics.attach()
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        try:
            await site.start()
        except OSError as e:
            await self._runner.cleanup()
            raise OSError(e.errno, f"health endpoint cannot listen on {self.host}:{self.port}: {e.strerror}") \
                from None
        if self._runner.addresses:
            self.port = int(self._runner.addresses[0][1])  # the real port when :0 was asked for
        loop = asyncio.get_running_loop()
        self._last_tick = loop.time()
        self._ticker = asyncio.create_task(self._tick(), name="health-ticker")
        log.info("health endpoint on %s", self.url)

    async def ready(self) -> None:
        """Every flow has started."""
        self.started = True

    async def stop(self) -> None:
        """A stop began: keep answering (so the drain can be watched) but report not ready."""
        self.stopping = True

    async def close(self) -> None:
        """After the drain: stop serving."""
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.metrics is not None:
            self.metrics.detach()

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(TICK)
            now = loop.time()
            lag = now - self._last_tick - TICK
            self._last_tick = now
            if lag > self._worst_lag or now - self._worst_lag_at > LAG_MEMORY:
                self._worst_lag, self._worst_lag_at = max(lag, 0.0), now
            if lag > self.stall_after:
                log.warning("the event loop was blocked for %.1fs", lag)

    def loop_lag(self) -> float:
        """The worst recent loop stall in seconds (including one still under way)."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        current = now - self._last_tick - TICK
        recent = self._worst_lag if now - self._worst_lag_at <= LAG_MEMORY else 0.0
        return max(current, recent, 0.0)

    # -- handlers ----------------------------------------------------------------
    def health_problems(self) -> list[str]:
        """Why the daemon is not healthy (empty when it is)."""
        assert self.daemon is not None
        problems = []
        lag = self.loop_lag()
        if lag > self.stall_after:
            problems.append(f"event loop blocked for {lag:.1f}s (limit {self.stall_after:g}s)")
        for name, (_runner, task) in self.daemon.flows.items():
            if task.done() and not self.stopping:
                problems.append(f"flow {name} died")
        return problems

    def ready_reasons(self) -> dict[str, Any]:
        """Why the daemon is not ready: {"flows": {...}, "instances": {...}, "daemon": ...}."""
        assert self.daemon is not None
        d = self.daemon
        reasons: dict[str, Any] = {}
        if self.stopping:
            reasons["daemon"] = "stopping"
        elif not self.started:
            reasons["daemon"] = "starting"
        flows = d.status.stalled_reasons()
        if flows:
            reasons["flows"] = flows
        down: dict[str, str] = {}
        for flow in d.config.flows.values():
            if not flow.enabled:
                continue
            for name, is_source in ((flow.source.instance, True), (flow.target_instance, False)):
                st = d.status.instances.get(name) if name else None
                if st is None or st.state == "up":
                    continue
                # A source instance connects as soon as its flow starts; a target instance only
                # on the first delivery, so "connecting" there just means "nothing sent yet".
                if st.state == "down" or is_source:
                    down[st.name] = st.state + (f": {st.last_error}" if st.last_error else "")
        if down:
            reasons["instances"] = down
        return reasons

    async def healthz(self, request: web.Request) -> web.Response:
        """200 while the loop is responsive and no flow died; else 503."""
        problems = self.health_problems()
        doc = {"status": "unhealthy" if problems else "ok", "problems": problems,
               "loop_lag_ms": round(self.loop_lag() * 1000, 1)}
        return json_response(doc, 503 if problems else 200)

    async def readyz(self, request: web.Request) -> web.Response:
        """200 when every enabled flow's source and target are connected and progressing."""
        reasons = self.ready_reasons()
        return json_response({"ready": not reasons, "reasons": reasons}, 503 if reasons else 200)

    async def status(self, request: web.Request) -> web.Response:
        """The status board plus who and what is running."""
        assert self.daemon is not None
        d = self.daemon
        doc = d.status.snapshot()
        reasons = self.ready_reasons()
        doc.update({
            "version": __version__, "replica": d.owner, "config": str(d.config.path),
            "ready": not reasons, "not_ready": reasons, "healthy": not self.health_problems(),
        })
        return json_response(doc)

    async def metrics_text(self, request: web.Request) -> web.Response:
        """Prometheus text exposition."""
        assert self.metrics is not None
        body = self.metrics.exposition()
        return web.Response(body=body, headers={"Content-Type": self.metrics.content_type})


def peer_is_local(remote: str | None) -> bool:
    """True for 127.0.0.1 and ::1 (also IPv4-mapped) — not the rest of 127/8, see docs/operations.md."""
    if not remote:
        return False
    try:
        ip = ipaddress.ip_address(remote.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip in (ipaddress.IPv4Address("127.0.0.1"), ipaddress.IPv6Address("::1"))
