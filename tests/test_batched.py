"""The batched worker thread: calls of one loop turn run in order on one thread; errors reach their caller."""

from __future__ import annotations

import asyncio
import functools
import threading

import pytest

from conveyor.batched import BatchedThread
from tests.harness import wait_for


async def test_calls_run_in_order_on_one_thread_and_errors_reach_their_caller() -> None:
    worker = BatchedThread("test-io")
    seen: list[int] = []
    threads: set[int] = set()

    def call(i: int) -> int:
        threads.add(threading.get_ident())
        seen.append(i)
        if i == 3:
            raise ValueError("three")
        return i * 10

    results = await asyncio.gather(*(worker.run(functools.partial(call, i)) for i in range(6)), return_exceptions=True)
    assert seen == list(range(6))
    assert threads and threading.get_ident() not in threads and len(threads) == 1
    assert results[:3] == [0, 10, 20] and results[4:] == [40, 50]
    assert isinstance(results[3], ValueError)
    worker.close()
    assert await worker.run(lambda: "again") == "again", "a closed worker starts a new thread on demand"
    worker.close()


async def test_a_cancelled_caller_does_not_break_the_batch() -> None:
    worker = BatchedThread("test-io")
    gate, started = threading.Event(), threading.Event()

    def hold() -> bool:
        started.set()
        return gate.wait(5)

    slow = asyncio.ensure_future(worker.run(hold))
    other = asyncio.ensure_future(worker.run(lambda: "ok"))
    await wait_for(started.is_set, 5)
    slow.cancel()
    gate.set()
    assert await other == "ok"
    with pytest.raises(asyncio.CancelledError):
        await slow
    worker.close()
