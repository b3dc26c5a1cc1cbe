"""The fault suite's long outage: an HTTP target gone for minutes while a queue and a folder feed it.

For :data:`OUTAGE` seconds (2.5 minutes by default) the target first refuses connections (a
bound socket that is not listening: a closed port), then answers ``503`` with ``Retry-After``,
then ``503`` without it; then it answers ``200``, deduplicating on ``Idempotency-Key`` as an
idempotent receiver does. Meanwhile ``conveyor run`` (a real process) is fed by a RabbitMQ queue
(messages published before and during the outage) and a local folder. The test asserts:

- bounded memory: the daemon's VmRSS, sampled every second, stays under :data:`RSS_BOUND_KIB`
  and does not grow from the first minute of the outage to the last; after the recovery burst it
  settles within :data:`RSS_GROWTH_KIB` of the outage's peak (not below it: the allocator keeps
  freed memory, and SQLite's page cache grows with the ledger up to its 2 MiB default);
- backoff, not a hot loop: the attempts (counted by the server and in the daemon's log) fit
  what ``retry: {backoff, max_backoff}`` allows for ``max_in_flight`` payloads per flow, every
  ``Retry-After`` is honoured, the daemon's CPU time stays small; intake is bounded (unacked
  messages ≤ prefetch, ledger rows per flow ≤ max_in_flight, no file moved);
- ``/readyz`` says both flows are stalled and ``/status`` carries the target's error;
- recovery: every message and file arrives exactly once, the queue is drained, the files moved
  per ``after``, the spool is empty, nothing is ``failed`` in the ledger.

``CONVEYOR_TEST_OUTAGE=600`` runs a longer outage (every bound scales with it).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import json
import os
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import pytest
from aiohttp import web

from conveyor.supervisor import Backoff
from tests.faultlog import record
from tests.harness import DaemonProcess, running, wait_for, write_config
from tests.servers.ops import free_port
from tests.servers.rabbitmq import Vhost, declare

pytestmark = pytest.mark.fault

OUTAGE = float(os.environ.get("CONVEYOR_TEST_OUTAGE", "150"))
"""Seconds the HTTP target is unusable, counted from the daemon's start."""
REFUSED_UNTIL = 0.4
"""Fraction of the outage during which the port is closed (connections refused)."""
RETRY_AFTER_UNTIL = 0.7
"""From REFUSED_UNTIL to this fraction: 503 with Retry-After; then 503 without, until the end."""
RETRY_AFTER = 6
"""Seconds in the Retry-After header: longer than max_backoff, so honouring it is visible."""
RETRY = {"attempts": 1000, "backoff": "500ms", "max_backoff": "4s"}
"""Enough attempts to outlast the outage (nothing becomes ``failed``); short enough waits that
recovery starts within seconds of the target's return."""
BACKOFF = Backoff(0.5, 4.0)
"""RETRY as the daemon's Backoff, for the attempt bounds."""
MAX_IN_FLIGHT = 8
PREFETCH = 20
SPOOL_THRESHOLD = 16 * 1024
N_FILES = 300
N_MSGS_BEFORE = 200
N_MSGS_DURING = 150
"""Published twice during the outage: while the port is closed, and while it answers 503."""
RSS_BOUND_KIB = 80 * 1024
"""Peak VmRSS allowed during the outage. The daemon with these two flows sits near 60 MB; the bodies
waiting in the queue and the folder (about 35 MB) must stay there, not in its memory."""
RSS_GROWTH_KIB = 8 * 1024
"""Most the mean RSS of the outage's last minute may exceed that of its first minute."""


def per_slot_attempts(window: float, backoff: Backoff = BACKOFF) -> int:
    """Most attempts one payload can make in ``window`` seconds under ``backoff``: every wait at the
    low end of its jitter (d/2), starting from the first, shortest wait."""
    n, t = 1, 0.0
    while True:
        t += min(backoff.maximum, backoff.initial * backoff.factor ** (n - 1)) / 2
        if t > window:
            return n
        n += 1


# -- the HTTP target --------------------------------------------------------------------------
@dataclass
class Post:
    """One request the target saw."""

    at: float
    key: str
    flow: str
    status: int
    sha256: str
    name: str | None


@dataclass
class Target:
    """An HTTP endpoint whose port exists from the start but refuses connections until :meth:`listen`."""

    mode: str = "refused"
    posts: list[Post] = field(default_factory=list)
    accepted: dict[str, Post] = field(default_factory=dict)
    """Idempotency-Key -> the POST that was accepted first."""
    dedup: int = 0
    """POSTs of a key already accepted (a retry the receiver recognised), answered 200 again."""

    def __post_init__(self) -> None:
        # Bound but not listening: the kernel answers a SYN with RST (ECONNREFUSED), and the port
        # stays ours until the server starts listening on this very socket.
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self._runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        key = request.headers.get("Idempotency-Key", "")
        meta_h = request.headers.get("X-Conveyor-Meta")
        name = json.loads(base64.urlsafe_b64decode(meta_h)).get("name") if meta_h else None
        post = Post(
            time.monotonic(),
            key,
            request.headers.get("X-Conveyor-Flow", ""),
            200,
            hashlib.sha256(body).hexdigest(),
            name,
        )
        headers: dict[str, str] = {}
        if self.mode == "retry-after":
            post.status = 503
            headers["Retry-After"] = str(RETRY_AFTER)
        elif self.mode == "503":
            post.status = 503
        elif key in self.accepted:
            self.dedup += 1
        else:
            self.accepted[key] = post
        self.posts.append(post)
        return web.Response(
            status=post.status, headers=headers, text="down for maintenance" if post.status == 503 else "ok"
        )

    async def listen(self, mode: str) -> None:
        """Start answering (on the socket bound since the start)."""
        self.mode = mode
        app = web.Application(client_max_size=1 << 20)
        app.router.add_post("/hook", self.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.SockSite(self._runner, self.sock).start()

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        self.sock.close()


@asynccontextmanager
async def http_target() -> AsyncIterator[Target]:
    t = Target()
    try:
        yield t
    finally:
        await t.close()


# -- looking at the daemon --------------------------------------------------------------------
def proc_figures(pid: int) -> tuple[int, float]:
    """(VmRSS in KiB, CPU seconds used so far) of a process."""
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
    return rss, cpu


def queue_counts(v: Vhost, queue: str) -> tuple[int, int]:
    """(ready, unacknowledged) messages of a queue, from rabbitmqctl (the management plugin is off here)."""
    out = subprocess.run(
        [
            "rabbitmqctl",
            "-q",
            "list_queues",
            "-p",
            v.name,
            "--no-table-headers",
            "name",
            "messages_ready",
            "messages_unacknowledged",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    for line in out.stdout.splitlines():
        parts = line.split("\t")
        if parts[0] == queue:
            return int(parts[1]), int(parts[2])
    raise AssertionError(f"queue {queue} not listed: {out.stdout!r}")


async def publish(v: Vhost, queue: str, bodies: list[bytes]) -> None:
    """Persistent messages with confirms, without message_id (ids come from the body hash)."""
    async with await aio_pika.connect(v.url) as conn:
        ch = await conn.channel()
        await asyncio.gather(
            *(
                ch.default_exchange.publish(
                    aio_pika.Message(b, delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key=queue
                )
                for b in bodies
            )
        )


def message_bodies(start: int, n: int) -> list[bytes]:
    """Unique bodies, every other one above the spool threshold (so it travels through the spool)."""
    return [f"m{i:05}:".encode() + os.urandom(100_000 if i % 2 else 2_000) for i in range(start, start + n)]


@dataclass
class Sample:
    """What the observer saw at one moment of the outage."""

    at: float
    readyz: int
    reasons: dict[str, Any]
    errors: dict[str, str | None]
    delivered: dict[str, int]
    ledger_rows: dict[str, int]
    failed: int
    spool_files: int
    files_left: int
    unacked: int | None = None


API_TOKEN = "outage-" + os.urandom(12).hex()
"""health.token of the daemon under test: the observer reads the ledger with it."""


async def observe(session: aiohttp.ClientSession, health: str, spool: Path, src: Path) -> Sample:
    async with session.get(f"{health}/readyz") as r:
        ready_status, ready = r.status, await r.json()
    async with session.get(f"{health}/status") as r:
        status = await r.json()
    rows: dict[str, int] = {}
    failed = 0
    for flow in ("files", "msgs"):
        async with session.get(
            f"{health}/flows/{flow}/items", params={"limit": "1000"}, headers={"Authorization": f"Bearer {API_TOKEN}"}
        ) as r:
            items = (await r.json())["items"]
        rows[flow] = len(items)
        failed += sum(1 for i in items if i["state"] == "failed")
    return Sample(
        time.monotonic(),
        ready_status,
        ready.get("reasons", {}),
        {f: s["last_error"] for f, s in status["flows"].items()},
        {f: s["delivered"] for f, s in status["flows"].items()},
        rows,
        failed,
        *fs_counts(spool, src),
    )


def fs_counts(spool: Path, src: Path) -> tuple[int, int]:
    """(files in the spool, files left in the source folder)."""
    return sum(1 for _ in spool.glob("*.spool")), sum(1 for _ in src.iterdir())


# -- the scenario ---------------------------------------------------------------------------
@pytest.mark.timeout(OUTAGE + 300)  # the outage itself, then recovery
async def test_http_target_down_for_minutes(rabbit_vhost: Vhost, tmp_path: Path) -> None:
    """Closed port, then 503 with and without Retry-After, for OUTAGE seconds under a queue and a
    folder: bounded memory and intake, backoff, stalled in /readyz, then everything once."""
    v = rabbit_vhost
    queue = v.q(f"outage-{uuid.uuid4().hex[:8]}")
    await declare(v, queue)
    disk, src, done, spool = tmp_path / "disk", tmp_path / "disk" / "in", tmp_path / "disk" / "done", tmp_path / "spool"
    src.mkdir(parents=True)
    files = {f"f{i:04}.dat": f"f{i}:".encode() + os.urandom(64_000 if i % 2 else 4_000) for i in range(N_FILES)}
    for name, data in files.items():
        (src / name).write_bytes(data)
    msgs = message_bodies(0, N_MSGS_BEFORE)
    await publish(v, queue, msgs)
    health_port = free_port()
    health = f"http://127.0.0.1:{health_port}"

    async with http_target() as target, aiohttp.ClientSession() as session:
        hook = {"type": "http", "url": target.url, "timeout": "5s"}
        cfg = write_config(
            tmp_path,
            {"disk": {"type": "local", "root": str(disk)}, "broker": v.instance_config()},
            {
                "files": {
                    "source": {
                        "instance": "disk",
                        "path": "in",
                        "poll_interval": "1s",
                        "min_age": "0s",
                        "after": {"move": "done"},
                    },
                    "target": hook,
                    "retry": RETRY,
                    "max_in_flight": MAX_IN_FLIGHT,
                },
                "msgs": {
                    "source": {"instance": "broker", "queue": queue, "prefetch": PREFETCH, "max_attempts": 3},
                    "target": hook,
                    "retry": RETRY,
                    "max_in_flight": MAX_IN_FLIGHT,
                },
            },
            health={"listen": f"127.0.0.1:{health_port}", "token": API_TOKEN},
            log={"level": "info", "format": "json"},
            spool_threshold=str(SPOOL_THRESHOLD),
        )
        wall0 = time.monotonic()
        d = DaemonProcess(cfg).start()
        assert d.proc is not None
        pid = d.proc.pid
        t0 = time.monotonic()
        rss: list[tuple[float, int, float]] = []  # (seconds since start, KiB, CPU seconds)
        samples: list[Sample] = []

        async def sample_rss() -> None:
            while True:
                r, c = proc_figures(pid)
                rss.append((time.monotonic() - t0, r, c))
                await asyncio.sleep(1.0)

        async def sample_state() -> None:
            n = 0
            while True:
                s = await observe(session, health, spool, src)
                if n % 3 == 0:  # rabbitmqctl costs about a CPU-second: every ~15 s is enough
                    s.unacked = (await asyncio.to_thread(queue_counts, v, queue))[1]
                samples.append(s)
                n += 1
                await asyncio.sleep(5.0)

        async def health_up() -> bool:
            with suppress(aiohttp.ClientError):
                async with session.get(f"{health}/healthz") as r:
                    return r.status == 200
            return False

        rss_task = asyncio.create_task(sample_rss())
        state_task: asyncio.Task[None] | None = None
        try:
            await wait_for(health_up, 30, 0.2)
            state_task = asyncio.create_task(sample_state())

            async def until(fraction: float) -> None:
                await asyncio.sleep(max(0.0, t0 + fraction * OUTAGE - time.monotonic()))

            await until(0.15)
            during = message_bodies(N_MSGS_BEFORE, N_MSGS_DURING)
            await publish(v, queue, during)
            msgs += during
            await until(REFUSED_UNTIL)
            assert not target.posts, "nothing reached a closed port"
            t_listen = time.monotonic()
            await target.listen("retry-after")
            await until(0.55)
            during = message_bodies(N_MSGS_BEFORE + N_MSGS_DURING, N_MSGS_DURING)
            await publish(v, queue, during)
            msgs += during
            await until(RETRY_AFTER_UNTIL)
            t_plain = time.monotonic()
            target.mode = "503"
            await until(1.0)
            t_back = time.monotonic()
            target.mode = "ok"
            outage_logs = d.logs()
            outage_rss = [x for x in rss if x[0] <= t_back - t0]
            cpu_outage = outage_rss[-1][2] - outage_rss[0][2]
            outage_samples = list(samples)

            # Recovery: everything arrives, the queue drains, the files move, the spool empties.
            n_total = N_FILES + len(msgs)
            await wait_for(lambda: len(target.accepted) >= n_total, 120, 0.2)
            t_all = time.monotonic()

            async def drained() -> bool:
                ready, unacked = await asyncio.to_thread(queue_counts, v, queue)
                return ready == 0 and unacked == 0

            await wait_for(drained, 60, 1.0)
            await wait_for(lambda: not any(src.iterdir()) and not any(spool.glob("*.spool")), 60, 0.2)

            async def ready() -> bool:
                async with session.get(f"{health}/readyz") as r:
                    return r.status == 200

            await wait_for(ready, 30, 0.5)
            after = await observe(session, health, spool, src)
            await asyncio.sleep(5)  # idle a little: what RSS settles at once the burst is over
            rss_after = proc_figures(pid)[0]
        finally:
            rss_task.cancel()
            if state_task is not None:
                state_task.cancel()
            rc = d.stop()
        wall = time.monotonic() - wall0
    assert rc == 0

    # -- memory: bounded, flat, back down ----------------------------------------------------------
    kib = [r for _, r, _ in outage_rss]
    peak = max(kib)
    assert peak < RSS_BOUND_KIB, f"peak RSS {peak} KiB during the outage"
    first = [r for t, r, _ in outage_rss if 10 <= t <= 70]  # the first minute, start-up excluded
    last = [r for t, r, _ in outage_rss if t >= OUTAGE - 60]
    mean_first, mean_last = sum(first) // len(first), sum(last) // len(last)
    assert mean_last - mean_first < RSS_GROWTH_KIB, f"RSS grew {mean_first} -> {mean_last} KiB during the outage"
    recovery_peak = max([r for t, r, _ in rss if t > t_back - t0] or [0])
    assert rss_after < peak + RSS_GROWTH_KIB, f"RSS {rss_after} KiB after recovery against {peak} KiB peak"

    # -- backoff: attempts fit the retry policy; no hot loop -----------------------------------------
    slots = 2 * MAX_IN_FLIGHT
    retries = [r for r in outage_logs if "retrying in " in str(r.get("msg")) and r.get("payload_id")]
    logged_bound = slots * per_slot_attempts(OUTAGE)
    assert 0 < len(retries) <= logged_bound, f"{len(retries)} failed attempts logged, bound {logged_bound}"
    for flow in ("files", "msgs"):
        taken = {r["payload_id"] for r in retries if r.get("flow") == flow}
        assert 0 < len(taken) <= MAX_IN_FLIGHT, f"{flow}: {len(taken)} payloads in delivery during the outage"
    seen_ra = [p for p in target.posts if t_listen <= p.at < t_plain]
    seen_503 = [p for p in target.posts if t_plain <= p.at < t_back]
    ra_bound = slots * (int((t_plain - t_listen) / RETRY_AFTER) + 1)
    plain_bound = slots * (int((t_back - t_plain) / (BACKOFF.maximum / 2)) + 1)
    assert 0 < len(seen_ra) <= ra_bound, f"{len(seen_ra)} POSTs while answering Retry-After, bound {ra_bound}"
    assert 0 < len(seen_503) <= plain_bound, f"{len(seen_503)} POSTs while answering 503, bound {plain_bound}"
    by_key: dict[str, list[Post]] = {}
    for p in target.posts:
        by_key.setdefault(p.key, []).append(p)
    ra_gaps = [
        b.at - a.at for ps in by_key.values() for a, b in itertools.pairwise(ps) if a.status == 503 and a.at < t_plain
    ]
    assert ra_gaps and min(ra_gaps) >= RETRY_AFTER - 0.05, f"Retry-After not honoured: gap {min(ra_gaps):.2f}s"
    assert cpu_outage < 0.1 * OUTAGE, f"daemon used {cpu_outage:.1f} CPU-seconds in a {OUTAGE:g} s outage"

    # -- bounded intake ----------------------------------------------------------------------------
    late = [s for s in outage_samples if s.at - t0 >= 15]  # past the 3 x poll_interval + 5 s grace
    assert late
    unacked = [s.unacked for s in outage_samples if s.unacked is not None]
    assert unacked and max(unacked) <= PREFETCH, f"unacked {unacked} (prefetch {PREFETCH})"
    assert max(s.ledger_rows["files"] for s in outage_samples) <= MAX_IN_FLIGHT
    assert max(s.ledger_rows["msgs"] for s in outage_samples) <= MAX_IN_FLIGHT
    assert all(s.files_left == N_FILES for s in outage_samples), "no file moved while the target is down"
    assert max(s.spool_files for s in outage_samples) <= PREFETCH
    assert all(s.failed == 0 for s in outage_samples)

    # -- not ready, and why -------------------------------------------------------------------------
    assert all(s.readyz == 503 and {"files", "msgs"} <= set(s.reasons.get("flows", {})) for s in late), [
        (round(s.at - t0), s.readyz, s.reasons) for s in late
    ]
    assert any("stalled: last completed poll" in s.reasons["flows"]["files"] for s in late)
    assert any("stalled: a delivery has been in flight" in s.reasons["flows"]["msgs"] for s in late)
    errors = [e or "" for s in late for e in s.errors.values()]
    assert any("cannot connect" in e for e in errors), errors
    assert any("HTTP 503" in e and "Retry-After" in e for e in errors), errors
    assert any("HTTP 503" in e and "Retry-After" not in e for e in errors), errors

    # -- recovery: everything once --------------------------------------------------------------------
    accepted = list(target.accepted.values())
    got_msgs = [p.sha256 for p in accepted if p.flow == "msgs"]
    got_files = [(p.name, p.sha256) for p in accepted if p.flow == "files"]
    want_msgs = {hashlib.sha256(m).hexdigest() for m in msgs}
    want_files = {(n, hashlib.sha256(b).hexdigest()) for n, b in files.items()}
    lost = len(want_msgs - set(got_msgs)) + len(want_files - set(got_files))
    duplicates = (len(got_msgs) - len(set(got_msgs))) + (len(got_files) - len(set(got_files)))
    assert lost == 0 and duplicates == 0, (lost, duplicates)
    assert set(got_msgs) == want_msgs and set(got_files) == want_files
    assert all(p.status == 200 for p in target.posts if p.at >= t_back)
    assert {p.name: (done / p.name).read_bytes() for p in accepted if p.flow == "files" and p.name} == files
    assert after.failed == 0 and after.spool_files == 0 and after.files_left == 0
    assert after.delivered == {"files": N_FILES, "msgs": len(msgs)}, after.delivered
    assert all(not s.delivered["files"] and not s.delivered["msgs"] for s in outage_samples)
    assert all(not e or "HTTP 503" in e or "cannot connect" in e for e in after.errors.values())

    figures: dict[str, Any] = {
        "outage_s": OUTAGE,
        "wall_s": round(wall, 1),
        "recovered_in_s": round(t_all - t_back, 1),
        "rss_kib": {
            "peak": peak,
            "first_min_mean": mean_first,
            "last_min_mean": mean_last,
            "recovery_peak": recovery_peak,
            "after": rss_after,
            "every_30s": [r for t, r, _ in outage_rss[::30]],
        },
        "cpu_s_during_outage": round(cpu_outage, 1),
        "failed_attempts_logged": len(retries),
        "bound": logged_bound,
        "posts_retry_after": len(seen_ra),
        "bound_retry_after": ra_bound,
        "posts_503": len(seen_503),
        "bound_503": plain_bound,
        "min_retry_after_gap_s": round(min(ra_gaps), 2),
        "max_unacked": max(unacked),
        "max_ledger_rows": max(max(s.ledger_rows.values()) for s in outage_samples),
        "max_spool_files": max(s.spool_files for s in outage_samples),
        "dedup_posts": target.dedup,
        "posts_total": len(target.posts),
    }
    print(json.dumps({"readyz_reasons": late[-1].reasons, "last_errors": late[-1].errors}))
    print(json.dumps(figures))
    record(
        f"http target down {OUTAGE:g} s: refused, 503 +/- Retry-After (rabbitmq + local)",
        moved=n_total,
        lost=lost,
        duplicates=duplicates,
        **figures,
    )


async def test_patient_retry_policy_outlives_float_overflow(tmp_path: Path) -> None:
    """More than 1024 attempts: 2.0 ** 1024 overflows a float, and Backoff.delay must still give the
    longest wait, so the delivery neither dies holding its item nor stops: it ends ``failed`` on schedule."""
    assert Backoff(0.001, 0.002).delay(5000) <= 0.002
    disk = tmp_path / "disk"
    (disk / "in").mkdir(parents=True)
    (disk / "in" / "a.dat").write_bytes(b"x")
    blocked = tmp_path / "out"
    blocked.write_bytes(b"a file where the target folder should be")
    cfg = write_config(
        tmp_path,
        {"disk": {"type": "local", "root": str(disk)}},
        {
            "f": {
                "source": {"instance": "disk", "path": "in", "poll_interval": "200ms", "min_age": "0s"},
                "target": {"type": "directory", "path": str(blocked)},
                "retry": {"attempts": 1100, "backoff": "1ms", "max_backoff": "1ms"},
            }
        },
        log={"level": "error", "format": "json"},
    )
    async with running(cfg) as d:

        async def failed() -> bool:
            items = await d.store.list("f", None, 10, 0)
            return bool(items) and items[0].state == "failed"

        await wait_for(failed, 60, 0.2)
        item = (await d.store.list("f", None, 10, 0))[0]
    assert item.attempts == 1 and (disk / "in" / "a.dat").exists()
