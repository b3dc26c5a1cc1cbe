"""SQLite state store (WAL) with group commit.

All SQL runs on one worker thread that owns the connection. Writes that arrive while a
commit is under way are gathered and committed together, so a burst of 1,000 deliveries
costs a handful of fsyncs rather than 1,000, while every caller still returns only after
its own write is durable (``synchronous=FULL``). A batch with no durable write in it (claims,
``settled``, releases) commits without an fsync (``synchronous=NORMAL``): the next durable
commit's fsync of the log covers it, and a crash before that loses only what such writes may lose.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

from conveyor.batched import Handoff, resolve_all
from conveyor.private import private_file, tighten
from conveyor.state.base import Item, Progress, TargetItem

SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    flow TEXT NOT NULL,
    id TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    settled INTEGER NOT NULL DEFAULT 0,
    name TEXT, path TEXT, size INTEGER, mtime REAL,
    owner TEXT, lease_until REAL,
    first_seen REAL NOT NULL,
    updated REAL NOT NULL,
    PRIMARY KEY (flow, id)
);
CREATE INDEX IF NOT EXISTS items_by_state ON items (flow, state, updated);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', '1');
"""
"""Version 1, as every state file began; :data:`MIGRATIONS` take it to the current version."""

MIGRATIONS: list[list[str]] = [
    [  # version 2: each target's delivery of an item (flows with a targets: list)
        "ALTER TABLE items ADD COLUMN no_target INTEGER NOT NULL DEFAULT 0",
        """CREATE TABLE IF NOT EXISTS item_targets (
            flow TEXT NOT NULL,
            id TEXT NOT NULL,
            target TEXT NOT NULL,
            state TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            last_error TEXT,
            updated REAL NOT NULL,
            PRIMARY KEY (flow, id, target)
        )""",
    ],
    [  # version 3: how far a split step got through an item, per target ('' for a flow's one target)
        """CREATE TABLE IF NOT EXISTS item_progress (
            flow TEXT NOT NULL,
            id TEXT NOT NULL,
            target TEXT NOT NULL,
            mark TEXT NOT NULL,
            position INTEGER NOT NULL,
            updated REAL NOT NULL,
            PRIMARY KEY (flow, id, target)
        )""",
    ],
]
"""Each entry migrates from version i + 1 to i + 2; append, never edit. A version older than this
conveyor's still opens here: what it does not know of (a new table, a column with a default) it
leaves alone."""

_COLS = "flow, id, state, attempts, last_error, settled, name, path, size, mtime, owner, first_seen, updated, no_target"
_Job = tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any], int]
_READ, _WRITE, _DURABLE = 0, 1, 2
"""A read; a write whose caller may go on before the commit; a write that must be on disk first."""


_CLAIM = f"""
INSERT INTO items (flow, id, state, attempts, name, path, size, mtime, owner, lease_until, first_seen, updated)
VALUES (?, ?, 'in_flight', 1, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (flow, id) DO UPDATE SET
    state = 'in_flight', attempts = attempts + 1, owner = excluded.owner, lease_until = excluded.lease_until,
    updated = excluded.updated, name = coalesce(excluded.name, name), path = coalesce(excluded.path, path),
    size = coalesce(excluded.size, size), mtime = coalesce(excluded.mtime, mtime)
WHERE state NOT IN ('delivered', 'failed')
  AND (state <> 'in_flight' OR coalesce(lease_until, 0) <= excluded.updated OR (? AND owner IS NOT excluded.owner))
RETURNING {_COLS}"""
"""One statement: a new item is inserted in flight; a known one is taken unless delivered, failed,
or in flight under a running lease (``takeover``: under a lease of another owner is fine)."""


_TARGET_SET = """
INSERT INTO item_targets (flow, id, target, state, attempts, last_error, updated) VALUES (?, ?, ?, ?, 1, ?, ?)
ON CONFLICT (flow, id, target) DO UPDATE SET
    state = excluded.state, attempts = attempts + 1, last_error = excluded.last_error, updated = excluded.updated"""
"""One target's outcome for an item: its record made or updated, a try counted."""


def _item(row: tuple[Any, ...]) -> Item:
    return Item(
        row[0],
        row[1],
        row[2],
        row[3],
        row[4],
        bool(row[5]),
        row[6],
        row[7],
        row[8],
        row[9],
        row[10],
        row[11],
        row[12],
        bool(row[13]),
    )


