"""The StateStore contract, run over both stores (SQLite and PostgreSQL on the real server),
plus what only the shared PostgreSQL store promises: claim races between replicas, lease
expiry takeover, heartbeats, open() leaving other replicas' rows alone, schema versions."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from conveyor.state import StateStore, open_store
from conveyor.state.base import Progress
from conveyor.state.postgres import MIGRATIONS, PostgresStore
from tests.servers.postgres import create_database, drop_database, pg_url

__all__ = ["pg_url"]

Opener = Callable[..., Awaitable[StateStore]]


@pytest.fixture(params=["sqlite", "postgres"])
async def opener(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Opener]:
    """Opens stores (one per owner name) on one shared location: an SQLite file or a PG database."""
    url = str(tmp_path / "state.db") if request.param == "sqlite" else await create_database()
    stores: list[StateStore] = []

    async def open_(owner: str, lease: float | None = None) -> StateStore:
        u = url if lease is None else f"{url}?lease={lease}"
        s = open_store(u, owner)
        await s.open()
        stores.append(s)
        return s

    yield open_
    for s in stores:
        await s.close()
    if request.param == "postgres":
        await drop_database(url)


INFO = {"name": "a.csv", "path": "in/a.csv", "size": 10, "mtime": 1_700_000_000.5}


async def test_claim_deliver_settle(opener: Opener) -> None:
    s = await opener("r1")
    item = await s.claim("f", "id1", INFO, 60)
    assert item is not None
    assert (item.state, item.attempts, item.owner, item.name, item.size) == ("in_flight", 1, "r1", "a.csv", 10)
    assert item.mtime == pytest.approx(INFO["mtime"])
    assert await s.claim("f", "id1", INFO, 60) is None, "in flight under a running lease"
    await s.delivered("f", "id1")
    assert await s.claim("f", "id1", INFO, 60) is None, "delivered is never claimed again"
    got = await s.get_many("f", ["id1", "nope"])
    assert list(got) == ["id1"] and got["id1"].state == "delivered" and not got["id1"].settled
    await s.settled("f", "id1")
    assert (await s.get_many("f", ["id1"]))["id1"].settled
    assert (await s.get_many("other-flow", ["id1"])) == {}


async def test_a_batch_is_claimed_delivered_and_settled_in_one_write_each(opener: Opener) -> None:
    s = await opener("r1")
    other = await opener("r2")
    assert await other.claim("f", "held", INFO, 60) is not None, "another replica's live lease"
    assert await s.claim("f", "done", INFO, 60) is not None
    await s.delivered("f", "done")
    assert await s.claim("f", "bad", INFO, 60) is not None
    await s.failed("f", "bad", "boom", final=True)
    ids = [f"m{i}" for i in range(1200)]  # past SQLite's variable limit, in one call
    got = await s.claim_many("f", [*ids, "m0", "done", "bad", "held"], 60)
    assert list(got) == [*ids, "done", "bad", "held"], "each id once, in order"
    assert got["done"] is None and got["bad"] is None and got["held"] is None
    first = got["m0"]
    assert first is not None and (first.state, first.attempts, first.owner) == ("in_flight", 1, "r1")
    assert (await s.claim_many("f", ids[:2], 60)) == {"m0": None, "m1": None}, "in flight under our lease"
    taken = await s.claim_many("f", ["held"], 60, takeover=True)
    assert taken["held"] is not None and taken["held"].owner == "r1", "a broker's message is taken over"
    await s.delivered_many("f", [*ids, "held"])
    rows = await s.get_many("f", [*ids, "held"])
    assert len(rows) == 1201 and all(r.state == "delivered" and not r.settled for r in rows.values())
    await s.settled_many("f", [*ids, "held"])
    # settled is not awaited to disk: a read after a durable write sees it
    await s.set_progress("f", "x", "t", Progress("m", 1))
    rows = await s.get_many("f", [*ids, "held"])
    assert all(r.settled for r in rows.values())
    assert await s.claim_many("f", [], 60) == {}
    await s.delivered_many("f", [])
    await s.settled_many("f", [])


async def test_failed_release_retry_forget(opener: Opener) -> None:
    s = await opener("r1")
    assert await s.claim("f", "x", {}, 60)
    await s.failed("f", "x", "boom", final=False)
    x = (await s.get_many("f", ["x"]))["x"]
    assert (x.state, x.last_error, x.owner) == ("pending", "boom", None)
    again = await s.claim("f", "x", {"name": "x"}, 60)
    assert again is not None and again.attempts == 2
    await s.failed("f", "x", "e" * 5000, final=True)
    x = (await s.get_many("f", ["x"]))["x"]
    assert x.state == "failed" and x.last_error is not None and len(x.last_error) == 2000
    assert await s.claim("f", "x", {}, 60) is None
    assert await s.retry("f", "x") is True
    assert await s.retry("f", "x") is False, "only failed items are retried"
    x = (await s.get_many("f", ["x"]))["x"]
    assert (x.state, x.attempts) == ("pending", 0)
    assert await s.claim("f", "x", {}, 60)
    await s.release("f", "x")
    assert (await s.get_many("f", ["x"]))["x"].state == "pending"
    assert await s.claim("f", "x", {}, 60)
    assert await s.forget("f", "x") is True
    assert await s.forget("f", "x") is False
    fresh = await s.claim("f", "x", {}, 60)
    assert fresh is not None and fresh.attempts == 1


async def test_list_and_prune(opener: Opener) -> None:
    s = await opener("r1")
    for i in range(5):
        assert await s.claim("f", f"i{i}", {"name": f"n{i}"}, 60)
        if i < 3:
            await s.delivered("f", f"i{i}")
        await asyncio.sleep(0.01)  # distinct "updated" stamps
    await s.settled("f", "i0")
    await s.settled("f", "i1")
    everything = await s.list("f", None)
    assert [i.id for i in everything] == ["i4", "i3", "i1", "i0", "i2"] or len(everything) == 5
    assert everything[0].updated >= everything[-1].updated
    assert {i.id for i in await s.list("f", "delivered")} == {"i0", "i1", "i2"}
    assert {i.id for i in await s.list("f", "in_flight")} == {"i3", "i4"}
    assert len(await s.list("f", None, limit=2)) == 2
    assert len(await s.list("f", None, limit=2, offset=4)) == 1
    assert await s.prune(time.time() - 3600) == 0
    assert await s.prune(time.time() + 5) == 2, "only settled, delivered rows go"
    assert {i.id for i in await s.list("f", None)} == {"i2", "i3", "i4"}


async def test_each_targets_delivery_is_recorded(opener: Opener) -> None:
    """A flow with a targets: list records each target's outcome; forget and prune take those
    records with the item, and an item routed to no target says so."""
    s = await opener("r1")
    assert await s.claim("f", "a", INFO, 60)
    await s.target_failed("f", "a", "sftp", "connection refused")
    await s.target_delivered("f", "a", "archive")
    got = (await s.targets("f", ["a", "none"]))["a"]
    assert list(got) == ["archive", "sftp"]
    assert (got["archive"].state, got["archive"].attempts, got["archive"].last_error) == ("delivered", 1, None)
    assert (got["sftp"].state, got["sftp"].attempts, got["sftp"].last_error) == ("failed", 1, "connection refused")
    await s.target_delivered("f", "a", "sftp")
    got = (await s.targets("f", ["a"]))["a"]
    assert (got["sftp"].state, got["sftp"].attempts, got["sftp"].last_error) == ("delivered", 2, None)
    await s.delivered("f", "a")
    assert not (await s.get_many("f", ["a"]))["a"].no_target
    assert await s.targets("g", ["a"]) == {}, "per flow"

    assert await s.claim("f", "b", INFO, 60)
    await s.delivered("f", "b", no_target=True)
    b = (await s.get_many("f", ["b"]))["b"]
    assert (b.state, b.no_target) == ("delivered", True) and b.as_dict()["no_target"] is True

    assert await s.forget("f", "a")
    assert await s.targets("f", ["a"]) == {}
    assert await s.claim("f", "c", INFO, 60)
    await s.target_delivered("f", "c", "archive")
    await s.delivered("f", "c", targets=["sftp"])  # the last target's record and the item's, in one write
    got = (await s.targets("f", ["c"]))["c"]
    assert {t: r.state for t, r in got.items()} == {"archive": "delivered", "sftp": "delivered"}
    assert (await s.get_many("f", ["c"]))["c"].state == "delivered"
    await s.settled("f", "c")
    assert await s.prune(time.time() + 5) == 1
    assert await s.targets("f", ["c"]) == {}


async def test_split_progress_is_recorded_per_target_and_goes_with_the_item(opener: Opener) -> None:
    """A split's progress: per item and target, replaced as it moves on; forget and prune take it."""
    s = await opener("r1")
    assert await s.progress("f", "a", "") is None
    assert await s.claim("f", "a", INFO, 60)
    await s.set_progress("f", "a", "", Progress("in1", 100))
    await s.set_progress("f", "a", "", Progress("in1", 2_000_000_000_000))
    await s.set_progress("f", "a", "copy", Progress("in2", 7))
    assert await s.progress("f", "a", "") == Progress("in1", 2_000_000_000_000)
    assert await s.progress("f", "a", "copy") == Progress("in2", 7)
    assert await s.progress("g", "a", "") is None, "per flow"
    assert await s.forget("f", "a")
    assert await s.progress("f", "a", "") is None and await s.progress("f", "a", "copy") is None
    assert await s.claim("f", "b", INFO, 60)
    await s.set_progress("f", "b", "", Progress("in1", 5))
    await s.delivered("f", "b")
    await s.settled("f", "b")
    assert await s.prune(time.time() + 5) == 1
    assert await s.progress("f", "b", "") is None


