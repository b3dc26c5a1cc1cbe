"""The health HTTP server: /healthz, /readyz, /status, /metrics, the ledger and the status page.

The server has a thread and an event loop of its own, so a daemon loop that is busy moving
a thousand payloads a second (or stuck) does not delay /healthz. Everything that reads
daemon state (/readyz, /status, /metrics, the ledger) is run *on the daemon's loop*
(``run_coroutine_threadsafe``), so no daemon structure is touched from two threads.
/healthz reads only what the daemon loop's ticker publishes: when it last ticked, the
worst recent stall, and which flow tasks died — a loop blocked for longer than
``stall_after`` seconds is reported while it is blocked, and for a while after.
Every request passes :class:`~conveyor.health_auth.ApiGuard` first: the probes are open, the
rest is Host- and Origin-checked and, for the ledger, needs the bearer token.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import logging
import socket
import threading
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from conveyor import __version__
from conveyor.errors import Permanent
from conveyor.health_auth import ApiGuard
from conveyor.metrics import Metrics
from conveyor.netloc import hostport
from conveyor.throughput import Throughput

if TYPE_CHECKING:
    from aiohttp import web

    from conveyor.health_app import DaemonView

log = logging.getLogger("conveyor.health")

TICK = 0.25
"""Seconds between ticker wake-ups (the loop-lag probe)."""
STALL_AFTER = 10.0
"""A loop that was blocked this long makes /healthz answer 503."""
LAG_MEMORY = 30.0
"""How long a measured loop stall keeps /healthz unhealthy after the loop recovered."""
BACKLOG = 128
"""Connections the kernel queues for the server, aiohttp's default (and while it loads)."""

T = TypeVar("T")


def parse_listen(listen: str) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or ``:port`` (all interfaces) → (host, port)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"health.listen {listen!r} is not host:port")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


