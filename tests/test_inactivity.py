"""The inactivity watchdog behind the http target's ``timeout``: limits, progress, and
cancellations that are not its own."""

from __future__ import annotations

import asyncio
import time

import pytest

from conveyor.targets.http.inactivity import Watchdog
from tests.harness import wait_for


async def guarded(w: Watchdog, work: float, touch_every: float | None = None) -> str:
    """``work`` seconds under a guard, touching it every ``touch_every``; how it ended."""
    guard = w.start()

    async def request() -> str:
        end = time.monotonic() + work
        while (left := end - time.monotonic()) > 0:
            await asyncio.sleep(min(left, touch_every or left))
            guard.touch()
        return "done"

    try:
        return await guard.run(request())
    except TimeoutError:
        return "timeout"
    finally:
        w.stop(guard)


async def test_limit_progress_and_many_at_once() -> None:
    w = Watchdog(0.3)
    started = time.monotonic()
    results = await asyncio.gather(
        guarded(w, 2.0), guarded(w, 0.1), guarded(w, 0.9, touch_every=0.1), *(guarded(w, 5.0) for _ in range(50))
    )
    took = time.monotonic() - started
    assert results[:3] == ["timeout", "done", "done"]  # progress keeps a long request alive
    assert set(results[3:]) == {"timeout"}
    assert 0.85 < took < 1.3  # the slowest finisher, not 5 s; the stalled ones at 0.3-0.33 s
    await wait_for(lambda: w._checker is None, 5)  # nothing live: the checking task ended
    assert asyncio.current_task() is not None and asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_timeout_fires_within_a_tick_of_the_limit() -> None:
    w = Watchdog(0.5)
    started = time.monotonic()
    assert await guarded(w, 3.0) == "timeout"
    assert 0.5 <= time.monotonic() - started < 0.5 + w.tick + 0.15


async def test_a_cancel_from_outside_stays_a_cancel() -> None:
    w = Watchdog(0.3)
    task = asyncio.create_task(guarded(w, 3.0))
    await wait_for(lambda: w._live, 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # Both at once: the limit passes and the caller cancels in the same loop turn. Like
    # asyncio.timeout, the caller's cancellation wins.
    task = asyncio.create_task(guarded(w, 3.0))
    await wait_for(lambda: w._live, 5)
    (guard,) = w._live
    guard.abort()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await w.close()
