"""The supervisor: retries with backoff, and a stop that always stops (even when the supervised
code turned the cancellation into an ordinary error, as a library's ``except BaseException`` can)."""

from __future__ import annotations

import asyncio

import pytest

from conveyor.errors import Transient
from conveyor.supervisor import Backoff, supervise


async def test_transient_errors_are_retried_until_the_run_succeeds() -> None:
    calls: list[float] = []
    errors: list[BaseException] = []

    async def run() -> None:
        calls.append(asyncio.get_running_loop().time())
        if len(calls) < 3:
            raise Transient("server away", instance="x")

    await supervise("t", run, backoff=Backoff(0.01, 0.05), on_error=lambda e, d: errors.append(e))
    assert len(calls) == 3 and len(errors) == 2 and all(isinstance(e, Transient) for e in errors)


async def test_a_cancellation_turned_into_an_error_still_stops() -> None:
    started = asyncio.Event()
    calls = 0

    async def run() -> None:
        nonlocal calls
        calls += 1
        started.set()
        try:
            await asyncio.sleep(30)
        except BaseException as e:  # what pubsub's connect once did with the daemon's stop
            raise Transient(f"unexpected {type(e).__name__}", instance="gcp") from None

    task = asyncio.create_task(supervise("t", run, backoff=Backoff(0.01, 0.05), on_error=lambda e, d: None))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 2)
    assert calls == 1  # not retried
