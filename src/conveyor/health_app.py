"""What the health server and its ledger routes share: the application keys, the view of the
daemon they read and JSON answers. Neither imports the daemon."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from aiohttp import web

from conveyor.redact import redact

if TYPE_CHECKING:
    from conveyor.config.schema import Config
    from conveyor.state.base import StateStore
    from conveyor.status import StatusBoard

T = TypeVar("T")


class FlowView(Protocol):
    """What the health server uses of one running flow."""

    @property
    def forgotten(self) -> Callable[[str], None]:
        """Tells the flow's source that the ledger forgot an item, so that it lists it afresh."""
        ...

    @property
    def poll_now(self) -> Callable[[], bool]:
        """Asks the flow's source to list at once; False when it does not poll."""
        ...


class DaemonView(Protocol):
    """What the health server and the ledger routes read of the daemon."""

    @property
    def config(self) -> Config:
        """The loaded config."""
        ...

    @property
    def owner(self) -> str:
        """This replica's name."""
        ...

    @property
    def status(self) -> StatusBoard:
        """The status board of flows and instances."""
        ...

    @property
    def store(self) -> StateStore:
        """The state store (its calls belong to the daemon's loop)."""
        ...

    @property
    def flows(self) -> Mapping[str, tuple[FlowView, asyncio.Task[None]]]:
        """Each running flow and its task."""
        ...


class DaemonLoop(Protocol):
    """The server's way onto the daemon's event loop, from its own thread."""

    async def on_daemon_loop(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the daemon's loop and wait for it."""
        ...


DAEMON_KEY: web.AppKey[DaemonView] = web.AppKey("daemon")
SERVER_KEY: web.AppKey[DaemonLoop] = web.AppKey("health")


def json_response(doc: Any, status: int = 200) -> web.Response:
    """A JSON answer; the text is redacted as a last guard, whatever fed the document."""
    return web.Response(
        text=redact(json.dumps(doc, ensure_ascii=False, default=str)), status=status, content_type="application/json"
    )
