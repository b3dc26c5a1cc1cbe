"""systemd integration: ``sd_notify`` over ``$NOTIFY_SOCKET`` (no libsystemd needed).

Sends ``READY=1`` once every flow has started, ``WATCHDOG=1`` from the event loop at half
of ``$WATCHDOG_USEC`` (so a blocked loop stops the pings and systemd restarts the
service), ``STATUS=`` one-line summaries when they change, and ``STOPPING=1`` when a
stop begins. Without ``$NOTIFY_SOCKET`` every call is a no-op.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from conveyor.daemon import Daemon

log = logging.getLogger("conveyor.systemd")

STATUS_EVERY = 5.0
"""How often the STATUS= summary is recomputed (it is only sent when it changed)."""


def notify_address(value: str | None = None) -> str | bytes | None:
    """The socket address from ``$NOTIFY_SOCKET``: a path, or ``@name`` for the abstract namespace."""
    value = os.environ.get("NOTIFY_SOCKET") if value is None else value
    if not value:
        return None
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None  # vsock and other forms are not used by a service manager on this host


def sd_notify(message: str, address: str | bytes | None = None) -> bool:
    """Send one notification datagram; False when there is no socket or the send failed."""
    addr = address if address is not None else notify_address()
    if addr is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.setblocking(False)
            s.sendto(message.encode(), addr)
        return True
    except OSError as e:
        log.debug("sd_notify failed: %s", e)
        return False


def watchdog_interval() -> float | None:
    """Half of ``$WATCHDOG_USEC`` in seconds, when the watchdog is meant for this process."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid.isdigit() and int(pid) != os.getpid()):
        return None
    try:
        n = int(usec)
    except ValueError:
        return None
    return n / 2e6 if n > 0 else None


def summary(daemon: Daemon) -> str:
    """One line for ``systemctl status``: flows, counters, instances not up."""
    flows = daemon.status.flows.values()
    delivered = sum(f.delivered for f in flows)
    failed = sum(f.failed for f in flows)
    in_flight = sum(f.in_flight for f in flows)
    running = sum(1 for f in flows if f.state == "running")
    line = f"{running}/{len(daemon.flows)} flows running; {delivered} delivered, {failed} failed, {in_flight} in flight"
    down = sorted(n for n, i in daemon.status.instances.items() if i.state != "up")
    if down:
        line += "; not up: " + ", ".join(down[:5]) + (" …" if len(down) > 5 else "")
    stalled = daemon.status.stalled_reasons()
    if stalled:
        line += "; stalled: " + ", ".join(sorted(stalled)[:5])
    return line


class SystemdNotifier:
    """Daemon add-on speaking the sd_notify protocol."""

    def __init__(self) -> None:
        self.address = notify_address()
        self.interval = watchdog_interval()
        self._daemon: Daemon | None = None
        self._task: asyncio.Task[None] | None = None
        self._last_status = ""
        self._stopping = False

    @property
    def enabled(self) -> bool:
        """Whether a service manager is listening."""
        return self.address is not None

    async def start(self, daemon: Daemon) -> None:
        """Remember the daemon; say we are starting."""
        self._daemon = daemon
        if self.enabled:
            self._send("STATUS=starting")

    async def ready(self) -> None:
        """Every flow started: READY=1, then the watchdog/status ticker."""
        if not self.enabled:
            return
        self._send("READY=1\nSTATUS=" + self._status())
        if self.interval:
            log.info("systemd watchdog: pinging every %.1fs", self._period())
        self._task = asyncio.create_task(self._tick(), name="systemd-notify")

    async def stop(self) -> None:
        """A stop began: STOPPING=1. Watchdog pings go on through the drain (until close)."""
        self._stopping = True
        if self.enabled:
            self._send("STOPPING=1\nSTATUS=" + self._status())

    async def close(self) -> None:
        """The drain is over: stop the ticker."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _status(self) -> str:
        line = summary(self._daemon) if self._daemon is not None else "running"
        if self._stopping:
            in_flight = sum(f.in_flight for f in self._daemon.status.flows.values()) if self._daemon else 0
            line = f"stopping: draining {in_flight} deliveries in flight"
        self._last_status = line
        return line

    def _send(self, message: str) -> None:
        sd_notify(message, self.address)

    def _period(self) -> float:
        """Seconds between ticks: the watchdog's half-interval, or more often when the status
        line is due sooner."""
        return min(self.interval or STATUS_EVERY, STATUS_EVERY)

    async def _tick(self) -> None:
        period = self._period()
        loop = asyncio.get_running_loop()
        next_status = loop.time() + STATUS_EVERY
        while True:
            await asyncio.sleep(period)
            parts = []
            if self.interval:
                parts.append("WATCHDOG=1")
            if loop.time() >= next_status:
                next_status = loop.time() + STATUS_EVERY
                before = self._last_status
                if self._status() != before:
                    parts.append("STATUS=" + self._last_status)
            if parts:
                self._send("\n".join(parts))