async def test_progress_records_of_a_target_are_listed_and_dropped(opener: Opener) -> None:
    """A collect step's batch records: all of a flow's for one target key, each dropped on its own."""
    s = await opener("r1")
    assert await s.progress_of("f", "collect:") == {}
    await s.set_progress("f", "b1", "collect:", Progress('{"name": "x"}', 0))
    await s.set_progress("f", "b2", "collect:", Progress('{"name": "y"}', 1))
    await s.set_progress("f", "b3", "collect:other", Progress("z", 0))
    await s.set_progress("g", "b4", "collect:", Progress("w", 0))
    assert await s.progress_of("f", "collect:") == {
        "b1": Progress('{"name": "x"}', 0),
        "b2": Progress('{"name": "y"}', 1),
    }
    await s.drop_progress("f", "b1", "collect:")
    assert list(await s.progress_of("f", "collect:")) == ["b2"]
    assert list(await s.progress_of("g", "collect:")) == ["b4"]


async def test_arrivals_counts_items_first_seen_since(opener: Opener) -> None:
    s = await opener("r1")
    assert await s.claim("f", "old", {}, 60)
    await s.delivered("f", "old")
    await asyncio.sleep(0.05)
    since = time.time()
    await asyncio.sleep(0.05)
    assert await s.arrivals("f", since, 10) == 0
    await s.failed("f", "old", "touched later, but first seen before", final=True)
    assert await s.arrivals("f", since, 10) == 0, "an older item updated since is no arrival"
    for i in range(4):
        assert await s.claim("f", f"new{i}", {}, 60)
    await s.delivered("f", "new0")
    await s.failed("f", "new1", "boom", final=True)
    await s.release("f", "new2")
    assert await s.arrivals("f", since, 10) == 4, "whatever became of them"
    assert await s.arrivals("f", since, 2) == 2, "counted no further than the limit"
    assert await s.arrivals("other", since, 10) == 0


