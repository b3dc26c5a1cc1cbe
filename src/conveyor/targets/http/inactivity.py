"""Inactivity limits for many concurrent requests, watched by one periodic check.

``asyncio.timeout`` arms a timer per request and re-arms it at each sign of progress, a
cost the event loop pays again and again at thousands of small POSTs a second. Here each
request holds a :class:`Guard` whose deadline is a plain float that progress moves forward,
and one task per :class:`Watchdog` looks at them a few times per limit. A request without
progress for ``limit`` seconds is cancelled within ``limit + limit / 10`` (at most one second
late) and :meth:`Guard.expired` turns that cancellation into a timeout, as ``asyncio.timeout``
does: a cancellation from anyone else stays one.
"""

from __future__ import annotations

import asyncio
import contextlib


class Guard:
    """One request's deadline. Create it with :meth:`Watchdog.start` on the request's task."""

    __slots__ = ("_cancelling", "_loop", "_task", "deadline", "fired", "limit")

    def __init__(self, loop: asyncio.AbstractEventLoop, task: asyncio.Task[object], limit: float) -> None:
        self._loop = loop
        self._task = task
        self._cancelling = task.cancelling()
        self.limit = limit
        self.deadline = loop.time() + limit
        self.fired = False
        """The watchdog cancelled the task for this guard."""

    def touch(self) -> None:
        """Progress: the limit counts again from now."""
        self.deadline = self._loop.time() + self.limit

    def expired(self) -> bool:
        """Call where the request ends with CancelledError: whether that was this guard's limit
        (the cancellation is then withdrawn) rather than a cancellation from outside."""
        if not self.fired:
            return False
        self.fired = False
        return self._task.uncancel() <= self._cancelling

    def _fire(self) -> None:
        self.fired = True
        self._task.cancel()


class Watchdog:
    """The guards of one limit; a task checks them while any is live, and ends when none is."""

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.tick = min(1.0, limit / 10)
        self._live: set[Guard] = set()
        self._checker: asyncio.Task[None] | None = None

    def start(self) -> Guard:
        """A guard for the current task, its deadline ``limit`` from now."""
        task = asyncio.current_task()
        assert task is not None, "a guard belongs to a task"
        guard = Guard(asyncio.get_running_loop(), task, self.limit)
        self._live.add(guard)
        if self._checker is None:
            self._checker = asyncio.create_task(self._check(), name="conveyor inactivity watchdog")
        return guard

    def stop(self, guard: Guard) -> None:
        """The request ended (whichever way): stop watching it. A cancellation this guard made
        and nobody consumed with :meth:`Guard.expired` is withdrawn, as asyncio.timeout does."""
        self._live.discard(guard)
        guard.expired()  # withdraws the guard's own unconsumed cancellation, if any

    async def _check(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._live:
                await asyncio.sleep(self.tick)
                now = loop.time()
                for guard in [g for g in self._live if not g.fired and g.deadline <= now]:
                    guard._fire()
        finally:
            self._checker = None

    async def close(self) -> None:
        """Stop the checking task (the guards' requests are their own callers' to end)."""
        checker, self._checker = self._checker, None
        if checker is not None:
            checker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await checker
