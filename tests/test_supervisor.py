"""The supervisor: retries with backoff, and a stop that always stops (even when the supervised
code turned the cancellation into an ordinary error, as a library's ``except BaseException`` can);
the one retry helper that bounded retries inside an operation go through."""

from __future__ import annotations

import asyncio

import pytest

from conveyor.config.schema import RetryConfig
from conveyor.errors import AuthError, RetryAfter, Transient
from conveyor.supervisor import PERMANENT_BACKOFF, Backoff, retries, retrying, supervise


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


async def test_retrying_waits_between_tries_and_counts_each_wait() -> None:
    calls = 0
    seen: list[tuple[str, int, float]] = []

    async def op() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise Transient(f"drop {calls}", instance="x")
        return "done"

    before = retries["test op"]
    got = await retrying(
        op, Backoff(0.01, 0.02), attempts=5, what="test op", on_retry=lambda e, n, d: seen.append((str(e), n, d))
    )
    assert got == "done" and calls == 3
    assert [(m, n) for m, n, _ in seen] == [("instance 'x': drop 1", 1), ("instance 'x': drop 2", 2)]
    assert all(0.005 <= d <= 0.02 for _, _, d in seen)
    assert retries["test op"] - before == 2


async def test_retrying_gives_up_after_the_last_try_and_at_once_on_other_errors() -> None:
    calls = 0

    async def flaky() -> None:
        nonlocal calls
        calls += 1
        raise Transient(f"drop {calls}")

    with pytest.raises(Transient, match="drop 3"):
        await retrying(flaky, Backoff(0.001, 0.001), attempts=3, what="test op")
    assert calls == 3

    calls = 0

    async def refused() -> None:
        nonlocal calls
        calls += 1
        raise AuthError("wrong password")

    before = retries["test op"]
    with pytest.raises(AuthError):
        await retrying(refused, Backoff(0.001, 0.001), attempts=3, what="test op")
    assert calls == 1 and retries["test op"] == before


async def test_retrying_honours_retry_after() -> None:
    delays: list[float] = []
    calls = 0

    async def op() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RetryAfter("busy", 0.05)

    loop = asyncio.get_running_loop()
    started = loop.time()
    await retrying(op, Backoff(0.001, 0.001), attempts=2, what="test op", on_retry=lambda e, n, d: delays.append(d))
    assert delays == [0.05] and loop.time() - started >= 0.05


def test_backoff_waits() -> None:
    b = Backoff(1.0, 8.0)
    assert all(b.delay(n) <= cap for n, cap in [(1, 1.0), (2, 2.0), (4, 8.0), (9, 8.0)])
    assert b.delay(3) >= 2.0  # half of the nominal 4 s at least: jitter takes up to half
    assert Backoff(0.5, 0.5, jitter=0.0).delay(7) == 0.5
    assert b.after(RetryAfter("busy", 30.0), 1) == 30.0
    # A wrong password: a minute after the first failure, then the long wait.
    assert b.after(AuthError("no"), 1) == 60.0 and b.after(AuthError("no"), 2) == PERMANENT_BACKOFF


def test_backoff_from_a_flows_retry_settings() -> None:
    assert Backoff.from_config(RetryConfig()) == Backoff(1.0, 300.0)
    assert Backoff.from_config(RetryConfig.model_validate({"backoff": "0s", "max_backoff": "2s"})) == Backoff(0.1, 2.0)