async def test_search_and_counts(opener: Opener) -> None:
    """What the status page asks: failed items first, text in names, paths or a whole id, per flow
    and state; counts by flow and state. A name with LIKE wildcards is matched as text."""
    s = await opener("r1")
    names = ["Orders_1.csv", "orders-2.csv", "100%.csv", "other.txt", "ORDERS-3.csv"]
    for i, name in enumerate(names):
        assert await s.claim("f", f"id{i}", {"name": name, "path": f"in/{name}"}, 60)
        await asyncio.sleep(0.01)
    await s.delivered("f", "id0")
    await s.delivered("f", "id1")
    await s.failed("f", "id2", "no", final=True)
    await s.failed("f", "id4", "no", final=True)
    assert await s.claim("g", "id9", {"name": "orders-9.csv"}, 60)
    everything = await s.search(["f"], None, None, 50)
    assert [i.id for i in everything][:2] == ["id4", "id2"], "failed first, newest first"
    assert {i.id for i in everything} == {f"id{i}" for i in range(5)}
    assert [i.id for i in await s.search(["f"], "orders", None, 50)] == ["id4", "id1", "id0"]
    assert [i.id for i in await s.search(["f", "g"], "ORDERS", "delivered", 50)] == ["id1", "id0"]
    assert [i.id for i in await s.search(["f"], "%", None, 50)] == ["id2"]
    assert [i.id for i in await s.search(["f"], "_1", None, 50)] == ["id0"]
    assert [i.id for i in await s.search(["f"], "id3", None, 50)] == ["id3"]
    assert [i.id for i in await s.search(["f", "g"], "orders", None, 2)] == ["id4", "id9"]
    assert await s.search([], None, None, 50) == []
    counts = await s.counts(["f", "g"], ["failed", "in_flight", "pending"])
    assert counts == {"f": {"failed": 2, "in_flight": 1}, "g": {"in_flight": 1}}


