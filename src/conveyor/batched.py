"""Handing work from the event loop to a worker thread, once per event-loop turn.

``asyncio.to_thread`` or a plain queue costs a thread wake-up per call, and each woken
thread contends with the loop for the GIL. A :class:`Handoff` gathers the jobs submitted
during one loop turn and passes them over in a single put at its end; the worker takes
everything queued so far in one go. Three workers use it: the SQLite state store (one
transaction per batch: group commit), the directory target's writer (one sync per batch),
and :class:`BatchedThread`, for small blocking calls of the local folder instance.
:class:`ThreadCalls` keeps what a worker thread still uses open until the thread is done with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar, TypeVarTuple

T = TypeVar("T")
J = TypeVar("J")
Ts = TypeVarTuple("Ts")
_Call = tuple[Callable[[], Any], asyncio.Future[Any]]


class Handoff(Generic[J]):
    """Jobs from one event loop to one worker thread, sent once per loop turn."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queue: queue.SimpleQueue[list[J] | None] = queue.SimpleQueue()
        self._tick: list[J] = []
        """Jobs of this loop turn, not yet sent."""

    def put(self, job: J) -> None:
        """On the loop: queue ``job``; it is sent with the rest of this turn's at the turn's end."""
        if not self._tick:
            self._loop.call_soon(self.flush)
        self._tick.append(job)

    def flush(self) -> None:
        """On the loop: send what this turn queued (one put, one wake-up of the worker)."""
        jobs, self._tick = self._tick, []
        if jobs:
            self._queue.put(jobs)

    def close(self) -> None:
        """On the loop: send what is queued, then tell the worker to stop after it."""
        self.flush()
        self._queue.put(None)

    def take(self, *, block: bool = True) -> tuple[list[J], bool]:
        """On the worker: every job sent so far (waiting for some when ``block``), and whether
        :meth:`close` came; the jobs returned with True are the last ones."""
        jobs: list[J] = []
        if block:
            first = self._queue.get()
            if first is None:
                return jobs, True
            jobs.extend(first)
        while True:
            try:
                more = self._queue.get_nowait()
            except queue.Empty:
                return jobs, False
            if more is None:
                return jobs, True
            jobs.extend(more)


class Worker(Generic[J]):
    """A daemon thread running ``work(handoff, loop)``, started on the first job submitted in
    an event loop, and started afresh (with its own handoff) if that loop changed or it died."""

    def __init__(self, name: str, work: Callable[[Handoff[J], asyncio.AbstractEventLoop], None]) -> None:
        self.name = name
        self._work = work
        self._handoff: Handoff[J] | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def submit(self, job: J) -> None:
        """On the running loop: hand ``job`` to the thread."""
        loop = asyncio.get_running_loop()
        if self._handoff is None or self._loop is not loop or self._thread is None or not self._thread.is_alive():
            if self._handoff is not None:
                self._handoff.close()  # a thread of an earlier loop stops after its queue
            self._loop = loop
            self._handoff = Handoff(loop)
            self._thread = threading.Thread(target=self._work, args=(self._handoff, loop), name=self.name, daemon=True)
            self._thread.start()
        self._handoff.put(job)

    def close(self) -> None:
        """Let the thread finish what is queued, then end."""
        if self._handoff is not None:
            self._handoff.close()
            self._handoff = None
            self._thread = None


class BatchedThread:
    """Runs small blocking callables on one dedicated thread, in order, batched per loop turn.

    Only for calls that take little time (a read of a small file, an unlink, a rename): they
    run one after another, so a slow one delays the ones queued behind it.
    """

    def __init__(self, name: str) -> None:
        self._worker: Worker[_Call] = Worker(name, _run_calls)

    async def run(self, fn: Callable[[], T]) -> T:
        """``fn()`` on the worker thread; its result or exception."""
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._worker.submit((fn, fut))
        return await fut

    def close(self) -> None:
        """Let the thread finish what is queued, then end."""
        self._worker.close()


def _run_calls(handoff: Handoff[_Call], loop: asyncio.AbstractEventLoop) -> None:
    stop = False
    while not stop:
        calls, stop = handoff.take()
        results: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        for fn, fut in calls:
            try:
                results.append((fut, fn(), None))
            except BaseException as e:  # handed to the caller
                results.append((fut, None, e))
        if results:
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


class ThreadCalls:
    """Blocking calls, one at a time, on worker threads that use something the event loop
    owns (an ``os.scandir`` iterator, an open file), and its cleanup, run only once no call
    is under way.

    Cancelling a task that awaits a thread does not stop the thread. Closing what it reads
    as the task unwinds would free it under the thread (a scandir iterator's ``DIR *``: the
    process dies with SIGSEGV). Here a cancelled wait leaves the call running, and
    :meth:`after` defers the cleanup until that call has returned.
    """

    def __init__(self) -> None:
        self._busy: asyncio.Future[Any] | None = None

    def start(self, fn: Callable[[*Ts], T], *args: *Ts) -> asyncio.Future[T]:
        """Start ``fn(*args)`` on a worker thread (the loop's default executor) now; its future.
        Await it through :func:`asyncio.shield`, so that a cancelled wait does not cancel it."""
        if self._busy is not None and not self._busy.done():
            raise RuntimeError("a call is still under way")
        busy = self._busy = asyncio.get_running_loop().run_in_executor(None, fn, *args)
        return busy

    async def run(self, fn: Callable[[*Ts], T], *args: *Ts) -> T:
        """``fn(*args)`` on a worker thread; its result."""
        return await asyncio.shield(self.start(fn, *args))

    def after(self, cleanup: Callable[[], object]) -> None:
        """Run ``cleanup`` on the loop now, or as soon as the call under way has returned."""
        busy, self._busy = self._busy, None

        if busy is None or busy.done():
            if busy is not None and not busy.cancelled():
                busy.exception()  # nobody may await it any more: retrieved here, not reported as lost
            cleanup()
            return

        def done(f: asyncio.Future[Any]) -> None:
            if not f.cancelled():
                f.exception()
            try:
                cleanup()
            except Exception as e:  # nobody to raise it to: the task that asked is gone
                logging.getLogger("conveyor").warning("cleanup after a cancelled call failed: %s", e)

        busy.add_done_callback(done)
