"""The one place retries and backoff live.

Connectors classify failures (``Transient``, ``RetryAfter(seconds)``, ``Permanent``) and never
sleep to retry. Two loops here do the waiting, both through :func:`retry_pause`, so every retry is
logged and counted the same way:

- :func:`supervise` runs a coroutine (a flow's source) until it returns or is cancelled: after
  an error it records it on the status board, waits, and runs it again (not once its flow stops).
- :func:`retrying` repeats one operation a bounded number of times (a delivery, the resume of
  a download, the tries of one connect, a state write that lost a lock race); the caller says
  which errors are worth another try and logs each in its own words.

Each wait comes from a :class:`Backoff`: exponential with jitter, capped; a ``Retry-After``
is honoured; a permanent error (auth, host key) waits long, because hammering a server with a
wrong password gets accounts locked.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from conveyor.errors import ConveyorError, Permanent, RetryAfter, Transient
from conveyor.redact import redact

if TYPE_CHECKING:
    from conveyor.config.schema import RetryConfig
    from conveyor.stopping import StopSignal

log = logging.getLogger("conveyor.supervisor")
T = TypeVar("T")

PERMANENT_BACKOFF = 300.0
"""Wait after a permanent error (auth, host key) before trying again: long, so nobody gets locked out."""


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter, capped."""

    initial: float = 1.0
    maximum: float = 300.0
    factor: float = 2.0
    jitter: float = 0.5
    """Share of each wait drawn at random: the wait for a nominal ``d`` is in [d*(1-jitter), d]."""

    @classmethod
    def from_config(cls, retry: RetryConfig) -> Backoff:
        """A flow's delivery backoff from its ``retry:`` settings (``backoff: 0`` waits 0.1 s)."""
        return cls(retry.backoff or 0.1, retry.max_backoff)

    def delay(self, attempt: int) -> float:
        """The wait before retry number ``attempt`` (1-based), jittered."""
        try:
            d = min(self.maximum, self.initial * self.factor ** max(0, attempt - 1))
        except OverflowError:
            # 2.0 ** 1024 overflows a float: a retry policy with attempts in the thousands must
            # keep waiting the longest delay, not crash the delivery or the source's supervisor.
            d = self.maximum
        return d * (1 - self.jitter) + random.random() * d * self.jitter

    def after(self, error: BaseException, attempt: int) -> float:
        """The wait after ``error`` ended try ``attempt``: at least a ``Retry-After``'s delay,
        and long for a permanent error (a minute after the first, then the longest)."""
        if isinstance(error, RetryAfter):
            return max(error.delay, self.delay(attempt))
        if isinstance(error, Permanent):
            return max(PERMANENT_BACKOFF, self.maximum) if attempt > 1 else min(PERMANENT_BACKOFF, 60.0)
        return self.delay(attempt)


SOURCE_BACKOFF = Backoff(1.0, 300.0)
"""Between restarts of a flow's source."""
RESUME_BACKOFF = Backoff(0.5, 10.0)
"""Between resumes of one interrupted download."""
CONNECT_BACKOFF = Backoff(0.5, 0.5, jitter=0.0)
"""Between the ``max_connection_attempts`` tries of one connect: a short fixed pause."""
CONFLICT_BACKOFF = Backoff(0.01, 0.04, jitter=0.0)
"""Between tries of a state write that lost a lock race to another replica."""

retries: Counter[str] = Counter()
"""Waits before another try so far, by what was retried ("delivery", "download", "connect", ...)."""


async def retry_pause(what: str, delay: float) -> None:
    """Wait ``delay`` seconds before another try of ``what``: the one sleep of every retry."""
    retries[what] += 1
    await asyncio.sleep(delay)


def _transient(e: Exception) -> bool:
    return isinstance(e, Transient)


async def retrying(
    op: Callable[[], Awaitable[T]],
    backoff: Backoff,
    *,
    attempts: int,
    what: str,
    retry_if: Callable[[Exception], bool] = _transient,
    on_retry: Callable[[Exception, int, float], None] | None = None,
) -> T:
    """Run ``op`` up to ``attempts`` times (the first included) and return its result.

    After a failure that ``retry_if`` accepts (by default ``Transient``), ``on_retry(error,
    attempt, delay)`` logs it in the caller's words, then the wait from ``backoff`` passes. The
    error of the last try, or one not worth retrying, propagates unchanged.
    """
    if attempts < 1:
        raise ValueError(f"{what}: attempts must be at least 1, not {attempts}")
    attempt = 1
    while True:
        try:
            return await op()
        except Exception as e:
            if attempt >= attempts or not retry_if(e):
                raise
            delay = backoff.after(e, attempt)
            if on_retry is not None:
                on_retry(e, attempt, delay)
            log.debug(
                "%s: try %d of %d failed (%s); again in %.2fs",
                what,
                attempt,
                attempts,
                redact(str(e) or type(e).__name__),
                delay,
            )
        await retry_pause(what, delay)
        attempt += 1


async def supervise(
    name: str,
    run: Callable[[], Awaitable[None]],
    *,
    backoff: Backoff,
    on_error: Callable[[BaseException, float], None],
    on_recover: Callable[[], None] | None = None,
    healthy_after: float = 30.0,
    log_extra: dict[str, str] | None = None,
    stop: StopSignal | None = None,
) -> None:
    """Run ``run`` until it returns, restarting it after errors with backoff.

    ``on_error(error, delay)`` records each failure. A run that lasted ``healthy_after``
    seconds resets the backoff, so one blip after a day of service retries in a second.
    Once ``stop`` is set, an error ends the loop instead of a restart (the flow is stopping).
    """
    attempt = 0
    loop = asyncio.get_running_loop()
    while True:
        started = loop.time()
        try:
            await run()
            return
        except asyncio.CancelledError:
            raise
        except Exception as e:
            _raise_if_cancelling(e)
            if stop is not None and stop.is_set():
                log.info("%s: ended while stopping: %s", name, redact(str(e) or type(e).__name__), extra=log_extra)
                return
            if loop.time() - started >= healthy_after:
                attempt = 0
            attempt += 1
            delay = backoff.after(e, attempt)
            if not isinstance(e, (ConveyorError, OSError)):
                log.error("%s: unexpected error, restarting in %.1fs", name, delay, exc_info=True, extra=log_extra)
            else:
                log.warning("%s: %s; retrying in %.1fs", name, redact(str(e)), delay, extra=log_extra)
            on_error(e, delay)
            await retry_pause("restart", delay)
            if on_recover is not None:
                on_recover()


def _raise_if_cancelling(e: Exception) -> None:
    """Honour a cancellation that ``run`` turned into an ordinary error.

    A library (or a careless ``except BaseException``) can catch the CancelledError that stops
    a flow and raise something else instead. Retrying would then keep the flow alive after
    SIGTERM until systemd kills it. The task still counts the request (``cancelling()``), so
    the supervisor re-raises it.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError from e