async def test_claim_race_has_exactly_one_winner(opener: Opener, request: pytest.FixtureRequest) -> None:
    a = await opener("replica-a")
    # SQLite is one process's store: concurrent claimers share one store object there.
    sqlite = request.node.callspec.params["opener"] == "sqlite"
    b = a if sqlite else await opener("replica-b")
    ids = [f"race-{i}" for i in range(150)]
    calls = [(s, i) for i in ids for s in (a, b) for _ in range(4)]
    random.shuffle(calls)

    async def claim(s: StateStore, i: str) -> Any:
        await asyncio.sleep(random.random() * 0.2)  # spread over many batches of both writers
        return await s.claim("f", i, {"name": i}, 60)

    results = await asyncio.gather(*(claim(s, i) for s, i in calls))
    winners: dict[str, list[str]] = {}
    for (s, i), r in zip(calls, results, strict=True):
        if r is not None:
            winners.setdefault(i, []).append(s.owner)
    assert sorted(winners) == sorted(ids)
    assert all(len(w) == 1 for w in winners.values()), {k: v for k, v in winners.items() if len(v) > 1}
    rows = await a.get_many("f", ids)
    assert all(rows[i].owner == winners[i][0] and rows[i].attempts == 1 for i in ids)
    assert {w[0] for w in winners.values()} == {a.owner, b.owner}, "both replicas won some"


async def test_expired_lease_is_taken_over(opener: Opener, request: pytest.FixtureRequest) -> None:
    a = await opener("replica-a", 0.5)
    # SQLite: one store per file (its open() resets in-flight rows), so the same store re-claims.
    sqlite = request.node.callspec.params["opener"] == "sqlite"
    b = a if sqlite else await opener("replica-b", 0.5)
    assert await a.claim("f", "k", {}, 0.5)
    assert await b.claim("f", "k", {}, 0.5) is None
    if not sqlite:
        await a.close()  # a dies holding the item (no release)
    await asyncio.sleep(1.2)  # the 0.5 s lease runs out
    taken = await b.claim("f", "k", {}, 60)
    assert taken is not None and taken.owner == b.owner and taken.attempts == 2
    await b.delivered("f", "k")
    assert (await b.get_many("f", ["k"]))["k"].state == "delivered"


async def test_broker_claim_takes_over_another_replicas_live_lease(
    opener: Opener, request: pytest.FixtureRequest
) -> None:
    """A broker redelivers a message only when its consumer is gone: waiting out that consumer's
    lease would mean requeueing the message in a loop meanwhile."""
    a = await opener("replica-a", 60)
    sqlite = request.node.callspec.params["opener"] == "sqlite"
    assert await a.claim("f", "m", {}, 60)
    assert await a.claim("f", "m", {}, 60, takeover=True) is None, "this replica's own delivery still runs"
    if sqlite:
        return  # one process per SQLite file: no other replica to take over from
    b = await opener("replica-b", 60)
    assert await b.claim("f", "m", {}, 60) is None, "a file claim respects the lease"
    taken = await b.claim("f", "m", {}, 60, takeover=True)
    assert taken is not None and taken.owner == b.owner and taken.attempts == 2
    await b.delivered("f", "m")
    assert await a.claim("f", "m", {}, 60, takeover=True) is None, "delivered is never claimed again"


# -- PostgreSQL only -------------------------------------------------------------------------
async def test_heartbeat_renews_leases_of_a_live_replica(pg_url: str) -> None:
    a = PostgresStore(f"{pg_url}?lease=1", "replica-a")
    b = PostgresStore(f"{pg_url}?lease=1", "replica-b")
    await a.open()
    await b.open()
    try:
        assert await a.claim("f", "long", {}, 300)
        await asyncio.sleep(2.5)  # more than twice the lease: renewed all along
        assert await b.claim("f", "long", {}, 300) is None
        await a.close()
        await asyncio.sleep(1.3)  # no more heartbeats: the 1 s lease runs out
        won = await b.claim("f", "long", {}, 300)
        assert won is not None and won.owner == "replica-b"
    finally:
        await a.close()
        await b.close()


