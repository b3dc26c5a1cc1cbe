"""A worker thread for small blocking calls, fed once per event-loop turn.

``asyncio.to_thread`` costs two thread wake-ups per call (the pool's queue, then the
event loop's self-pipe), and each woken thread contends with the loop for the GIL. A
local folder flow moving thousands of small files makes several such calls per file
(read, then delete or move). Here the calls made in one loop turn go to the thread in one
hand-over, run one after another, and come back in one wake-up of the loop.

Only for calls that take little time (a read of a small file, an unlink, a rename): they
run in order on one thread, so a slow one delays the ones queued behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
_Call = tuple[Callable[[], Any], asyncio.Future[Any]]


class BatchedThread:
    """Runs blocking callables on one dedicated thread, batched per event-loop turn."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._calls: queue.SimpleQueue[list[_Call] | None] = queue.SimpleQueue()
        self._tick: list[_Call] = []
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def run(self, fn: Callable[[], T]) -> T:
        """``fn()`` on the worker thread; its result or exception."""
        loop = asyncio.get_running_loop()
        if self._thread is None or self._loop is not loop or not self._thread.is_alive():
            self._loop = loop
            self._thread = threading.Thread(target=self._work, args=(loop,), name=self.name, daemon=True)
            self._thread.start()
        fut: asyncio.Future[T] = loop.create_future()
        if not self._tick:
            loop.call_soon(self._hand_over)
        self._tick.append((fn, fut))
        return await fut

    def _hand_over(self) -> None:
        calls, self._tick = self._tick, []
        if calls:
            self._calls.put(calls)

    def close(self) -> None:
        """Let the thread finish what is queued, then end."""
        if self._thread is not None:
            self._hand_over()
            self._calls.put(None)
            self._thread = None

    def _work(self, loop: asyncio.AbstractEventLoop) -> None:
        while True:
            calls = self._calls.get()
            if calls is None:
                return
            while True:  # everything queued meanwhile joins this round
                try:
                    more = self._calls.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._calls.put(None)
                    break
                calls.extend(more)
            results: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
            for fn, fut in calls:
                try:
                    results.append((fut, fn(), None))
                except BaseException as e:  # handed to the caller
                    results.append((fut, None, e))
            with contextlib.suppress(RuntimeError):  # the loop closed under us: nobody waits
                loop.call_soon_threadsafe(resolve_all, results)


def resolve_all(results: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    """On the loop: settle each future with its value or exception (skipping cancelled ones)."""
    for fut, value, exc in results:
        if fut.done():
            continue
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(value)
