"""Calendar rules of flows: time zones, cron schedules, and the deadlines of expected arrivals.

Everything here works on wall-clock time in a named zone (``zoneinfo``), so a schedule of
``0 6 * * *`` in ``Europe/London`` means 06:00 on the clocks there, winter and summer. croniter
is imported only when a config has a ``schedule``.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DAYS = ("MON", "TUE", "WED", "THU", "FRI", "SAT", "SUN")
"""Day names by ``date.weekday()``."""
_FULL = ("MONDAY", "TUESDAY", "WEDNESDAY", "THURSDAY", "FRIDAY", "SATURDAY", "SUNDAY")
_CLOCK = re.compile(r"^(\d{1,2}):(\d{2})(?::(\d{2}))?$")
UTC = ZoneInfo("UTC")


def zone(name: str) -> ZoneInfo:
    """The time zone of that IANA name (``Europe/London``, ``UTC``); ValueError naming it otherwise."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError("expected a time zone name such as Europe/London or UTC")
    try:
        return ZoneInfo(name.strip())
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r} (an IANA name such as Europe/London or UTC)") from None


def parse_clock(value: Any) -> dt.time:
    """``06:00`` or ``06:00:30`` (24-hour) as a time of day."""
    m = _CLOCK.match(value.strip()) if isinstance(value, str) else None
    if m is None:
        raise ValueError(f"{value!r} is not a time of day: write HH:MM (24-hour), e.g. 06:00")
    hour, minute, second = int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)
    if hour > 23 or minute > 59 or second > 59:
        raise ValueError(f"{value!r} is not a time of day: hours go to 23, minutes and seconds to 59")
    return dt.time(hour, minute, second)


def _day(name: str) -> int:
    n = name.strip().upper()
    for names in (DAYS, _FULL):
        if n in names:
            return names.index(n)
    raise ValueError(f"{name.strip()!r} is not a day: use MON TUE WED THU FRI SAT SUN")


def parse_days(value: Any) -> frozenset[int]:
    """Days of the week (0 = Monday) from ``MON-FRI``, ``SAT,SUN``, ``[MON, WED-FRI]``; a range
    may wrap (``FRI-MON``), and ``MON-SUN`` is every day."""
    parts: Iterable[Any]
    if isinstance(value, str):
        parts = value.split(",")
    elif isinstance(value, (list, tuple)):
        parts = [p for item in value for p in (item.split(",") if isinstance(item, str) else [item])]
    else:
        raise ValueError("expected day names, ranges or a list of them, e.g. MON-FRI")
    days: set[int] = set()
    for part in parts:
        if not isinstance(part, str) or not part.strip():
            raise ValueError("expected day names, ranges or a list of them, e.g. MON-FRI")
        first, sep, last = part.partition("-")
        start = _day(first)
        end = _day(last) if sep else start
        days.update((start + i) % 7 for i in range((end - start) % 7 + 1))
    if not days:
        raise ValueError("expected day names, ranges or a list of them, e.g. MON-FRI")
    return frozenset(days)


def cron_fields(expr: str) -> int:
    """Check a cron expression: 5 fields (minute hour day month weekday), 6 with seconds
    first, or an ``@daily``-style nickname; its field count, or ValueError with croniter's reason."""
    try:
        from croniter import CroniterBadDateError, croniter
    except ImportError as e:
        # An incomplete install: one line naming the key, as for a connector's missing library.
        raise ValueError(
            f"a schedule needs the Python module '{e.name or 'croniter'}', which is not installed: "
            "install conveyor with its dependencies (pip install conveyor; not --no-deps)"
        ) from None

    if not isinstance(expr, str) or not expr.strip():
        raise ValueError("expected a cron expression such as '*/5 8-18 * * MON-FRI'")
    fields = len(expr.split())
    if not expr.strip().startswith("@") and fields not in (5, 6):
        raise ValueError(
            f"{expr!r} has {fields} fields: a schedule has 5 (minute hour day month weekday) or 6 (second first)"
        )
    try:
        it = croniter(expr, dt.datetime(2000, 1, 1, tzinfo=UTC), second_at_beginning=fields == 6)
    except (ValueError, KeyError) as e:
        raise ValueError(f"not a valid cron expression: {e}") from None
    try:
        it.get_next(dt.datetime)
    except CroniterBadDateError:
        raise ValueError(f"{expr!r} never comes (no such date, like 30 February)") from None
    return fields


class Schedule:
    """A cron expression's times in one time zone."""

    def __init__(self, expr: str, tz: ZoneInfo) -> None:
        self.expr = expr
        self.tz = tz
        self._seconds = cron_fields(expr) == 6

    def next_after(self, t: float) -> float:
        """The first time of the schedule after ``t`` (epoch seconds)."""
        from croniter import croniter

        it = croniter(self.expr, dt.datetime.fromtimestamp(t, self.tz), second_at_beginning=self._seconds)
        nxt: dt.datetime = it.get_next(dt.datetime)
        return nxt.timestamp()


class Deadlines:
    """The deadlines of an expectation: ``by`` on each of ``days``, on the clocks of ``tz``."""

    def __init__(self, by: dt.time, days: frozenset[int], tz: ZoneInfo) -> None:
        self.by = by
        self.days = days
        self.tz = tz

    def at(self, day: dt.date) -> float:
        """The deadline on ``day`` (epoch seconds). A time the clocks skip that day (spring
        forward) falls an hour later on them; one they show twice (autumn) is the first."""
        return dt.datetime.combine(day, self.by, tzinfo=self.tz).timestamp()

    def window_opens(self, deadline: float) -> float:
        """When the window of a deadline opens: the same clock time the calendar day before."""
        day = dt.datetime.fromtimestamp(deadline, self.tz).date()
        return self.at(day - dt.timedelta(days=1))

    def last(self, t: float) -> float | None:
        """The latest deadline at or before ``t``, at most a week back (None with no days)."""
        today = dt.datetime.fromtimestamp(t, self.tz).date()
        for back in range(8):
            day = today - dt.timedelta(days=back)
            if day.weekday() in self.days and self.at(day) <= t:
                return self.at(day)
        return None

    def next(self, t: float) -> float | None:
        """The first deadline after ``t`` (None with no days)."""
        today = dt.datetime.fromtimestamp(t, self.tz).date()
        for ahead in range(9):
            day = today + dt.timedelta(days=ahead)
            if day.weekday() in self.days and self.at(day) > t:
                return self.at(day)
        return None
