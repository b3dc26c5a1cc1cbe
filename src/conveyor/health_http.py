"""The health server's HTTP side: the aiohttp application, its probe routes and serving it.

Imported by the server's own thread once the daemon has bound the port, so importing aiohttp
(about a tenth of a second) overlaps the daemon's start instead of delaying its first flow;
requests that arrive meanwhile wait in the listening socket's backlog.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from aiohttp import web

from conveyor.health_app import DAEMON_KEY, SERVER_KEY, json_response
from conveyor.health_auth import TokenFileError
from conveyor.health_ledger import add_ledger_routes
from conveyor.health_page import add_page_routes

if TYPE_CHECKING:
    from conveyor.health import HealthServer

log = logging.getLogger("conveyor.health")

T = TypeVar("T")


def make_app(server: HealthServer) -> web.Application:
    """The aiohttp application of ``server`` (started: its daemon and guard are set)."""
    assert server.daemon is not None and server.guard is not None
    guard = server.guard

    @web.middleware
    async def refuse(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Refuse what the guard refuses, with a JSON body naming what is missing."""
        if request.match_info.http_exception is not None:
            return await handler(request)  # no such route (404, 405): nothing to guard
        try:
            refusal = guard.refusal(request.method, request.path, request.headers, request.body_exists)
        except TokenFileError as e:
            log.error("ledger API: %s", e)
            return json_response({"error": str(e)}, 500)
        if refusal is None:
            return await handler(request)
        status, message = refusal
        response = json_response({"error": message}, status)
        if status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="conveyor"'
        return response

    async def healthz(request: web.Request) -> web.Response:
        """200 while the daemon loop is responsive and no flow died; else 503. Answered by the
        server thread alone, so it stays fast (and truthful) when the daemon loop is not."""
        doc = server.health_doc()
        return json_response(doc, 503 if doc["problems"] else 200)

    async def readyz(request: web.Request) -> web.Response:
        """200 when every enabled flow's source and target are connected and progressing."""
        reasons = await server.on_daemon_loop(_call(server.ready_reasons))
        return json_response({"ready": not reasons, "reasons": reasons}, 503 if reasons else 200)

    async def status(request: web.Request) -> web.Response:
        """The status board plus who and what is running."""
        return json_response(await server.on_daemon_loop(_call(server.status_doc)))

    async def metrics(request: web.Request) -> web.Response:
        """Prometheus text exposition."""
        assert server.metrics is not None
        body = await server.on_daemon_loop(_call(server.metrics.exposition))
        return web.Response(body=body, headers={"Content-Type": server.metrics.content_type})

    app = web.Application(middlewares=[refuse])
    app[DAEMON_KEY] = server.daemon
    app[SERVER_KEY] = server
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/status", status)
    app.router.add_get("/metrics", metrics)
    add_ledger_routes(app)
    add_page_routes(app, server)
    return app


async def serve(server: HealthServer, sockets: list[socket.socket]) -> web.AppRunner:
    """In the server thread: serve ``server``'s application on the bound ``sockets``."""
    runner = web.AppRunner(make_app(server), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        for sock in sockets:
            await web.SockSite(runner, sock).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


async def _call(fn: Callable[[], T]) -> T:
    """A coroutine that calls ``fn`` (to run a plain function on the daemon loop)."""
    return fn()
