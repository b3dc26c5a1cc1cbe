"""The one place retries and backoff live.

A supervised task runs a coroutine; when it raises, the supervisor classifies the error
(Transient: back off exponentially with jitter, capped; Permanent: back off long, because
hammering a server with a wrong password gets accounts locked), records it on the status
board, waits, and runs it again — forever, until cancelled. Nothing else in conveyor sleeps
to retry.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from conveyor.errors import Permanent, RetryAfter
from conveyor.redact import redact

log = logging.getLogger("conveyor.supervisor")


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter, capped."""

    initial: float = 1.0
    maximum: float = 300.0
    factor: float = 2.0

    def delay(self, attempt: int) -> float:
        """The wait before retry number ``attempt`` (1-based): random in [d/2, d]."""
        try:
            d = min(self.maximum, self.initial * self.factor ** max(0, attempt - 1))
        except OverflowError:
            # 2.0 ** 1024 overflows a float: a flow with a patient retry policy (attempts in the
            # thousands) used to crash its delivery here after ~1025 tries, leaving the item in
            # flight and its message unacked; a source failing that often killed its supervisor.
            d = self.maximum
        return d / 2 + random.random() * d / 2


PERMANENT_BACKOFF = 300.0
"""Wait after a permanent error (auth, host key) before trying again: long, so nobody gets locked out."""


async def supervise(
    name: str,
    run: Callable[[], Awaitable[None]],
    *,
    backoff: Backoff,
    on_error: Callable[[BaseException, float], None],
    on_recover: Callable[[], None] | None = None,
    healthy_after: float = 30.0,
    log_extra: dict[str, str] | None = None,
) -> None:
    """Run ``run`` forever, restarting it after errors with backoff.

    ``on_error(error, delay)`` records each failure. A run that lasted ``healthy_after``
    seconds resets the backoff, so one blip after a day of service retries in a second.
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
            if loop.time() - started >= healthy_after:
                attempt = 0
            attempt += 1
            if isinstance(e, RetryAfter):
                delay = max(e.delay, backoff.delay(attempt))
            elif isinstance(e, Permanent):
                delay = max(PERMANENT_BACKOFF, backoff.maximum) if attempt > 1 else min(PERMANENT_BACKOFF, 60.0)
            else:
                delay = backoff.delay(attempt)
            if not isinstance(e, (Permanent, OSError)) and not _is_conveyor(e):
                log.error("%s: unexpected error, restarting in %.1fs", name, delay, exc_info=True, extra=log_extra)
            else:
                log.warning("%s: %s; retrying in %.1fs", name, redact(str(e)), delay, extra=log_extra)
            on_error(e, delay)
            await asyncio.sleep(delay)
            if on_recover is not None:
                on_recover()


def _raise_if_cancelling(e: Exception) -> None:
    """Honour a cancellation that ``run`` turned into an ordinary error.

    A library (or a careless ``except BaseException``) can catch the CancelledError that stops
    a flow and raise something else instead. Retrying would then keep the flow alive after
    SIGTERM until systemd's kill: once a daemon hung 30 s that way. The task still counts the
    request (``cancelling()``), so the supervisor re-raises it.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError from e


def _is_conveyor(e: BaseException) -> bool:
    from conveyor.errors import ConveyorError

    return isinstance(e, ConveyorError)
