"""Timestamps as payload metadata carries them: RFC 3339, UTC, milliseconds."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime


def utc_iso(ts: float | datetime | None = None) -> str:
    """An RFC 3339 UTC timestamp with milliseconds, as the metadata carries them."""
    if isinstance(ts, datetime):
        if ts.tzinfo is None:  # naive: local time, as astimezone() takes it
            return ts.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        ts = ts.timestamp()  # exact to well under a microsecond, which the rounding below restores
    # By hand, reusing the seconds' text: this runs twice per file on the event loop. The rounding
    # is datetime's (microseconds, half to even), then truncated to milliseconds as isoformat does.
    frac, whole = math.modf(time.time() if ts is None else ts)
    sec, us = int(whole), round(frac * 1e6)
    if us >= 1_000_000:
        sec, us = sec + 1, us - 1_000_000
    elif us < 0:
        sec, us = sec - 1, us + 1_000_000
    text = _seconds.get(sec)
    if text is None:
        if len(_seconds) >= 512:
            _seconds.clear()
        text = _seconds[sec] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
    return f"{text}.{us // 1000:03d}Z"


_seconds: dict[int, str] = {}
"""Whole seconds formatted by utc_iso lately: files of one folder share a few mtimes' seconds,
and received_at stays on the current one."""
