"""The calendar rules the docs promise: cron times across clock changes, seconds-first schedules,
deadline windows, day lists."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from conveyor.clock import Deadlines, Schedule, parse_clock, parse_days, zone

LONDON = ZoneInfo("Europe/London")
UTC = dt.UTC


def times(expr: str, start: dt.datetime, n: int) -> list[str]:
    """The next ``n`` times of a London schedule after ``start``, as UTC clock strings."""
    s = Schedule(expr, LONDON)
    out, t = [], start.timestamp()
    for _ in range(n):
        t = s.next_after(t)
        out.append(dt.datetime.fromtimestamp(t, UTC).strftime("%m-%d %H:%M:%S"))
    return out


def test_a_time_the_clocks_skip_fires_once_at_the_end_of_the_gap() -> None:
    # 29 March 2026: London goes from 01:00 GMT to 02:00 BST; 01:30 does not exist that night.
    got = times("30 1 * * *", dt.datetime(2026, 3, 28, 12, 0, tzinfo=LONDON), 3)
    assert got == ["03-29 01:00:00", "03-30 00:30:00", "03-31 00:30:00"]  # 02:00 BST, then 01:30 BST


def test_times_in_the_hour_shown_twice_fire_twice() -> None:
    # 25 October 2026: London goes from 02:00 BST back to 01:00 GMT.
    got = times("*/30 * * * *", dt.datetime(2026, 10, 25, 0, 50, tzinfo=LONDON), 5)
    assert got == ["10-25 00:00:00", "10-25 00:30:00", "10-25 01:00:00", "10-25 01:30:00", "10-25 02:00:00"]


def test_six_fields_put_seconds_first() -> None:
    start = dt.datetime(2026, 12, 5, 10, 0, 0, tzinfo=LONDON)
    assert times("*/20 * * * * *", start, 3) == ["12-05 10:00:20", "12-05 10:00:40", "12-05 10:01:00"]
    assert times("0 */5 * * * *", start, 2) == times("*/5 * * * *", start, 2)


def test_a_deadline_window_is_one_calendar_day_also_across_a_clock_change() -> None:
    d = Deadlines(parse_clock("06:00"), parse_days("MON-FRI"), LONDON)
    monday = d.at(dt.date(2026, 3, 30))  # the day after the clocks went forward
    assert dt.datetime.fromtimestamp(monday, UTC).hour == 5  # 06:00 BST
    opened = dt.datetime.fromtimestamp(d.window_opens(monday), LONDON)
    assert (opened.date(), opened.hour) == (dt.date(2026, 3, 29), 6)  # Sunday 06:00, 23 hours before
    saturday_noon = dt.datetime(2026, 4, 4, 12, tzinfo=LONDON).timestamp()
    assert dt.datetime.fromtimestamp(d.last(saturday_noon), LONDON).date() == dt.date(2026, 4, 3)  # type: ignore[arg-type]
    assert dt.datetime.fromtimestamp(d.next(saturday_noon), LONDON).date() == dt.date(2026, 4, 6)  # type: ignore[arg-type]


def test_a_deadline_the_clocks_skip_falls_an_hour_later_on_them() -> None:
    d = Deadlines(parse_clock("01:30"), parse_days("MON-SUN"), LONDON)
    skipped = dt.datetime.fromtimestamp(d.at(dt.date(2026, 3, 29)), LONDON)
    assert (skipped.hour, skipped.minute) == (2, 30)
    twice = d.at(dt.date(2026, 10, 25))
    assert dt.datetime.fromtimestamp(twice, UTC).hour == 0  # 01:30 BST, the first of the two


@pytest.mark.parametrize(
    ("given", "days"),
    [
        ("MON-FRI", {0, 1, 2, 3, 4}),
        ("MON-SUN", set(range(7))),
        ("FRI-MON", {4, 5, 6, 0}),
        ("sat,Sunday", {5, 6}),
        (["MON", "WED-FRI"], {0, 2, 3, 4}),
        ("TUE", {1}),
    ],
)
def test_day_lists(given: str | list[str], days: set[int]) -> None:
    assert parse_days(given) == days


def test_bad_names_say_what_is_accepted() -> None:
    with pytest.raises(ValueError, match="'Moon' is not a day"):
        parse_days("MON,Moon")
    with pytest.raises(ValueError, match="not a time of day"):
        parse_clock("6am")
    with pytest.raises(ValueError, match="unknown time zone 'Europe/Londn'"):
        zone("Europe/Londn")