async def test_open_keeps_other_replicas_rows_and_releases_own(pg_url: str) -> None:
    a = PostgresStore(pg_url, "replica-a")
    await a.open()
    try:
        assert await a.claim("f", "mine", {}, 300)
        other = PostgresStore(pg_url, "replica-b")
        await other.open()
        assert (await other.get_many("f", ["mine"]))["mine"].state == "in_flight"
        assert await other.claim("f", "mine", {}, 300) is None
        await other.close()
        # A restart of replica-a (same name): nobody holds its old in-flight rows any more.
        again = PostgresStore(pg_url, "replica-a")
        await again.open()
        row = (await again.get_many("f", ["mine"]))["mine"]
        assert (row.state, row.owner) == ("pending", None)
        await again.close()
    finally:
        await a.close()


async def test_schema_is_versioned_and_refuses_newer(pg_url: str) -> None:
    s = PostgresStore(pg_url, "r")
    await s.open()
    await s.close()
    await s.open()  # idempotent
    await s.close()
    conn = await asyncpg.connect(pg_url)
    try:
        assert await conn.fetchval("SELECT max(version) FROM conveyor_schema_version") == len(MIGRATIONS)
        await conn.execute("INSERT INTO conveyor_schema_version (version) VALUES (99)")
    finally:
        await conn.close()
    with pytest.raises(RuntimeError, match="newer"):
        await PostgresStore(pg_url, "r").open()


async def test_concurrent_replicas_create_schema_once(pg_url: str) -> None:
    stores = [PostgresStore(pg_url, f"r{i}") for i in range(4)]
    await asyncio.gather(*(s.open() for s in stores))
    for s in stores:
        await s.close()
    conn = await asyncpg.connect(pg_url)
    try:
        got = await conn.fetch("SELECT version FROM conveyor_schema_version ORDER BY version")
        assert [r[0] for r in got] == list(range(1, len(MIGRATIONS) + 1))
    finally:
        await conn.close()


async def test_group_commit_batches_concurrent_writes(pg_url: str) -> None:
    s = PostgresStore(pg_url, "r")
    await s.open()
    try:
        ids = [f"g{i}" for i in range(400)]
        assert all(await asyncio.gather(*(s.claim("f", i, {}, 60) for i in ids)))
        before = s.batches
        await asyncio.gather(*(s.delivered("f", i) for i in ids), *(s.settled("f", i) for i in ids))
        assert s.batches - before < 40, f"{s.batches - before} transactions for 800 writes"
        rows = await s.get_many("f", ids)
        assert all(r.state == "delivered" and r.settled for r in rows.values())
    finally:
        await s.close()


async def test_bad_statement_in_a_batch_fails_only_its_caller(pg_url: str) -> None:
    s = PostgresStore(pg_url, "r")
    await s.open()
    try:
        good = [s.claim("f", f"ok{i}", {}, 60) for i in range(20)]
        bad: Any = s._submit("count", "UPDATE no_such_table SET x=1", (), durable=False)
        results = await asyncio.gather(*good, bad, return_exceptions=True)
        assert all(r is not None and not isinstance(r, BaseException) for r in results[:-1])
        assert isinstance(results[-1], asyncpg.UndefinedTableError)
    finally:
        await s.close()


def test_url_lease_is_stripped() -> None:
    s = PostgresStore("postgresql://u@h:5/db?lease=7&sslmode=disable", "r")
    assert s.lease == 7.0 and s.url == "postgresql://u@h:5/db?sslmode=disable"


async def test_a_version_1_ledger_is_migrated_in_place(pg_url: str) -> None:
    """A ledger written before per-target records: its rows keep their state and open as
    usual; the new table and column arrive with version 2."""
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute("CREATE TABLE conveyor_schema_version (version integer NOT NULL)")
        for stmt in MIGRATIONS[0]:
            await conn.execute(stmt)
        await conn.execute("INSERT INTO conveyor_schema_version (version) VALUES (1)")
        await conn.execute(
            "INSERT INTO conveyor_items (flow, id, state, attempts, settled, first_seen, updated)"
            " VALUES ('f', 'old', 'delivered', 1, false, 1, 1)"
        )
    finally:
        await conn.close()
    s = PostgresStore(pg_url, "r")
    await s.open()
    try:
        old = (await s.get_many("f", ["old"]))["old"]
        assert (old.state, old.settled, old.no_target) == ("delivered", False, False)
        await s.target_delivered("f", "old", "t")
        assert list((await s.targets("f", ["old"]))["old"]) == ["t"]
        await s.set_progress("f", "old", "", Progress("m", 3))
        assert await s.progress("f", "old", "") == Progress("m", 3)
    finally:
        await s.close()
