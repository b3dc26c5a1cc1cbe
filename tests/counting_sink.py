"""An HTTP target for the fault suite that counts every delivery it answers, and kills the daemon.

A directory target keeps one copy per id, so a second delivery leaves no trace there. This
sink answers each POST of conveyor's ``http`` target and records it (payload id from the
``Idempotency-Key`` header, SHA-256 of the body), so a second delivery of an id is counted.

Kill points are request numbers drawn once per run (:func:`kill_points`); when the request
with that number has arrived whole, the sink SIGKILLs the daemon while it still holds that
request unanswered, so every kill lands with a delivery in flight by construction, and the
sink notes what else was open and how far the transfer had got.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import sqlite3
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.harness import DaemonProcess, wait_for
from tests.servers.ops import serve

RUN_HEADER = "X-Conveyor-Test-Run"


@dataclass(frozen=True)
class Kill:
    """What the sink saw when it killed the daemon."""

    request: int
    """The number of the request (counted over the whole run, restarts included) it held open."""
    open: int
    """Requests open at the sink at that instant (the held one included)."""
    distinct_answered: int
    """Distinct payload ids answered before it."""
    answers: int = 0
    """Answers given once every request of the killed daemon had ended (set by :func:`run_with_kills`)."""
    delivered_in_ledger: frozenset[str] = frozenset()
    """Ids the ledger held delivered right after the kill (set by :func:`run_with_kills`)."""


@dataclass
class CountingSink:
    """Answers every POST with 204 and counts it; see the module docstring."""

    url: str = ""
    answered: list[tuple[str, str]] = field(default_factory=list)
    """(payload id, body SHA-256) of every request answered 2xx, in order."""
    arrived: int = 0
    open: int = 0
    points: list[int] = field(default_factory=list)
    """Request numbers still to kill at, ascending."""
    kills: list[Kill] = field(default_factory=list)
    kill: Callable[[], None] | None = None
    """SIGKILLs the daemon that is running now (set at each start)."""
    hold: asyncio.Event | None = None
    """When given, every request is held unanswered, its body read, until the event is set."""
    run: int = 0
    """The daemon started last (set by :func:`run_with_kills`); requests carry theirs in a header."""
    late: int = 0
    """Requests of an already killed daemon that reached the sink only after the kill: refused
    uncounted (their sender is gone), else one parsed after the kill's tally would look like a
    second delivery with no kill before it."""

    def target(self) -> dict[str, Any]:
        """The http target config that sends here, each request tagged with its daemon's run."""
        return {"type": "http", "url": self.url, "headers": {RUN_HEADER: "${CONVEYOR_TEST_RUN}"}}

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Read the body whole; kill or answer."""
        self.open += 1
        try:
            body = await request.read()
            if self.run and request.headers.get(RUN_HEADER) != str(self.run):
                self.late += 1
                return web.Response(status=503)
            self.arrived += 1
            if self.points and self.arrived >= self.points[0]:
                self.points.pop(0)
                k = Kill(self.arrived, self.open, len({i for i, _ in self.answered}))
                self.kills.append(k)
                assert self.kill is not None, "a kill point came with no daemon to kill"
                self.kill()
                return web.Response(status=503)  # nobody is left to read it
            if self.hold is not None:
                await self.hold.wait()
            self.answered.append((request.headers["Idempotency-Key"], hashlib.sha256(body).hexdigest()))
            return web.Response(status=204)
        finally:
            self.open -= 1

    def distinct(self) -> int:
        """Distinct payload ids answered so far."""
        return len({i for i, _ in self.answered})

    def copies(self) -> Counter[str]:
        """Payload id -> how many times the sink answered it."""
        return Counter(i for i, _ in self.answered)

    def digests(self) -> set[str]:
        """SHA-256 of every body answered."""
        return {d for _, d in self.answered}


def kill_points(total: int, kills: int, rng: random.Random | None = None) -> list[int]:
    """``kills`` request numbers spread over a transfer of ``total``: one drawn in each of
    ``kills`` equal stretches of 1..total-1, so they cover the whole transfer, not its start."""
    rng = rng or random.Random()
    span = (total - 1) / kills
    return [1 + int(i * span) + rng.randrange(max(1, int(span))) for i in range(kills)]


@asynccontextmanager
async def counting_sink() -> AsyncIterator[CountingSink]:
    """A CountingSink on a random loopback port for the duration of the block."""
    sink = CountingSink()
    app = web.Application(client_max_size=1 << 30)
    app.router.add_post("/{tail:.*}", sink.handle)
    async with serve(app) as port:
        sink.url = f"http://127.0.0.1:{port}/in"
        yield sink


def recorded_delivered(state_db: Path, flow: str) -> set[str]:
    """Ids the daemon's SQLite ledger holds as delivered (read after the daemon died)."""
    with sqlite3.connect(state_db) as db:
        rows: list[Any] = db.execute("SELECT id FROM items WHERE flow=? AND state='delivered'", (flow,)).fetchall()
    return {r[0] for r in rows}


