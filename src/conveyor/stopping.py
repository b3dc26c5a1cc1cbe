"""Two different signals: stop taking work (soft), and abort work now (hard).

A flow's soft stop is a :class:`StopSignal` its runner owns and hands to the source: the
source waits on it beside its intake, takes nothing new once it is set, lets what it handed
over settle and returns. The hard stop is cancellation, sent once.

:class:`Abortable` runs one piece of work (an HTTP request, a publish) in a child task that
another party (a watchdog, a channel-close callback) may abort. Only the child is cancelled,
so the caller's own task never receives a cancellation meant as a signal, nothing is withdrawn
with ``uncancel()``, and a cancellation of the caller stays a cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar

log = logging.getLogger("conveyor.stopping")
T = TypeVar("T")


class StopSignal:
    """Set once when a flow stops taking work; never cleared (a flow that starts again gets a new one)."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self._callbacks: list[Callable[[], None]] = []

    def is_set(self) -> bool:
        """Whether the stop was requested."""
        return self._event.is_set()

    def set(self) -> None:
        """Request the stop: wake every waiter and run every callback (once)."""
        if self._event.is_set():
            return
        self._event.set()
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            try:
                callback()
            except Exception:  # one source's trouble must not keep the others from stopping
                log.exception("stop callback failed")

    def on_set(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` (synchronously, on the loop) when the stop is requested, or now if it
        was already; returns a function that withdraws it. For a source whose intake is a queue:
        the callback puts a marker there, so the consumer needs no second waiter per item."""
        if self.is_set():
            callback()
            return _nothing
        self._callbacks.append(callback)

        def withdraw() -> None:
            with contextlib.suppress(ValueError):
                self._callbacks.remove(callback)

        return withdraw

    async def wait(self, timeout: float | None = None) -> bool:  # noqa: ASYNC109 (a pause, not a cancel scope)
        """Wait until the stop is requested or ``timeout`` seconds passed; whether it was requested."""
        if not self._event.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._event.wait(), timeout)
        return self._event.is_set()


def _nothing() -> None:
    """Nothing to withdraw."""


class Aborted(Exception):
    """The work was ended by :meth:`Abortable.abort`."""


class Abortable(Generic[T]):
    """One piece of work that someone other than its caller may end."""

    __slots__ = ("_child", "aborted")

    def __init__(self) -> None:
        self._child: asyncio.Task[T] | None = None
        self.aborted = False
        """:meth:`abort` was called."""

    def abort(self) -> None:
        """End the work now: :meth:`run` raises :class:`Aborted` (unless the work had finished)."""
        self.aborted = True
        if self._child is not None:
            self._child.cancel()

    async def run(self, work: Coroutine[Any, Any, T]) -> T:
        """Run ``work`` to its end and return its result; :class:`Aborted` if it was aborted.

        A cancellation of the caller reaches the work too (awaiting a task forwards it) and is
        raised as one, even when an abort came in the same loop turn, as ``asyncio.timeout`` does.
        """
        task = asyncio.current_task()
        assert task is not None, "work is run from a task"
        before = task.cancelling()
        if self.aborted:
            work.close()
            raise Aborted
        self._child = child = asyncio.create_task(work)
        try:
            return await child
        except asyncio.CancelledError:
            if self.aborted and child.cancelled() and task.cancelling() == before:
                raise Aborted from None
            raise
        finally:
            self._child = None