def migrate(db: sqlite3.Connection) -> None:
    """Bring a state file to the current schema version, one version per transaction."""
    row = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    version = int(row[0]) if row else 1
    latest = 1 + len(MIGRATIONS)
    if version > latest:
        raise RuntimeError(
            f"the state file has schema version {version}, newer than this conveyor knows ({latest}): upgrade conveyor"
        )
    for v in range(version, latest):
        db.execute("BEGIN IMMEDIATE")
        try:
            for stmt in MIGRATIONS[v - 1]:
                db.execute(stmt)
            db.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(v + 1),))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        logging.getLogger("conveyor.state").info("state schema migrated to version %d", v + 1)


class SqliteStore:
    """The default state store: one SQLite file."""

    def __init__(self, path: str, owner: str) -> None:
        self.path = Path(path)
        self.owner = owner
        self._jobs: Handoff[_Job] | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- plumbing ------------------------------------------------------------
    async def open(self) -> None:
        """Open the file, create the schema, and turn in-flight rows of a dead run back to pending."""
        # 0600 whatever the umask: SQLite gives the -wal and -shm files the database file's mode.
        private_file(self.path)
        for side in ("-wal", "-shm"):
            tighten(Path(f"{self.path}{side}"), 0o600)  # left by an older run
        self._loop = asyncio.get_running_loop()
        self._jobs = Handoff(self._loop)
        ready: asyncio.Future[None] = self._loop.create_future()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="conveyor-state", daemon=True)
        self._thread.start()
        await ready
        # One process owns an SQLite store, so anything in flight belongs to a run that died.
        await self._write(
            lambda db: db.execute(
                "UPDATE items SET state='pending', owner=NULL, lease_until=NULL WHERE state='in_flight'"
            )
        )

    async def close(self) -> None:
        """Finish queued work and close the file."""
        if self._thread is not None and self._jobs is not None:
            self._jobs.close()
            await asyncio.to_thread(self._thread.join)
            self._thread = None

    def _run(self, ready: asyncio.Future[None]) -> None:
        assert self._loop is not None and self._jobs is not None
        try:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            # Making the schema (a new file) or migrating it need not be durable at once: a crash
            # before the first durable commit, whose fsync covers the log written before it, has
            # the next start do it again. A new file then costs the syncs of making its log, not
            # one more per statement, each as slow as the disk is busy.
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA busy_timeout=10000")
            db.executescript(SCHEMA)
            migrate(db)
            db.execute("PRAGMA synchronous=FULL")
        except Exception as e:  # reported to open()
            self._loop.call_soon_threadsafe(ready.set_exception, e)
            return
        self._loop.call_soon_threadsafe(ready.set_result, None)
        stop = False
        synced = True  # the connection's synchronous setting is FULL
        while not stop:
            batch, stop = self._jobs.take()  # everything queued: that is the group commit
            early: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
            durable: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
            writes = any(j[2] != _READ for j in batch)
            if writes:
                must_sync = any(j[2] == _DURABLE for j in batch)
                if must_sync != synced:
                    # Set between transactions; the log is appended in order, so a FULL commit's
                    # fsync makes the NORMAL commits before it durable too.
                    db.execute(f"PRAGMA synchronous={'FULL' if must_sync else 'NORMAL'}")
                    synced = must_sync
                db.execute("BEGIN IMMEDIATE")  # take the write lock up front: no deadlock with another writer
            for fn, fut, kind in batch:
                try:
                    result: tuple[asyncio.Future[Any], Any, BaseException | None] = (fut, fn(db), None)
                except BaseException as e:
                    result = (fut, None, e)
                (durable if kind == _DURABLE else early).append(result)
            if early:
                # Reads and non-durable writes need not wait for the fsync of the commit:
                # a claim lost in a crash only loses an attempt count.
                self._loop.call_soon_threadsafe(resolve_all, early)
            if writes:
                try:
                    db.execute("COMMIT")
                except BaseException as e:
                    durable = [(f, None, e) for f, _, _ in durable]
            if durable:
                self._loop.call_soon_threadsafe(resolve_all, durable)
        db.close()

    def _submit(self, fn: Callable[[sqlite3.Connection], Any], kind: int) -> asyncio.Future[Any]:
        if self._thread is None or self._loop is None or self._jobs is None:
            raise RuntimeError("state store is not open")
        fut: asyncio.Future[Any] = self._loop.create_future()
        self._jobs.put((fn, fut, kind))  # sent with the rest of this loop turn's jobs
        return fut

    async def _write(self, fn: Callable[[sqlite3.Connection], Any], durable: bool = True) -> Any:
        return await self._submit(fn, _DURABLE if durable else _WRITE)

    async def _read(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        return await self._submit(fn, _READ)

    # -- the StateStore interface ---------------------------------------------
    async def get_many(self, flow: str, ids: list[str]) -> dict[str, Item]:
        """Known items among ``ids`` (queried in chunks to stay under SQLite's variable limit)."""

        def q(db: sqlite3.Connection) -> dict[str, Item]:
            out: dict[str, Item] = {}
            for i in range(0, len(ids), 500):
                part = ids[i : i + 500]
                marks = ",".join("?" * len(part))
                for row in db.execute(f"SELECT {_COLS} FROM items WHERE flow=? AND id IN ({marks})", [flow, *part]):
                    out[row[1]] = _item(row)
            return out

        if not ids:
            return {}
        result: dict[str, Item] = await self._read(q)
        return result

    async def claim(
        self, flow: str, id: str, info: dict[str, Any], lease: float, *, takeover: bool = False
    ) -> Item | None:
        """Mark in flight and count an attempt, unless delivered, failed or leased elsewhere."""
        now = time.time()

        args = (
            flow,
            id,
            info.get("name"),
            info.get("path"),
            info.get("size"),
            info.get("mtime"),
            self.owner,
            now + lease,
            now,
            now,
            int(takeover),
        )

        def q(db: sqlite3.Connection) -> Item | None:
            rows = db.execute(_CLAIM, args).fetchall()  # all: the statement must end before COMMIT
            return _item(rows[0]) if rows else None

        result: Item | None = await self._write(q, durable=False)
        return result

    async def claim_many(
        self, flow: str, ids: Sequence[str], lease: float, *, takeover: bool = False
    ) -> dict[str, Item | None]:
        """Claim each of ``ids`` as :meth:`claim` does, in one transaction."""
        now = time.time()
        keys = list(dict.fromkeys(ids))

        def q(db: sqlite3.Connection) -> dict[str, Item | None]:
            out: dict[str, Item | None] = {}
            for id in keys:
                args = (flow, id, None, None, None, None, self.owner, now + lease, now, now, int(takeover))
                rows = db.execute(_CLAIM, args).fetchall()
                out[id] = _item(rows[0]) if rows else None
            return out

        if not keys:
            return {}
        result: dict[str, Item | None] = await self._write(q, durable=False)
        return result

    def _set(self, sql: str, *args: Any) -> Callable[[sqlite3.Connection], int]:
        def q(db: sqlite3.Connection) -> int:
            return db.execute(sql, args).rowcount

        return q

    async def delivered(self, flow: str, id: str, *, no_target: bool = False, targets: Sequence[str] = ()) -> None:
        """The target confirmed (every target the item was routed to; ``no_target``: it matched none;
        ``targets``: the confirmations of those targets recorded in the same commit)."""
        now = time.time()
        item = self._set(
            "UPDATE items SET state='delivered', no_target=?, last_error=NULL, lease_until=NULL, updated=?"
            " WHERE flow=? AND id=?",
            int(no_target),
            now,
            flow,
            id,
        )
        if not targets:
            await self._write(item)
            return

        def q(db: sqlite3.Connection) -> int:
            for target in targets:
                db.execute(_TARGET_SET, (flow, id, target, "delivered", None, now))
            return item(db)

        await self._write(q)

    async def delivered_many(self, flow: str, ids: Sequence[str]) -> None:
        """Record each of ``ids`` delivered, in one durable commit."""
        now = time.time()
        rows = [(now, flow, id) for id in ids]

        def q(db: sqlite3.Connection) -> int:
            sql = "UPDATE items SET state='delivered', no_target=0, last_error=NULL, lease_until=NULL, updated=?"
            return db.executemany(sql + " WHERE flow=? AND id=?", rows).rowcount

        if rows:
            await self._write(q)

    async def target_delivered(self, flow: str, id: str, target: str) -> None:
        """One target of a ``targets:`` list confirmed (on disk before this returns)."""
        await self._write(self._set(_TARGET_SET, flow, id, target, "delivered", None, time.time()))

    async def target_failed(self, flow: str, id: str, target: str, error: str) -> None:
        """One target of a ``targets:`` list failed the item."""
        await self._write(self._set(_TARGET_SET, flow, id, target, "failed", error[:2000], time.time()), durable=False)

    async def targets(self, flow: str, ids: list[str]) -> dict[str, dict[str, TargetItem]]:
        """Each target's record of the items among ``ids``."""

        def q(db: sqlite3.Connection) -> dict[str, dict[str, TargetItem]]:
            out: dict[str, dict[str, TargetItem]] = {}
            for i in range(0, len(ids), 500):
                part = ids[i : i + 500]
                marks = ",".join("?" * len(part))
                rows = db.execute(
                    "SELECT id, target, state, attempts, last_error, updated FROM item_targets"
                    f" WHERE flow=? AND id IN ({marks}) ORDER BY target",
                    [flow, *part],
                )
                for r in rows:
                    out.setdefault(r[0], {})[r[1]] = TargetItem(r[1], r[2], r[3], r[4], r[5])
            return out

        if not ids:
            return {}
        result: dict[str, dict[str, TargetItem]] = await self._read(q)
        return result

    async def settled(self, flow: str, id: str) -> None:
        """The after action / ack is done."""
        # Queued, not awaited: if lost in a crash, the completion (delete, move, ack) is simply redone.
        fut = self._submit(
            self._set("UPDATE items SET settled=1, updated=? WHERE flow=? AND id=?", time.time(), flow, id), _WRITE
        )
        fut.add_done_callback(_consume)

    async def settled_many(self, flow: str, ids: Sequence[str]) -> None:
        """Record each of ``ids`` settled (queued, not awaited, as :meth:`settled`)."""
        now = time.time()
        rows = [(now, flow, id) for id in ids]

        def q(db: sqlite3.Connection) -> int:
            return db.executemany("UPDATE items SET settled=1, updated=? WHERE flow=? AND id=?", rows).rowcount

        if rows:
            self._submit(q, _WRITE).add_done_callback(_consume)

    async def failed(self, flow: str, id: str, error: str, *, final: bool) -> None:
        """Record a failed attempt."""
        await self._write(
            self._set(
                "UPDATE items SET state=?, last_error=?, owner=NULL, lease_until=NULL, updated=? WHERE flow=? AND id=?",
                "failed" if final else "pending",
                error[:2000],
                time.time(),
                flow,
                id,
            ),
            durable=final,
        )

    async def release(self, flow: str, id: str) -> None:
        """Give an in-flight item back."""
        await self._write(
            self._set(
                "UPDATE items SET state='pending', owner=NULL, lease_until=NULL, updated=?"
                " WHERE flow=? AND id=? AND state='in_flight'",
                time.time(),
                flow,
                id,
            ),
            durable=False,
        )

    async def search(self, flows: list[str], text: str | None, state: str | None, limit: int) -> list[Item]:
        """Items of ``flows`` matching ``text`` (id, or part of name or path), failed first.

        One query per state, in the order shown: each picks rowids from the (flow, state, updated)
        index, so a page of the newest items costs milliseconds however long the ledger is."""
        if not flows:
            return []
        marks = ",".join("?" * len(flows))
        match, extra = "", cast(tuple[str, ...], ())
        if text:
            like = "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            match = " AND (id=? OR name LIKE ? ESCAPE '\\' OR path LIKE ? ESCAPE '\\')"
            extra = (text, like, like)
        order = [state] if state else ["failed", "in_flight", "pending", "delivered"]

        def q(db: sqlite3.Connection) -> list[Item]:
            out: list[Item] = []
            for st in order:
                rows = db.execute(
                    f"SELECT {_COLS} FROM items WHERE rowid IN (SELECT rowid FROM items WHERE flow IN ({marks})"
                    f" AND state=?{match} ORDER BY updated DESC LIMIT ?) ORDER BY updated DESC",
                    (*flows, st, *extra, limit - len(out)),
                )
                out += [_item(r) for r in rows]
                if len(out) >= limit:
                    break
            return out

        result: list[Item] = await self._read(q)
        return result

    async def counts(self, flows: list[str], states: list[str]) -> dict[str, dict[str, int]]:
        """{flow: {state: n}} for those flows and states (read from the state index)."""
        if not flows or not states:
            return {}
        sql = (
            f"SELECT flow, state, count(*) FROM items WHERE flow IN ({','.join('?' * len(flows))})"
            f" AND state IN ({','.join('?' * len(states))}) GROUP BY flow, state"
        )

        def q(db: sqlite3.Connection) -> dict[str, dict[str, int]]:
            out: dict[str, dict[str, int]] = {}
            for flow, st, n in db.execute(sql, (*flows, *states)):
                out.setdefault(flow, {})[st] = n
            return out

        result: dict[str, dict[str, int]] = await self._read(q)
        return result

    async def list(self, flow: str, state: str | None, limit: int = 100, offset: int = 0) -> list[Item]:
        """Items of a flow, newest first."""

        def q(db: sqlite3.Connection) -> list[Item]:
            if state:
                rows = db.execute(
                    f"SELECT {_COLS} FROM items WHERE flow=? AND state=? ORDER BY updated DESC LIMIT ? OFFSET ?",
                    (flow, state, limit, offset),
                )
            else:
                rows = db.execute(
                    f"SELECT {_COLS} FROM items WHERE flow=? ORDER BY updated DESC LIMIT ? OFFSET ?",
                    (flow, limit, offset),
                )
            return [_item(r) for r in rows]

        result: list[Item] = await self._read(q)
        return result

    async def arrivals(self, flow: str, since: float, limit: int) -> int:
        """Items first seen at or after ``since``, up to ``limit``."""

        def q(db: sqlite3.Connection) -> int:
            # A row's updated is never before its first_seen: the bound on updated lets the
            # (flow, state, updated) index answer without reading the flow's older rows.
            row = db.execute(
                "SELECT count(*) FROM (SELECT 1 FROM items WHERE flow=? AND state IN "
                "('pending', 'in_flight', 'delivered', 'failed') AND updated >= ? AND first_seen >= ? LIMIT ?)",
                (flow, since, since, limit),
            ).fetchone()
            return int(row[0])

        result: int = await self._read(q)
        return result

    async def retry(self, flow: str, id: str) -> bool:
        """failed → pending, attempts reset."""
        n = await self._write(
            self._set(
                "UPDATE items SET state='pending', attempts=0, updated=? WHERE flow=? AND id=? AND state='failed'",
                time.time(),
                flow,
                id,
            )
        )
        return bool(n)

    async def forget(self, flow: str, id: str) -> bool:
        """Drop the row and its targets' records."""

        def q(db: sqlite3.Connection) -> int:
            db.execute("DELETE FROM item_targets WHERE flow=? AND id=?", (flow, id))
            db.execute("DELETE FROM item_progress WHERE flow=? AND id=?", (flow, id))
            return db.execute("DELETE FROM items WHERE flow=? AND id=?", (flow, id)).rowcount

        n = await self._write(q)
        return bool(n)

    async def prune(self, older_than: float) -> int:
        """Delete settled rows not touched since ``older_than``, and their targets' records."""
        done = "SELECT flow, id FROM items WHERE settled=1 AND state='delivered' AND updated < ?"

        def q(db: sqlite3.Connection) -> int:
            db.execute(f"DELETE FROM item_targets WHERE (flow, id) IN ({done})", (older_than,))
            db.execute(f"DELETE FROM item_progress WHERE (flow, id) IN ({done})", (older_than,))
            sql = "DELETE FROM items WHERE settled=1 AND state='delivered' AND updated < ?"
            return db.execute(sql, (older_than,)).rowcount

        n: int = await self._write(q)
        return n

    async def progress(self, flow: str, id: str, target: str) -> Progress | None:
        """The recorded progress of a split, if any."""

        def q(db: sqlite3.Connection) -> Progress | None:
            sql = "SELECT mark, position FROM item_progress WHERE flow=? AND id=? AND target=?"
            row = db.execute(sql, (flow, id, target)).fetchone()
            return None if row is None else Progress(row[0], row[1])

        result: Progress | None = await self._read(q)
        return result

    async def set_progress(self, flow: str, id: str, target: str, progress: Progress) -> None:
        """Record a split's progress, durably."""
        await self._write(
            self._set(
                "INSERT INTO item_progress (flow, id, target, mark, position, updated) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (flow, id, target) DO UPDATE SET mark=excluded.mark, position=excluded.position, "
                "updated=excluded.updated",
                flow,
                id,
                target,
                progress.mark,
                progress.position,
                time.time(),
            )
        )

    async def progress_of(self, flow: str, target: str) -> dict[str, Progress]:
        """Every progress record of ``flow`` for ``target``."""

        def q(db: sqlite3.Connection) -> dict[str, Progress]:
            sql = "SELECT id, mark, position FROM item_progress WHERE flow=? AND target=?"
            return {r[0]: Progress(r[1], r[2]) for r in db.execute(sql, (flow, target))}

        result: dict[str, Progress] = await self._read(q)
        return result

    async def drop_progress(self, flow: str, id: str, target: str) -> None:
        """Forget one progress record, durably."""
        await self._write(self._set("DELETE FROM item_progress WHERE flow=? AND id=? AND target=?", flow, id, target))


def _consume(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        import logging

        logging.getLogger("conveyor.state").warning("recording a settle failed: %s", fut.exception())