def settled_count(state_db: Path, flow: str) -> int:
    """Items the daemon's SQLite ledger holds as settled (source-side completion done)."""
    with sqlite3.connect(state_db) as db:
        n: int = db.execute("SELECT count(*) FROM items WHERE flow=? AND settled=1", (flow,)).fetchone()[0]
    return n


@dataclass
class SecondDeliveries:
    """Second deliveries the sink answered, split by whether the ledger excuses them."""

    window: int = 0
    """Ids answered again whose first answer the ledger had not recorded as delivered when the
    daemon was killed: the crash fell between the target's answer and the ledger's record
    (at least once, as documented)."""
    duplicates: int = 0
    """Any other second delivery: the ledger knew it was delivered, or no kill explains it."""
    examples: list[str] = field(default_factory=list)


def classify(sink: CountingSink) -> SecondDeliveries:
    """Judge every repeat in ``sink.answered`` against the kills' ledger snapshots."""
    ledgers = [(k.answers, k.delivered_in_ledger) for k in sink.kills]
    out = SecondDeliveries()
    last: dict[str, int] = {}
    for n, (pid, _) in enumerate(sink.answered):
        before, last[pid] = last.get(pid), n
        if before is None:
            continue
        # Excused when a kill came between its previous answer and this one, with the ledger
        # not yet holding it delivered.
        if any(before < at <= n and pid not in known for at, known in ledgers):
            out.window += 1
        else:
            out.duplicates += 1
            out.examples.append(pid)
    return out


def _ended(d: DaemonProcess) -> Callable[[], bool]:
    return lambda: d.proc is not None and d.proc.poll() is not None


async def run_with_kills(
    sink: CountingSink, start: Callable[[dict[str, str]], DaemonProcess], state_db: Path, flow: str, points: list[int]
) -> DaemonProcess:
    """Start the daemon, let the sink kill it at each of ``points``, restart it each time;
    returns the daemon left running. Each kill gets the answers given by the time every
    request of the dead daemon had ended, and the ledger's delivered ids right after."""
    sink.points = sorted(points)
    for i in range(len(points)):
        d = _start_run(sink, start)
        sink.kill = d.kill9
        await wait_for(_ended(d), 180)
        assert d.proc is not None and d.proc.returncode == -9, (
            f"exit {d.proc and d.proc.returncode}: "
            f"the daemon ended on its own, not by the sink's kill; it printed:\n{d.text()[-2000:]}"
        )
        assert len(sink.kills) == i + 1
        await wait_for(lambda: sink.open == 0, 30)  # the dead daemon's requests have all ended
        sink.kills[i] = replace(
            sink.kills[i], answers=len(sink.answered), delivered_in_ledger=frozenset(recorded_delivered(state_db, flow))
        )
    d = _start_run(sink, start)
    sink.kill = d.kill9
    return d


def _start_run(sink: CountingSink, start: Callable[[dict[str, str]], DaemonProcess]) -> DaemonProcess:
    sink.run += 1
    return start({"CONVEYOR_TEST_RUN": str(sink.run)})
