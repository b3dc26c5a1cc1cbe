"""Expected arrivals: a flow's files must have arrived by a time of day, or conveyor says so.

Each deadline has a window: from the same clock time the calendar day before, up to the
deadline. At the deadline, the flow's ledger is asked how many items it first saw since the
window opened; fewer than ``min_files`` is a miss — an error line, ``/status``, the
``conveyor_flow_expectation_missed`` gauge at 1, and a POST to ``alert_url``. Files that come
later (counted from the same window opening) make it met again: an info line, the gauge at 0,
and a second POST. The ledger is what remembers the arrivals, so a daemon started after a
deadline checks that deadline at once and a restart forgets nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import logging
import time
from typing import Any

from conveyor.clock import Deadlines, parse_clock, parse_days, zone
from conveyor.config.schema import ExpectConfig
from conveyor.errors import Transient, describe
from conveyor.redact import redact
from conveyor.state.base import StateStore
from conveyor.status import StatusBoard
from conveyor.supervisor import Backoff, retrying

log = logging.getLogger("conveyor.expect")

TICK = 1.0
"""Seconds between looks at the flow's counters while a deadline is missed (a count of the
ledger follows only when they moved)."""
RECOUNT = 30.0
"""Seconds between counts of the ledger while missed even when this daemon's counters did not
move: another replica on a shared store may have taken the files."""
STARTUP_LOOKBACK = 86400.0
"""At start, a deadline that passed at most this long ago is checked at once."""
ALERT_ATTEMPTS = 4
ALERT_BACKOFF = Backoff(1.0, 10.0)
ALERT_TIMEOUT = 10.0


def _iso(t: float | None) -> str | None:
    return None if t is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


class ExpectationWatcher:
    """Watches one flow's deadlines (a task of the daemon beside the flow)."""

    def __init__(
        self, flow: str, expect: ExpectConfig, timezone: str | None, store: StateStore, status: StatusBoard
    ) -> None:
        self.flow = flow
        self.expect = expect
        tz = zone(expect.timezone or timezone or "UTC")
        self.tz_name = tz.key
        self.deadlines = Deadlines(parse_clock(expect.by), parse_days(expect.on), tz)
        self.store = store
        self.status = status
        self.state = "waiting"
        self.deadline: float | None = None
        """The deadline last checked."""
        self.opened: float | None = None
        self.arrived = 0
        self.missed_since: float | None = None
        self._alerts: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def run(self) -> None:
        """Check each deadline as it passes, until cancelled (alerts go out from a task of their own)."""
        sender = asyncio.create_task(self._send_alerts(), name=f"expect:{self.flow}:alerts")
        try:
            await self._watch()
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender

    async def _watch(self) -> None:
        now = time.time()
        last = self.deadlines.last(now)
        if last is not None and now - last <= STARTUP_LOOKBACK:
            await self._check_until_counted(last)
        else:
            self._publish()
        while True:
            nxt = self.deadlines.next(time.time())
            if nxt is None:  # no days (the config refuses that): nothing to watch
                return
            self._publish(nxt)
            await self._until(nxt)
            await self._check_until_counted(nxt)

    async def _check_until_counted(self, deadline: float) -> None:
        """Check a deadline; a check that failed (the store unreachable) is tried again, never ends the watch."""
        while True:
            try:
                await self._check(deadline)
                return
            except Exception as e:
                log.warning(
                    "expected arrivals: cannot count the ledger: %s; trying again in %.0fs",
                    redact(str(e)),
                    RECOUNT,
                    extra={"flow": self.flow},
                )
                await self._tick(RECOUNT)

    async def _until(self, t: float) -> None:
        """Wait for the wall clock to reach ``t``; while a deadline is missed, notice the files
        that arrive in the meantime."""
        seen = self._counters()
        counted = time.monotonic()
        while True:
            left = t - time.time()
            if left <= 0:
                return
            if self.state != "missed":
                await self._tick(min(left, 60.0))  # look at the clock again each minute: it may be set
                continue
            await self._tick(min(left, TICK))
            now = self._counters()
            if now != seen or time.monotonic() - counted >= RECOUNT:
                seen, counted = now, time.monotonic()
                try:
                    await self._recount()
                except Exception as e:
                    log.warning(
                        "expected arrivals: cannot count the ledger: %s", redact(str(e)), extra={"flow": self.flow}
                    )

    async def _tick(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def _counters(self) -> tuple[int, ...]:
        st = self.status.flows.get(self.flow)
        return (0,) if st is None else (st.in_flight, st.delivered, st.failed, st.skipped)

    async def _count(self) -> int:
        assert self.opened is not None
        return await self.store.arrivals(self.flow, self.opened, self.expect.min_files)

    async def _check(self, deadline: float) -> None:
        """The deadline passed: met or missed."""
        self.deadline = deadline
        self.opened = self.deadlines.window_opens(deadline)
        self.arrived = await self._count()
        if self.arrived >= self.expect.min_files:
            self.state, self.missed_since = "met", None
            log.info(
                "expected files arrived in time: %d of %d by %s",
                self.arrived,
                self.expect.min_files,
                self._local(deadline),
                extra={"flow": self.flow},
            )
            self._publish()
            return
        self.state, self.missed_since = "missed", time.time()
        log.error(
            "expected files missed: %d of %d arrived between %s and the deadline %s",
            self.arrived,
            self.expect.min_files,
            self._local(self.opened),
            self._local(deadline),
            extra={"flow": self.flow},
        )
        self._publish()
        self._alert("missed")

    async def _recount(self) -> None:
        """While missed: did the files come?"""
        self.arrived = await self._count()
        if self.arrived < self.expect.min_files:
            self._publish()
            return
        late = time.time() - (self.deadline or time.time())
        self.state, self.missed_since = "met", None
        log.info(
            "expected files arrived, %.0fs after the deadline %s: %d of %d",
            late,
            self._local(self.deadline),
            self.arrived,
            self.expect.min_files,
            extra={"flow": self.flow},
        )
        self._publish()
        self._alert("met")

    def _local(self, t: float | None) -> str:
        """A time as the partner's clocks show it."""
        if t is None:
            return "-"
        return dt.datetime.fromtimestamp(t, self.deadlines.tz).strftime("%Y-%m-%d %H:%M:%S %Z")

    def doc(self, next_deadline: float | None = None) -> dict[str, Any]:
        """The /status entry (and the alert's body, with ``event``)."""
        return {
            "state": self.state,
            "by": self.expect.by,
            "on": self.expect.on,
            "timezone": self.tz_name,
            "min_files": self.expect.min_files,
            "deadline": _iso(self.deadline),
            "window_opened": _iso(self.opened),
            "arrived": self.arrived,
            "missed_since": _iso(self.missed_since),
            "next_deadline": _iso(next_deadline),
        }

    def _publish(self, next_deadline: float | None = None) -> None:
        nxt = self.deadlines.next(time.time()) if next_deadline is None else next_deadline
        self.status.expectation(self.flow, self.doc(nxt), self.state == "missed")

    def _alert(self, event: str) -> None:
        if self.expect.alert_url:
            now = time.time()
            doc = self.doc(self.deadlines.next(now))
            self._alerts.put_nowait({"flow": self.flow, "event": event, **doc, "at": _iso(now)})

    async def _send_alerts(self) -> None:
        """POST each alert in turn (so ``met`` never overtakes ``missed``); a failure is logged, never raised."""
        import aiohttp

        url = self.expect.alert_url
        assert url is not None or self._alerts.empty()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=ALERT_TIMEOUT)) as session:

            async def post(doc: dict[str, Any]) -> None:
                assert url is not None
                try:
                    async with session.post(url, json=doc) as resp:
                        if resp.status >= 300:
                            raise Transient(f"the alert URL answered HTTP {resp.status}")
                except (aiohttp.ClientError, TimeoutError) as e:
                    raise Transient(f"cannot reach the alert URL: {describe(e)}") from None

            while True:
                doc = await self._alerts.get()
                try:
                    await retrying(functools.partial(post, doc), ALERT_BACKOFF, attempts=ALERT_ATTEMPTS, what="alert")
                    log.info("sent the %s alert", doc["event"], extra={"flow": self.flow})
                except Exception as e:
                    log.error(
                        "the %s alert was not sent after %d tries: %s",
                        doc["event"],
                        ALERT_ATTEMPTS,
                        redact(str(e)),
                        extra={"flow": self.flow},
                    )
