"""Inactivity limits for many concurrent requests, watched by one periodic check.

``asyncio.timeout`` arms a timer per request and re-arms it at each sign of progress, a
cost the event loop pays again and again at thousands of small POSTs a second. Here each
request holds a :class:`Guard` whose deadline is a plain float that progress moves forward,
and one task per :class:`Watchdog` looks at them a few times per limit. A request without
progress for ``limit`` seconds is aborted within ``limit + limit / 10`` (at most one second
late): :meth:`Guard.run` then raises TimeoutError, as ``asyncio.timeout`` does, while a
cancellation from anyone else stays one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any, TypeVar

from conveyor.stopping import Abortable, Aborted

T = TypeVar("T")


class Guard(Abortable[Any]):
    """One request's deadline. Create it with :meth:`Watchdog.start`; run the request with :meth:`run`."""

    __slots__ = ("_loop", "deadline", "limit")

    def __init__(self, loop: asyncio.AbstractEventLoop, limit: float) -> None:
        super().__init__()
        self._loop = loop
        self.limit = limit
        self.deadline = loop.time() + limit

    def touch(self) -> None:
        """Progress: the limit counts again from now."""
        self.deadline = self._loop.time() + self.limit

    async def run(self, work: Coroutine[Any, Any, T]) -> T:
        """Run the request (in a task of its own, which the watchdog ends when it stalls);
        TimeoutError when it did."""
        try:
            result: T = await super().run(work)
        except Aborted:
            raise TimeoutError from None
        return result


class Watchdog:
    """The guards of one limit; a task checks them while any is live, and ends when none is."""

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.tick = min(1.0, limit / 10)
        self._live: set[Guard] = set()
        self._checker: asyncio.Task[None] | None = None

    def start(self) -> Guard:
        """A guard whose deadline is ``limit`` from now."""
        guard = Guard(asyncio.get_running_loop(), self.limit)
        self._live.add(guard)
        if self._checker is None:
            self._checker = asyncio.create_task(self._check(), name="conveyor inactivity watchdog")
        return guard

    def stop(self, guard: Guard) -> None:
        """The request ended (whichever way): stop watching it."""
        self._live.discard(guard)

    async def _check(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._live:
                await asyncio.sleep(self.tick)
                now = loop.time()
                for guard in [g for g in self._live if not g.aborted and g.deadline <= now]:
                    guard.abort()
        finally:
            self._checker = None

    async def close(self) -> None:
        """Stop the checking task (the guards' requests are their own callers' to end)."""
        checker, self._checker = self._checker, None
        if checker is not None:
            checker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await checker
