"""How many connections one large download is read over, for the connectors that read files in
segments (sftp, ftp): ``streams`` when set, else chosen by size and by the server's round trip."""

from __future__ import annotations

import math
import time
from collections import deque
from typing import Any

from pydantic import Field

SEGMENT_FROM = 64 * 1024 * 1024
"""Files from this size are read over several connections when ``streams`` is unset."""
NEAR = 0.01
"""A server answering within this many seconds is near: one connection already outruns the CPU.
Well above loopback and LAN round trips, since one request timed on a busy machine can take a few ms."""
STREAM_RTT = 0.01
"""Round trip per connection when ``streams`` is unset: one connection carries about one window
per round trip (TCP's, 4 MiB with Linux's default buffers; an SSH channel's, 2 MiB for OpenSSH),
so a connection per 10 ms keeps some 200-400 MiB/s in flight whatever the distance."""
AUTO_STREAMS = 8
"""At most this many connections when ``streams`` is unset (and one per 32 MiB of file): few enough
to leave the server's other users their share."""


def streams_field(each: str, moved: str = "one large download is read over") -> Any:
    """The ``streams`` setting of a connector whose connections each do ``each``; ``moved`` says
    which transfers use it."""
    return Field(
        None,
        ge=1,
        le=16,
        description=f"connections {moved} at once, each {each} (at most "
        "max_connections); unset: by size and distance, 1 below 64 MiB or on a server under 10 ms round trip, "
        "else one per 10 ms of round trip, at least 2 and at most 8",
    )


def auto_streams(size: int, rtt: float | None, cap: int) -> int:
    """Connections for a ``size``-byte file from a server ``rtt`` seconds away (None: not known),
    at most ``cap``, when ``streams`` is unset."""
    if size < SEGMENT_FROM or rtt is None or rtt < NEAR:
        return 1
    by_rtt = max(2, math.ceil(rtt / STREAM_RTT))
    return max(1, min(by_rtt, AUTO_STREAMS, size // (SEGMENT_FROM // 2), cap))


class Part:
    """A byte range being read: from ``start``, read up to ``pos``, to ``end`` (which another
    connection may move back, taking what follows: see :meth:`PartPlan.take`); handed out at
    ``began`` (monotonic seconds)."""

    __slots__ = ("began", "end", "pos", "size", "start")

    def __init__(self, start: int, end: int, size: int) -> None:
        self.start = start
        self.pos = start
        self.end = end
        self.size = size
        self.began = 0.0

    @property
    def last(self) -> bool:
        """Whether this part ends the file: it reads on past the end, to see that nothing follows."""
        return self.end == self.size


class PartPlan:
    """The parts of a segmented download over ``streams`` connections, each a connection's own.

    As lftp's ``pget``: the ``gaps`` still missing are cut into about one part per connection
    (each at least ``min_part``), since every part costs a new data connection and its TCP slow
    start. Unlike ``pget``, a connection whose part is done takes the back of the part that has
    the most to give: connections that logged in later, or run slower, would otherwise leave the
    first ones idle to the end. A new part needs ``ramp`` seconds (its data connection and slow
    start) before it goes at full speed, so the part it is cut from keeps what it reads meanwhile
    at its rate so far, and the rest is shared in halves; no cut gives less than ``min_part``.
    """

    def __init__(
        self, gaps: list[tuple[int, int]], streams: int, size: int, *, min_part: int, ramp: float = 0.0
    ) -> None:
        self.size = size
        self.min_part = min_part
        self.ramp = ramp
        left = sum(e - s for s, e in gaps)
        part = max(min_part, -(-left // max(1, streams)))
        self._todo: deque[Part] = deque()
        for start, end in gaps:
            self._todo.extend(Part(p, min(p + part, end), size) for p in range(start, end, part))
        if not self._todo or self._todo[-1].end < size:
            self._todo.append(Part(size, size, size))  # the end was fetched before: does it still end there?
        self._active: list[Part] = []

    def __len__(self) -> int:
        """Parts not handed out yet."""
        return len(self._todo)

    def take(self, now: float | None = None) -> Part | None:
        """The next part to read, the back of one being read (see above), or None."""
        now = time.monotonic() if now is None else now
        if self._todo:
            p = self._todo.popleft()
        else:
            best, most = None, 0
            for a in self._active:
                spent = now - a.began
                rate = (a.pos - a.start) / spent if spent > 0 else 0.0
                give = int(a.end - a.pos - rate * self.ramp) // 2
                if give >= self.min_part and give > most:
                    best, most = a, give
            if best is None:
                return None
            p = Part(best.end - most, best.end, self.size)
            best.end = p.start
        p.began = now
        self._active.append(p)
        return p

    def done(self, p: Part) -> None:
        """``p`` is read (or failed): not to be split any more."""
        self._active.remove(p)