class HealthServer:
    """Daemon add-on: the aiohttp server on ``health.listen`` plus the metrics exporter."""

    def __init__(self, listen: str, *, stall_after: float = STALL_AFTER) -> None:
        self.host, self.port = parse_listen(listen)
        self.stall_after = stall_after
        self.daemon: DaemonView | None = None
        self.metrics: Metrics | None = None
        self.started = False
        self.stopping = False
        self._runner: web.AppRunner | None = None
        self._sockets: list[socket.socket] = []
        self._serving: concurrent.futures.Future[web.AppRunner] | None = None
        """The server thread's start: importing aiohttp and serving on the bound sockets."""
        self._ticker: asyncio.Task[None] | None = None
        self._main: asyncio.AbstractEventLoop | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        # Published by the daemon loop's ticker, read by the server thread (plain attribute
        # reads and writes of immutable values: safe across threads in CPython).
        self._last_tick = 0.0
        self._worst_lag = 0.0
        self._worst_lag_at = 0.0
        self._dead: tuple[str, ...] = ()
        self.guard: ApiGuard | None = None
        self.throughput = Throughput()
        """Each flow's deliveries over the last minutes, for the status page."""

    @property
    def url(self) -> str:
        """Base URL the server answers on (the real port when ``:0`` was configured)."""
        return f"http://{hostport(self.host, self.port)}"

    async def start(self, daemon: DaemonView) -> None:
        """Bind the port (a busy port is a fatal start error) and start the server thread, which
        serves once it has loaded the HTTP side; :meth:`ready` waits for that."""
        self.daemon = daemon
        # Reads the config at each request: a reload that changes health.token or
        # allowed_hosts applies at once.
        self.guard = ApiGuard(self.host, lambda: daemon.config.health, lambda: daemon.config.state)
        self.guard.prepare()  # the token file exists before anyone can ask
        self._main = asyncio.get_running_loop()
        self.metrics = Metrics(daemon.status)
        self.metrics.attach()
        self._last_tick = time.monotonic()
        self._ticker = asyncio.create_task(self._tick(), name="health-ticker")
        try:
            self._sockets = listen(self.host, self.port)
        except OSError as e:
            await self.close()
            where = hostport(self.host, self.port)
            hint = (
                ": another process listens there (another conveyor?); stop it, or set health.listen to"
                " another port, or to null to turn the endpoint off"
                if e.errno == errno.EADDRINUSE
                else ""
            )
            # A start error that says what to do, not a crash: no traceback (Permanent).
            raise Permanent(f"health endpoint cannot listen on {where}: {e.strerror}{hint}") from None
        self.port = int(self._sockets[0].getsockname()[1])  # the real port when :0 was asked for
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="conveyor-health", daemon=True)
        self._thread.start()
        self._serving = asyncio.run_coroutine_threadsafe(self._serve(), self._loop)
        log.info("health endpoint on %s", self.url)

    async def _serve(self) -> web.AppRunner:
        """In the server thread: load the HTTP side and serve on the bound sockets."""
        from conveyor.health_http import serve

        self._runner = await serve(self, self._sockets)
        return self._runner

    async def ready(self) -> None:
        """Every flow has started: once the server serves, report ready."""
        if self._serving is not None:
            await asyncio.wrap_future(self._serving)
        self.started = True

    async def stop(self) -> None:
        """A stop began: keep answering (so the drain can be watched) but report not ready."""
        self.stopping = True

    async def close(self) -> None:
        """After the drain: stop serving, end the thread."""
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        if self._serving is not None:
            with contextlib.suppress(Exception):  # a failed start was reported by ready()
                await asyncio.wrap_future(self._serving)
            self._serving = None
        if self._loop is not None and self._thread is not None:
            if self._runner is not None:
                runner, self._runner = self._runner, None
                with contextlib.suppress(Exception):
                    await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(runner.cleanup(), self._loop))
            self._loop.call_soon_threadsafe(self._loop.stop)
            await asyncio.to_thread(self._thread.join, 10.0)
            if not self._thread.is_alive():
                self._loop.close()
            self._loop = self._thread = None
        for sock in self._sockets:
            sock.close()  # the sites' servers closed them already, unless the start failed
        self._sockets = []
        if self.metrics is not None:
            self.metrics.detach()

    async def on_daemon_loop(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the daemon's loop and wait for it from the server thread."""
        assert self._main is not None
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self._main))

    async def _tick(self) -> None:
        """On the daemon loop: measure how late each wake-up is; note flows whose task died."""
        assert self.daemon is not None
        while True:
            await asyncio.sleep(TICK)
            now = time.monotonic()
            lag = now - self._last_tick - TICK
            self._last_tick = now
            if lag > self._worst_lag or now - self._worst_lag_at > LAG_MEMORY:
                self._worst_lag, self._worst_lag_at = max(lag, 0.0), now
            if lag > self.stall_after:
                log.warning("the event loop was blocked for %.1fs", lag)
            self._dead = tuple(n for n, (_r, task) in self.daemon.flows.items() if task.done())
            self.throughput.sample(self.daemon.status.flows, now)

    def loop_lag(self) -> float:
        """The worst recent loop stall in seconds (including one still under way)."""
        now = time.monotonic()
        current = now - self._last_tick - TICK
        recent = self._worst_lag if now - self._worst_lag_at <= LAG_MEMORY else 0.0
        return max(current, recent, 0.0)

    # -- handlers ----------------------------------------------------------------
    def health_problems(self) -> list[str]:
        """Why the daemon is not healthy (empty when it is); safe to call from any thread."""
        problems = []
        lag = self.loop_lag()
        if lag > self.stall_after:
            problems.append(f"event loop blocked for {lag:.1f}s (limit {self.stall_after:g}s)")
        if not self.stopping:
            problems += [f"flow {name} died" for name in self._dead]
        return problems

    def ready_reasons(self) -> dict[str, Any]:
        """Why the daemon is not ready: {"flows": {...}, "instances": {...}, "daemon": ...}.
        Reads the status board: call on the daemon loop."""
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
            ends = [(flow.source.instance, True), *((r.instance, False) for r in flow.routes)]
            for name, is_source in ends:
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

    def api_token(self) -> str:
        """The token the API and the status page's sign-in take now."""
        assert self.guard is not None
        return self.guard.token()

    def health_doc(self) -> dict[str, Any]:
        """The /healthz document; safe to call from any thread."""
        problems = self.health_problems()
        return {
            "status": "unhealthy" if problems else "ok",
            "problems": problems,
            "loop_lag_ms": round(self.loop_lag() * 1000, 1),
        }

    def status_doc(self) -> dict[str, Any]:
        """The /status document (on the daemon loop)."""
        assert self.daemon is not None
        d = self.daemon
        doc = d.status.snapshot()
        reasons = self.ready_reasons()
        doc.update(
            {
                "version": __version__,
                "replica": d.owner,
                "config": str(d.config.path),
                "ready": not reasons,
                "not_ready": reasons,
                "healthy": not self.health_problems(),
            }
        )
        return doc


def listen(host: str, port: int) -> list[socket.socket]:
    """Listening sockets on ``host``'s addresses (all of a name's, as asyncio binds them), bound
    at once on the daemon's thread, so the URL is known and a busy port fails the start."""
    sockets: list[socket.socket] = []
    unavailable: OSError | None = None
    try:
        for family, kind, proto, _, address in dict.fromkeys(
            socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        ):
            try:
                sock = socket.socket(family, kind, proto)
            except OSError:
                continue  # a family this host does not have (no IPv6, say)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # a v4 address binds on its own
            try:
                sock.bind(address)
            except OSError as e:
                if e.errno != errno.EADDRNOTAVAIL:
                    raise
                unavailable = e  # a name's address of a family that is off: the others serve
                sockets.pop().close()
                continue
            sock.listen(BACKLOG)
            sock.setblocking(False)
        if not sockets:
            raise unavailable or OSError(errno.EADDRNOTAVAIL, "no address to listen on")
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets
