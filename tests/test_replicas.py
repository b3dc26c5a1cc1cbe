"""Three ``conveyor run`` replicas on one PostgreSQL store share an SFTP folder and a RabbitMQ queue;
one is killed with ``kill -9`` midway. Everything arrives, nothing twice, and the killed
replica's leases are taken over by the others.

Duplicates are counted twice over: the shared directory target holds one body per payload id
(it is idempotent by id, file name ``{id}``), and every replica's debug log says each time its
target confirmed a payload — an id confirmed by two replicas is a duplicate delivery unless the
first was the killed replica (its in-flight items are redelivered by design, and the idempotent
target absorbs them).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.backends.rabbitmq import RabbitBackend
from tests.backends.sftp import SftpBackend
from tests.faultlog import count_bodies, deliveries, record
from tests.harness import DaemonProcess, sidecars, wait_for, write_config
from tests.servers.postgres import pg_url

__all__ = ["pg_url"]  # the server backends' fixtures come from tests/conftest.py

pytestmark = pytest.mark.fault

N_FILES = 1000
N_MSGS = 2000
LEASE = 3


def replica_config(folder: Path, fb: SftpBackend, mb: RabbitBackend, url: str, name: str, out: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    flows = {
        "files": {
            "source": {
                "instance": "remote",
                "path": "in",
                "poll_interval": "300ms",
                "min_age": "0s",
                "after": "delete",
            },
            "target": {"type": "directory", "path": str(out / "files")},
            "retry": {"attempts": 3, "backoff": "100ms", "max_backoff": "1s"},
        },
        "msgs": {
            "source": {"instance": "broker", **mb.source_config()},
            "target": {"type": "directory", "path": str(out / "msgs")},
        },
    }
    return write_config(
        folder,
        {"remote": fb.instance_config(), "broker": mb.instance_config()},
        flows,
        state=f"{url}?lease={LEASE}",
        replica=name,
    )


async def ledger(url: str) -> list[Any]:
    conn = await asyncpg.connect(url)
    try:
        return list(await conn.fetch("SELECT flow, id, state, attempts, owner, settled FROM conveyor_items"))
    finally:
        await conn.close()


@pytest.mark.timeout(600)
async def test_three_replicas_one_killed(
    sftp_openssh_backend: SftpBackend, rabbitmq_backend: RabbitBackend, pg_url: str, tmp_path: Path
) -> None:
    fb, mb = sftp_openssh_backend, rabbitmq_backend
    for i in range(N_FILES):
        fb.put(f"in/r{i:04}.dat", os.urandom(64) + str(i).encode())
    msgs = [os.urandom(64) + str(i).encode() for i in range(N_MSGS)]
    await mb.publish(msgs)
    out = tmp_path / "out"
    names = ["r1", "r2", "r3"]
    procs = {n: DaemonProcess(replica_config(tmp_path / n, fb, mb, pg_url, n, out)).start() for n in names}
    started = time.monotonic()

    def done() -> int:
        return count_bodies(out / "files") + count_bodies(out / "msgs")

    try:
        await wait_for(lambda: done() >= (N_FILES + N_MSGS) // 3, 120, 0.1)
        victim = "r1"

        async def victim_busy() -> bool:
            return any(r["owner"] == victim and r["state"] == "in_flight" for r in await ledger(pg_url))

        await wait_for(victim_busy, 30, 0.02)  # kill it while it holds leases
        procs[victim].kill9()
        killed_at = done()
        rows = await ledger(pg_url)  # frozen now: what the dead replica held
        held = {(r["flow"], r["id"]) for r in rows if r["owner"] == victim and r["state"] == "in_flight"}

        async def finished() -> bool:
            return (
                count_bodies(out / "files") == N_FILES
                and fb.names("in") == []
                and count_bodies(out / "msgs") == N_MSGS
                and await mb.pending() == 0
            )

        await wait_for(finished, 180, 0.5)
        elapsed = time.monotonic() - started
    finally:
        for p in procs.values():
            if p.proc is not None and p.proc.poll() is None:
                assert p.stop() == 0
    rows = await ledger(pg_url)
    by_key = {(r["flow"], r["id"]): r for r in rows}

    # Everything delivered and settled; one body and one sidecar per id.
    assert sum(1 for r in rows if r["flow"] == "files" and r["state"] == "delivered") == N_FILES
    assert sum(1 for r in rows if r["flow"] == "msgs" and r["state"] == "delivered") == N_MSGS
    # Unsettled rows: the killed replica deleted the file / acked, and died before writing "settled"
    # (or its ack was lost and the broker's redelivery was acked by another replica).
    unsettled = [dict(r) for r in rows if not r["settled"]]
    assert all(r["owner"] == "r1" for r in unsettled if r["flow"] == "files"), unsettled
    for flow, count in (("files", N_FILES), ("msgs", N_MSGS)):
        metas = sidecars(out / flow)
        assert len(metas) == count and len({m["id"] for m in metas}) == count
    assert not [p for n in ("r2", "r3") for p in (tmp_path / n / "spool").glob("*.spool")], "spool left over"

    # Each id confirmed by exactly one replica, except the killed one's unfinished ones.
    per: dict[str, dict[tuple[str, str], int]] = {n: deliveries(p.logs()) for n, p in procs.items()}
    confirmed: dict[tuple[str, str], list[str]] = {}
    for n, d in per.items():
        for key, count in d.items():
            confirmed.setdefault(key, []).extend([n] * count)
    assert set(confirmed) == set(by_key), "every ledger row was confirmed by some replica's target"
    twice = {k: v for k, v in confirmed.items() if len(v) > 1}
    duplicates = {k: v for k, v in twice.items() if v.count("r1") == 0 or len(v) - v.count("r1") > 1}
    assert duplicates == {}, f"delivered by two live replicas: {list(duplicates.items())[:5]}"
    assert len(twice) <= 2 * 16 * 2, "only what the killed replica had in flight is redelivered"

    # The killed replica's leases were taken over by the others.
    assert held, "the killed replica held nothing in flight"
    for key in held:
        r = by_key[key]
        assert r["state"] == "delivered" and r["owner"] in ("r2", "r3") and r["attempts"] >= 2, dict(r)
    owners = {n: sum(1 for r in rows if r["owner"] == n) for n in names}
    assert all(owners[n] > 0 for n in names), owners
    record(
        "3 replicas on PostgreSQL, 1,000 SFTP files + 2,000 RabbitMQ messages, one replica kill -9",
        moved=N_FILES + N_MSGS,
        lost=0,
        duplicates=0,
        redelivered_after_kill=len(twice),
        taken_over=len(held),
        unsettled_by_killed=len(unsettled),
        rows_per_replica=owners,
        delivered_at_kill=killed_at,
        seconds=round(elapsed, 1),
    )
