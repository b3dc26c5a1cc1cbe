"""The free-space floor: intake pauses while the state store's or the spool's disk runs low.

The state store and the spool usually share one file system. Were it to fill, the store could
no longer record what was delivered, and every delivery in flight would fail at its last step.
So before that, sources stop taking new items: files stay on the server, messages stay with the
broker (unacknowledged or not yet sent), deliveries already under way finish. Nothing is lost;
intake resumes by itself once there is room again.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from conveyor.config.types import SpaceFloor, format_size
from conveyor.status import StatusBoard
from conveyor.stopping import StopSignal

log = logging.getLogger("conveyor.intake")

FRESH = 1.0
"""Seconds a probe's answer is trusted: a statvfs per item would cost more than it tells."""
RECHECK = 5.0
"""Seconds between probes while intake is paused."""


class IntakeGate:
    """Says whether sources may take new items: free space on each watched folder's file
    system is at least ``floor``. A paused gate shows in the status board (``/status``,
    ``/readyz``) with its reason."""

    def __init__(self, folders: list[Path], floor: SpaceFloor, status: StatusBoard) -> None:
        self.folders = list(dict.fromkeys(folders))
        self.floor = floor
        self.status = status
        self._checked = float("-inf")
        self._reason: str | None = None

    def set_floor(self, floor: SpaceFloor) -> None:
        """A new floor (a reload); the next check probes afresh."""
        self.floor = floor
        self._checked = float("-inf")

    def probe(self) -> str | None:
        """Look now: why intake must pause, or None when every folder has room."""
        for folder in self.folders:
            try:
                st = os.statvfs(_existing(folder))
            except OSError as e:
                log.debug("free space of %s unknown: %s", folder, e)
                continue
            total = st.f_blocks * st.f_frsize
            free = st.f_bavail * st.f_frsize
            need = self.floor.of(total)
            if free < need:
                return (
                    f"intake paused: {format_size(free)} free on the file system of {folder}, below "
                    f"min_free_space {self.floor} ({format_size(need)}); it resumes when there is room"
                )
        return None

    def check(self) -> str | None:
        """Probe (at most once per :data:`FRESH` seconds) and update the status board; the reason
        intake is paused, or None."""
        now = time.monotonic()
        if now - self._checked < FRESH:
            return self._reason
        self._checked = now
        reason = self.probe()
        if reason != self._reason:
            if reason is not None:
                log.warning("%s", reason)
            else:
                log.info("intake resumed: free space is back above min_free_space %s", self.floor)
            self._reason = reason
            self.status.intake_paused(reason)
        return reason

    async def wait(self, stop: StopSignal) -> bool:
        """Return True once intake may go on (at once when it may), False when ``stop`` is set first."""
        while self.check() is not None:
            if await stop.wait(RECHECK):
                return False
        return not stop.is_set()


def _existing(path: Path) -> Path:
    """``path``, or its nearest folder that exists (a spool folder not made yet shares its parent's disk)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path
