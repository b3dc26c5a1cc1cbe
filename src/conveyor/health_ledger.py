"""The ledger endpoints: list a flow's items, retry a failed one, forget one; and a poll on demand.

Who may call them is decided before a handler runs (:mod:`conveyor.health_auth`): retry,
forget and poll always need the bearer token, listings unless ``health.public_listings`` is true.
"""

from __future__ import annotations

import json
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

from aiohttp import web

from conveyor.health_app import DAEMON_KEY, SERVER_KEY, DaemonView, json_response

T = TypeVar("T")

STATES = ("pending", "in_flight", "delivered", "failed")
MAX_LIMIT = 1000


def _daemon(request: web.Request) -> DaemonView:
    return request.app[DAEMON_KEY]


async def _on_daemon_loop(request: web.Request, coro: Coroutine[Any, Any, T]) -> T:
    """Store calls belong to the daemon's loop; handlers run in the server thread."""
    return await request.app[SERVER_KEY].on_daemon_loop(coro)


def _json(doc: Any, status: int = 200) -> web.Response:
    return json_response(doc, status)


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _flow(request: web.Request) -> str:
    name = request.match_info["flow"]
    if name not in _daemon(request).config.flows:
        raise web.HTTPNotFound(text=json.dumps({"error": f"no flow named {name!r}"}), content_type="application/json")
    return name


def _int(request: web.Request, key: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(key)
    if raw is None or raw == "":
        return default
    try:
        v = int(raw)
    except ValueError:
        raise web.HTTPBadRequest(
            text=json.dumps({"error": f"{key} must be an integer"}), content_type="application/json"
        ) from None
    return max(lo, min(hi, v))


def item_doc(item: Any, targets: dict[str, Any] | None = None) -> dict[str, Any]:
    """An item as the ledger shows it (epoch seconds plus readable UTC times), with each target's
    record of it for a flow with a ``targets:`` list."""
    doc: dict[str, Any] = item.as_dict()
    doc["first_seen_at"] = _iso(item.first_seen)
    doc["updated_at"] = _iso(item.updated)
    doc["targets"] = {name: {**t.as_dict(), "updated_at": _iso(t.updated)} for name, t in (targets or {}).items()}
    return doc


async def _docs(daemon: DaemonView, flow: str, items: list[Any]) -> list[dict[str, Any]]:
    """Ledger documents of ``items`` (on the daemon loop), their targets' records read in one query."""
    targets = await daemon.store.targets(flow, [i.id for i in items])
    return [item_doc(i, targets.get(i.id)) for i in items]


async def list_items(request: web.Request) -> web.Response:
    """GET /flows/{flow}/items?state=&limit=&offset=."""
    flow = _flow(request)
    state = request.query.get("state") or None
    if state is not None and state not in STATES:
        return _json({"error": f"state must be one of {', '.join(STATES)}"}, 400)
    limit = _int(request, "limit", 100, 1, MAX_LIMIT)
    offset = _int(request, "offset", 0, 0, 1 << 62)
    daemon = _daemon(request)

    async def read() -> list[dict[str, Any]]:
        return await _docs(daemon, flow, await daemon.store.list(flow, state, limit, offset))

    docs = await _on_daemon_loop(request, read())
    return _json({"flow": flow, "state": state, "limit": limit, "offset": offset, "items": docs})


async def _act(request: web.Request, action: str) -> web.Response:
    flow = _flow(request)
    pid = request.match_info["id"]
    status, doc = await _on_daemon_loop(request, apply(_daemon(request), flow, pid, action))
    return _json(doc, status)


async def apply(daemon: DaemonView, flow: str, pid: str, action: str) -> tuple[int, dict[str, Any]]:
    """Retry or forget one item (on the daemon loop); the HTTP status and answer."""
    store = daemon.store
    item = (await store.get_many(flow, [pid])).get(pid)
    if item is None:
        return 404, {"error": f"flow {flow} has no item {pid}"}
    if action == "retry":
        if item.state != "failed":
            return 409, {"error": f"item {pid} is {item.state}; only failed items can be retried"}
        await store.retry(flow, pid)
    else:
        if item.state == "in_flight":
            return 409, {"error": f"item {pid} is being delivered right now; forget it once it settled"}
        await store.forget(flow, pid)
        entry = daemon.flows.get(flow)
        if entry is not None:  # a file source remembers which files are done: list this one afresh
            entry[0].forgotten(pid)
    after = (await store.get_many(flow, [pid])).get(pid)
    doc = (await _docs(daemon, flow, [after]))[0] if after else None
    return 200, {"flow": flow, "id": pid, "action": action, "item": doc}


async def retry_item(request: web.Request) -> web.Response:
    """POST /flows/{flow}/items/{id}/retry: a failed item becomes pending (attempts reset)."""
    return await _act(request, "retry")


async def forget_item(request: web.Request) -> web.Response:
    """POST /flows/{flow}/items/{id}/forget: drop the row, so the source offers the item again."""
    return await _act(request, "forget")


async def poll_flow(request: web.Request) -> web.Response:
    """POST /flows/{flow}/poll: a file source lists at once (202), whatever its interval or schedule."""
    flow = _flow(request)
    status, doc = await _on_daemon_loop(request, _poll(_daemon(request), flow))
    return _json(doc, status)


async def _poll(daemon: DaemonView, flow: str) -> tuple[int, dict[str, Any]]:
    """Ask a running flow's source to list (on the daemon loop); the HTTP status and answer."""
    entry = daemon.flows.get(flow)
    if entry is None:
        return 409, {"error": f"flow {flow} is not running (disabled, or it could not start: see /status)"}
    if not entry[0].poll_now():
        return 409, {"error": f"flow {flow} reads from a broker: messages arrive as they are sent, there is no poll"}
    return 202, {"flow": flow, "poll": "requested"}


def add_ledger_routes(app: web.Application) -> None:
    """Register the ledger routes and the poll on demand."""
    app.router.add_get("/flows/{flow}/items", list_items)
    app.router.add_post("/flows/{flow}/items/{id}/retry", retry_item)
    app.router.add_post("/flows/{flow}/items/{id}/forget", forget_item)
    app.router.add_post("/flows/{flow}/poll", poll_flow)
