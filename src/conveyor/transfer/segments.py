"""How many connections one large download is read over, for the connectors that read files in
segments (sftp, ftp): ``streams`` when set, else chosen by size and by the server's round trip."""

from __future__ import annotations

from typing import Any

from pydantic import Field

SEGMENT_FROM = 64 * 1024 * 1024
"""Files from this size are read over several connections when ``streams`` is unset."""
NEAR = 0.01
"""A server answering within this many seconds is near: one connection already outruns the CPU.
Well above loopback and LAN round trips, since one request timed on a busy machine can take a few ms."""
AUTO_STREAMS = 4
"""Connections a large file from a distant server is read over when ``streams`` is unset (one per
32 MiB of file up to this): enough to pass a single stream by far at 50-100 ms, few enough to
leave the server's other users their share."""


def streams_field(each: str, moved: str = "one large download is read over") -> Any:
    """The ``streams`` setting of a connector whose connections each do ``each``; ``moved`` says
    which transfers use it."""
    return Field(
        None,
        ge=1,
        le=16,
        description=f"connections {moved} at once, each {each} (at most "
        "max_connections); unset: by size and distance, 1 below 64 MiB or on a server under 10 ms round trip, "
        "else up to 4",
    )


def auto_streams(size: int, rtt: float | None, cap: int) -> int:
    """Connections for a ``size``-byte file from a server ``rtt`` seconds away (None: not known),
    at most ``cap``, when ``streams`` is unset."""
    if size < SEGMENT_FROM or rtt is None or rtt < NEAR:
        return 1
    return max(1, min(AUTO_STREAMS, size // (SEGMENT_FROM // 2), cap))
