"""Each flow's deliveries over the last minutes, for the status page's rate column and sparklines.

Kept apart from the page (and aiohttp): the health server's ticker samples it on the daemon loop
from the start, while the page itself is loaded with the server.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from conveyor.status import FlowStatus

SAMPLE_EVERY = 5.0
"""Seconds between throughput samples (one sparkline bar)."""
SAMPLES = 120
"""Samples kept: ten minutes of sparkline."""
RATE_WINDOW = 60.0
"""The rate column is deliveries per second over this many seconds."""


class Throughput:
    """Each flow's delivered count every ``SAMPLE_EVERY`` seconds, for the rate and the sparkline.
    Sampled by the health server's ticker on the daemon loop; read there too."""

    def __init__(self) -> None:
        self.samples: collections.deque[tuple[float, dict[str, int]]] = collections.deque(maxlen=SAMPLES + 1)
        self._next = 0.0

    def sample(self, flows: Mapping[str, FlowStatus], now: float) -> None:
        """Take a sample when one is due (cheap otherwise: called four times a second)."""
        if now < self._next:
            return
        self._next = now + SAMPLE_EVERY
        self.samples.append((now, {n: f.delivered for n, f in flows.items()}))

    def series(self, flow: str) -> list[int]:
        """Deliveries in each sample interval, oldest first."""
        counts = [s.get(flow) for _, s in self.samples]
        return [b - a if a is not None and b is not None and b >= a else 0 for a, b in itertools.pairwise(counts)]

    def rate(self, flow: str, delivered: int, now: float) -> float | None:
        """Deliveries per second over about the last minute; None before the first sample."""
        for t, s in self.samples:
            if now - t <= RATE_WINDOW + SAMPLE_EVERY and flow in s and now - t >= 1.0:
                return max(0, delivered - s[flow]) / (now - t)
        return None
