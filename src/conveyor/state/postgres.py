"""PostgreSQL state store: several replicas share one ledger, PostgreSQL is the coordinator.

Chosen by a ``postgresql://`` (or ``postgres://``) ``state:`` URL. The schema lives in the
URL's database as ``conveyor_items`` plus ``conveyor_schema_version``; conveyor creates and
migrates it itself, under an advisory lock so replicas starting together do not race.

Claims are one ``INSERT ... ON CONFLICT DO UPDATE ... WHERE <claimable> RETURNING``: the
row lock makes exactly one replica win an item, whatever the number of concurrent
claimers. An item is claimable when it is neither delivered nor failed and is not in flight
under a lease that still runs. A replica renews the leases of the items it is delivering
(a heartbeat every lease/3 seconds), so a lease only has to outlive a *dead* replica: after
``kill -9`` its items become claimable once their lease runs out, and other replicas take
them over. Unlike the SQLite store, :meth:`open` does not reset in-flight rows — they may
belong to live replicas — except those recorded under this replica's own name (a previous
run of it). Replica names (``replica:``, default host:pid) must therefore be unique.

Group commit: writes are queued on two lanes, each one task and one connection. Everything
queued while a lane's previous statements ran goes out together, as one statement per kind
of write (claims as one multi-row ``INSERT ... SELECT FROM unnest(...)``, ``delivered`` /
``settled`` / releases / failures as one ``UPDATE ... FROM unnest(...)`` each), so a burst of
deliveries costs a few round trips and WAL flushes, not one per payload. The durable lane
(``delivered``, final failures, retry, forget, prune) commits with the WAL flushed; the fast
lane (claims, ``settled``, releases, retryable failures) with ``synchronous_commit=off``:
visible to every replica at once, but a PostgreSQL crash may lose the last few — a lost claim
only loses an attempt count, a lost ``settled`` redoes the completion (the same trade as the
SQLite store). Statements lock rows in (flow, id) order, and a deadlock between replicas
retries the statement.

Timestamps come from the database clock, so replicas on hosts with skewed clocks agree on
lease expiry. The lease is ``?lease=<seconds>`` on the URL (default 30; stripped before
connecting); a claim's own ``lease`` argument is an upper bound.

TLS: a URL that names no ``sslmode`` (and no ``PGSSLMODE`` in the environment) gets
``verify-full`` when it points at another host (see :func:`connect_options`); loopback and
Unix-socket URLs keep the driver's ``prefer``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import asyncpg

from conveyor.errors import ConveyorError, Permanent, Transient
from conveyor.redact import redact
from conveyor.state.base import Item, Progress, TargetItem
from conveyor.supervisor import CONFLICT_BACKOFF, retrying

log = logging.getLogger("conveyor.state")

T = "conveyor_items"
TT = "conveyor_item_targets"
TP = "conveyor_item_progress"
_COLS = "flow, id, state, attempts, last_error, settled, name, path, size, mtime, owner, first_seen, updated, no_target"
_NOW = "extract(epoch from now())::float8"
_LOCK_KEY = 0x636F6E76  # "conv": serialises schema creation/migration between replicas
_RACES = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)
"""Two replicas locked the same rows in another order: that statement rolled back, try again."""
_CONFLICT_TRIES = 5

MIGRATIONS: list[list[str]] = [
    [  # version 1
        f"""CREATE TABLE {T} (
            flow text NOT NULL, id text NOT NULL, state text NOT NULL,
            attempts integer NOT NULL DEFAULT 0, last_error text,
            settled boolean NOT NULL DEFAULT false,
            name text, path text, size bigint, mtime double precision,
            owner text, lease_until double precision,
            first_seen double precision NOT NULL, updated double precision NOT NULL,
            PRIMARY KEY (flow, id))""",
        f"CREATE INDEX conveyor_items_by_state ON {T} (flow, state, updated)",
        f"CREATE INDEX conveyor_items_in_flight ON {T} (owner) WHERE state = 'in_flight'",
    ],
    [  # version 2: each target's delivery of an item (flows with a targets: list)
        f"ALTER TABLE {T} ADD COLUMN no_target boolean NOT NULL DEFAULT false",
        f"""CREATE TABLE {TT} (
            flow text NOT NULL, id text NOT NULL, target text NOT NULL, state text NOT NULL,
            attempts integer NOT NULL DEFAULT 0, last_error text, updated double precision NOT NULL,
            PRIMARY KEY (flow, id, target))""",
    ],
    [  # version 3: how far a split step got through an item, per target ('' for a flow's one target)
        f"""CREATE TABLE {TP} (
            flow text NOT NULL, id text NOT NULL, target text NOT NULL, mark text NOT NULL,
            position bigint NOT NULL, updated double precision NOT NULL,
            PRIMARY KEY (flow, id, target))""",
    ],
]
"""Each entry migrates from version i to i + 1; append, never edit."""

_CLAIM = f"""
INSERT INTO {T} AS t (flow, id, state, attempts, name, path, size, mtime, owner, lease_until, first_seen, updated)
SELECT u.f, u.i, 'in_flight', 1, u.n, u.p, u.s, u.m, $8, {_NOW} + u.l, {_NOW}, {_NOW}
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::float8[], $7::float8[])
     AS u(f, i, n, p, s, m, l)
ON CONFLICT (flow, id) DO UPDATE SET
    state = 'in_flight', attempts = t.attempts + 1, owner = excluded.owner, lease_until = excluded.lease_until,
    updated = excluded.updated, name = coalesce(excluded.name, t.name), path = coalesce(excluded.path, t.path),
    size = coalesce(excluded.size, t.size), mtime = coalesce(excluded.mtime, t.mtime)
WHERE t.state NOT IN ('delivered', 'failed')
  AND (t.state <> 'in_flight' OR t.lease_until IS NULL OR t.lease_until <= excluded.updated{{takeover}})
RETURNING {_COLS}"""
_CLAIM_LEASED = _CLAIM.replace("{takeover}", "")
_CLAIM_TAKEOVER = _CLAIM.replace("{takeover}", " OR t.owner IS DISTINCT FROM excluded.owner")
"""Broker messages: the broker gives a message to one consumer at a time, so another replica's
lease on it is stale (that replica died, or its channel closed) and is taken over at once."""


def _bulk(set_: str, cols: str, types: str, where: str = "") -> str:
    """An UPDATE of many rows at once: one array parameter per column of ``cols``."""
    params = ", ".join(f"${n + 1}::{t}[]" for n, t in enumerate(types.split()))
    return (
        f"UPDATE {T} AS t SET {set_}, updated = {_NOW} FROM unnest({params}) AS u({cols})"
        f" WHERE t.flow = u.f AND t.id = u.i{where}"
    )


_DELIVERED = _bulk("state='delivered', last_error=NULL, lease_until=NULL", "f, i", "text text")
_NO_TARGET = _bulk("state='delivered', no_target=true, last_error=NULL, lease_until=NULL", "f, i", "text text")
_TARGET_SET = f"""
INSERT INTO {TT} AS t (flow, id, target, state, attempts, last_error, updated)
SELECT u.f, u.i, u.t, u.s, 1, u.e, {_NOW} FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[])
     AS u(f, i, t, s, e)
ON CONFLICT (flow, id, target) DO UPDATE SET
    state = excluded.state, attempts = t.attempts + 1, last_error = excluded.last_error, updated = excluded.updated"""
"""Targets' outcomes for items: each record made or updated, a try counted."""
_SETTLED = _bulk("settled=true", "f, i", "text text")
_FAILED = _bulk("state=u.s, last_error=u.e, owner=NULL, lease_until=NULL", "f, i, s, e", "text text text text")
_RELEASE = _bulk(
    "state='pending', owner=NULL, lease_until=NULL",
    "f, i, o",
    "text text text",
    " AND t.state = 'in_flight' AND t.owner = u.o",
)
_RENEW = (
    f"UPDATE {T} AS t SET lease_until = {_NOW} + $3 FROM unnest($1::text[], $2::text[]) AS u(f, i)"
    " WHERE t.flow = u.f AND t.id = u.i AND t.owner = $4 AND t.state = 'in_flight'"
)


def _item(r: Any) -> Item:
    return Item(r[0], r[1], r[2], r[3], r[4], bool(r[5]), r[6], r[7], r[8], r[9], r[10], r[11], r[12], bool(r[13]))


def _count(status: str) -> int:
    """Rows affected, from a command tag such as ``UPDATE 3``."""
    try:
        return int(status.rsplit(" ", 1)[-1])
    except ValueError:
        return 0


def split_url(url: str) -> tuple[str, float]:
    """The URL for asyncpg (``lease`` removed) and the lease in seconds."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    lease = 30.0
    kept = []
    for k, v in query:
        if k == "lease":
            lease = float(v.rstrip("s"))
        else:
            kept.append((k, v))
    return urlunsplit(parts._replace(query=urlencode(kept))), lease


WEAK_SSLMODES = ("disable", "allow", "prefer", "require")
"""sslmodes that do not check the server's certificate (``require`` encrypts, but to anyone)."""


def url_hosts(url: str, env: Mapping[str, str] | None = None) -> list[str]:
    """The hosts a ``postgresql://`` URL connects to (several for ``a,b:5432``; a ``host=`` query
    parameter wins, then the URL, then ``PGHOST``); empty means the driver's default, the local socket."""
    env = os.environ if env is None else env
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    spec = query.get("host") or parts.netloc.rpartition("@")[2] or env.get("PGHOST", "")
    hosts = []
    for h in spec.split(","):
        h = unquote(h.strip())
        if h.startswith("["):  # [v6]:port
            h = h[1:].partition("]")[0]
        elif h.count(":") == 1:
            h = h.partition(":")[0]
        if h:
            hosts.append(h)
    return hosts


def is_local_host(host: str) -> bool:
    """A Unix socket folder, ``localhost`` or a loopback address: traffic that never leaves the machine."""
    if host.startswith("/") or host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def sslmode_of(url: str, env: Mapping[str, str] | None = None) -> str | None:
    """The sslmode the URL (or ``PGSSLMODE``) names, or None when neither does."""
    env = os.environ if env is None else env
    query = dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))
    return query.get("sslmode") or env.get("PGSSLMODE") or None


def connect_options(url: str, env: Mapping[str, str] | None = None) -> tuple[str, dict[str, Any]]:
    """The URL and extra ``asyncpg`` connect arguments for ``url``: ``verify-full`` when the URL
    names no sslmode and a host is not local; the URL as it is otherwise (its or the driver's choice).

    With a CA file — the URL's ``sslrootcert``, ``$PGSSLROOTCERT`` or ``~/.postgresql/root.crt`` —
    the URL gets ``sslmode=verify-full`` and the driver does the rest (client certificate, CRL).
    Without one the driver would refuse verify-full outright, so the check is an SSL context over
    the system's CA certificates instead (with the client certificate the URL or ``$PGSSLCERT``
    names, or ``~/.postgresql/postgresql.crt``): a server with a publicly trusted certificate works.
    """
    env = os.environ if env is None else env
    if sslmode_of(url, env) is not None:
        return url, {}
    hosts = url_hosts(url, env)
    if not hosts or all(is_local_host(h) for h in hosts):
        return url, {}
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    if query.get("sslrootcert") or env.get("PGSSLROOTCERT") or _dot_postgresql("root.crt", env):
        full = urlencode([*parse_qsl(parts.query, keep_blank_values=True), ("sslmode", "verify-full")])
        return urlunsplit(parts._replace(query=full)), {}
    ctx = ssl.create_default_context()  # the system's CAs; certificate required, host name checked
    cert = query.get("sslcert") or env.get("PGSSLCERT") or _dot_postgresql("postgresql.crt", env)
    if cert:
        key = query.get("sslkey") or env.get("PGSSLKEY") or _dot_postgresql("postgresql.key", env)
        ctx.load_cert_chain(cert, key, query.get("sslpassword") or None)
    return url, {"ssl": ctx}


def _dot_postgresql(name: str, env: Mapping[str, str]) -> str | None:
    """``~/.postgresql/<name>`` when that file exists (libpq's default place for TLS files)."""
    home = env.get("HOME") or os.path.expanduser("~")
    path = os.path.join(home, ".postgresql", name)
    return path if os.path.isfile(path) else None


def weak_tls(url: str, env: Mapping[str, str] | None = None) -> str | None:
    """Why the connection to a non-local PostgreSQL server is not protected, or None."""
    mode = sslmode_of(url, env)
    hosts = [h for h in url_hosts(url, env) if not is_local_host(h)]
    if mode is None or not hosts or mode.lower() not in WEAK_SSLMODES:
        return None
    where = ", ".join(hosts)
    if mode.lower() == "disable":
        return f"sslmode=disable: the ledger's traffic to {where} is not encrypted"
    return f"sslmode={mode}: the certificate of {where} is not checked, so anyone on the way can pose as the server" + (
        "" if mode.lower() == "require" else " or strip the encryption"
    )


@dataclass
class _Job:
    kind: str
    """'claim'; 'claims' (``args``: many claims' rows; the result: id -> item or None); 'bulk' (one
    of the array UPDATEs above, no result); 'rows' (``args``: many rows of one such UPDATE);
    'count' (rows affected)."""
    sql: str
    args: tuple[Any, ...]
    fut: asyncio.Future[Any] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


def _lost_race(e: Exception) -> bool:
    return isinstance(e, _RACES)


class _Lane:
    """One writer: a queue, a task and a connection pool of one. Everything queued while the
    previous statements ran goes out together — the group commit."""

    def __init__(self, name: str, store: PostgresStore, pool: asyncpg.Pool) -> None:
        self.store = store
        self.pool = pool
        self.jobs: asyncio.Queue[_Job | None] = asyncio.Queue()
        self.task = asyncio.create_task(self._loop(), name=f"conveyor-state-{name}")

    def submit(self, kind: str, sql: str, args: tuple[Any, ...]) -> asyncio.Future[Any]:
        if self.task.done():
            raise RuntimeError("state store is not open")
        job = _Job(kind, sql, args)
        self.jobs.put_nowait(job)
        return job.fut

    async def close(self) -> None:
        self.jobs.put_nowait(None)
        await self.task
        await self.pool.close()

    async def _loop(self) -> None:
        stop = False
        while not stop:
            first = await self.jobs.get()
            batch: list[_Job] = []
            if first is None:
                stop = True
            else:
                batch.append(first)
            while not self.jobs.empty() and len(batch) < 5000:
                job = self.jobs.get_nowait()
                if job is None:
                    stop = True
                else:
                    batch.append(job)
            if batch:
                await self._commit(batch)

    async def _commit(self, batch: list[_Job]) -> None:
        try:
            results = await self._write(batch)
        except Exception as e:
            if len(batch) == 1:
                if not batch[0].fut.done():
                    batch[0].fut.set_exception(e)
                return
            log.debug("batched state write failed (%s); retrying one by one", redact(str(e)))
            for job in batch:  # find the one that fails; the others still commit
                await self._commit([job])
            return
        self.store.batches += 1
        for job, value in zip(batch, results, strict=True):
            if not job.fut.done():
                job.fut.set_result(value)

    async def _write(self, batch: list[_Job]) -> list[Any]:
        async def once() -> list[Any]:
            async with self.pool.acquire() as conn:
                return await self._run(conn, batch)

        try:
            return await retrying(
                once, CONFLICT_BACKOFF, attempts=_CONFLICT_TRIES, what="state write", retry_if=_lost_race
            )
        except _RACES:
            raise RuntimeError("state writes kept deadlocking") from None

    async def _run(self, conn: asyncpg.Connection, batch: list[_Job]) -> list[Any]:
        """Each statement commits on its own (every job is independent): one round trip per kind
        of write in the batch, whatever the number of items."""
        results: list[Any] = [None] * len(batch)
        claims = [(i, j) for i, j in enumerate(batch) if j.kind in ("claim", "claims")]
        groups: dict[str, list[tuple[Any, ...]]] = {}
        for i, j in enumerate(batch):
            if j.kind == "bulk":
                groups.setdefault(j.sql, []).append(j.args)
            elif j.kind == "rows":
                groups.setdefault(j.sql, []).extend(j.args)
            elif j.kind == "count":
                results[i] = _count(await conn.execute(j.sql, *j.args))
        for sql, rows in groups.items():
            rows.sort(key=lambda r: r[:2])  # the same lock order in every replica
            await conn.execute(sql, *([r[c] for r in rows] for c in range(len(rows[0]))))
        # After the updates: a release or failure queued before a re-claim lands first.
        for sql in (_CLAIM_LEASED, _CLAIM_TAKEOVER):
            if part := [(i, j) for i, j in claims if j.sql == sql]:
                await self._claims(conn, sql, part, results)
        return results

    async def _claims(
        self, conn: asyncpg.Connection, sql: str, claims: list[tuple[int, _Job]], results: list[Any]
    ) -> None:
        first: dict[tuple[str, str], tuple[Any, ...]] = {}
        wins: list[list[tuple[tuple[Any, ...], bool]]] = []
        for _, j in claims:
            mine = []
            for a in j.args if j.kind == "claims" else (j.args,):
                key = (a[0], a[1])
                mine.append((a, key not in first))  # a second claim of the same item in one batch loses
                first.setdefault(key, a)
            wins.append(mine)
        # Sorted, so concurrent replicas lock the rows in the same order.
        rows_in = [first[k] for k in sorted(first)]
        cols = [[a[c] for a in rows_in] for c in range(7)]
        rows = await conn.fetch(sql, *cols, self.store.owner)
        won = {(r[0], r[1]): _item(r) for r in rows}
        for (i, j), mine in zip(claims, wins, strict=True):
            got = {a[1]: won.get((a[0], a[1])) if first_ else None for a, first_ in mine}
            results[i] = got if j.kind == "claims" else got[j.args[1]]


class PostgresStore:
    """The shared state store for replicas (see the module docstring)."""

    shared = True
    """Several processes use this store at once (file sources then take files in a shuffled order)."""

    def __init__(self, url: str, owner: str, *, pool_size: int = 3) -> None:
        self.url, self.lease = split_url(url)
        given = self.url
        self.url, self.connect = connect_options(self.url)
        """The URL (verify-full added when due) and extra connect arguments (TLS) for every pool."""
        self.verify_by_default = self.url != given or bool(self.connect)
        """verify-full was chosen here, the URL naming no sslmode (error messages say so)."""
        self.owner = owner
        self.pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        self._fast: _Lane | None = None
        """Claims, settled, releases, retryable failures: committed without waiting for the WAL flush."""
        self._durable: _Lane | None = None
        """delivered, final failures, retry, forget, prune: committed once the WAL is on disk."""
        self._heartbeat: asyncio.Task[None] | None = None
        self._held: set[tuple[str, str]] = set()
        """(flow, id) this process holds in flight: the heartbeat renews their leases."""
        self.batches = 0
        """Write batches run so far (for tests and benchmarks: items per round trip)."""

    # -- plumbing -------------------------------------------------------------------
    async def open(self) -> None:
        """Connect, create or migrate the schema, and release this replica's rows of a previous run."""
        try:
            self._pool = await asyncpg.create_pool(
                self.url, min_size=1, max_size=self.pool_size, command_timeout=60, **self.connect
            )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
            raise self._connect_error(e) from None
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
            await conn.execute("CREATE TABLE IF NOT EXISTS conveyor_schema_version (version integer NOT NULL)")
            version = await conn.fetchval("SELECT max(version) FROM conveyor_schema_version") or 0
            if version > len(MIGRATIONS):
                raise RuntimeError(
                    f"the state database has schema version {version}, newer than this "
                    f"conveyor knows ({len(MIGRATIONS)}): upgrade conveyor"
                )
            for v in range(version, len(MIGRATIONS)):
                for stmt in MIGRATIONS[v]:
                    await conn.execute(stmt)
                await conn.execute("INSERT INTO conveyor_schema_version (version) VALUES ($1)", v + 1)
                log.info("state schema migrated to version %d", v + 1)
            # Rows in flight under *our* name are from a previous run of this replica: nobody holds them.
            await conn.execute(
                f"UPDATE {T} SET state='pending', owner=NULL, lease_until=NULL WHERE state='in_flight' AND owner=$1",
                self.owner,
            )
        fast = await asyncpg.create_pool(
            self.url,
            min_size=1,
            max_size=1,
            command_timeout=60,
            server_settings={"synchronous_commit": "off"},
            **self.connect,
        )
        durable = await asyncpg.create_pool(self.url, min_size=1, max_size=1, command_timeout=60, **self.connect)
        self._fast = _Lane("fast", self, fast)
        self._durable = _Lane("durable", self, durable)
        self._heartbeat = asyncio.create_task(self._renew_loop(), name="conveyor-state-heartbeat")

    def _connect_error(self, e: BaseException) -> ConveyorError:
        """A failed first connection in one line, with what to do when it is the TLS check."""
        where = ", ".join(url_hosts(self.url)) or "the local socket"
        text = redact(str(e)) or type(e).__name__
        if isinstance(e, ssl.SSLError) or "SSL" in text:
            hint = ""
            if self.verify_by_default:
                hint = (
                    " (for a server on another host the certificate and host name are checked unless the URL "
                    "names an sslmode: give its CA as ?sslrootcert=FILE, or name the sslmode you accept)"
                )
            return Permanent(f"state store: TLS with PostgreSQL at {where} failed: {text}{hint}")
        return Transient(f"state store: cannot connect to PostgreSQL at {where}: {text}")

    async def close(self) -> None:
        """Finish queued writes, stop renewing, close the pools."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
            self._heartbeat = None
        for lane in (self._fast, self._durable):
            if lane is not None:
                await lane.close()
        self._fast = self._durable = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    def _submit(self, kind: str, sql: str, args: tuple[Any, ...], durable: bool) -> asyncio.Future[Any]:
        lane = self._durable if durable else self._fast
        if lane is None:
            raise RuntimeError("state store is not open")
        return lane.submit(kind, sql, args)

    # -- leases -------------------------------------------------------------------------
    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(max(0.5, self.lease / 3))
            try:
                await self.renew()
            except Exception as e:
                log.warning("renewing leases failed: %s", redact(str(e)))

    async def renew(self, flow: str | None = None, ids: list[str] | None = None, lease: float | None = None) -> int:
        """Extend the leases of items this replica holds (all of them by default); returns how many."""
        held = [(f, i) for f, i in self._held if flow is None or (f == flow and (ids is None or i in ids))]
        if not held or self._pool is None:
            return 0
        status = await self._pool.execute(
            _RENEW, [f for f, _ in held], [i for _, i in held], float(lease or self.lease), self.owner
        )
        return _count(status)

    # -- the StateStore interface -------------------------------------------------------
    async def get_many(self, flow: str, ids: list[str]) -> dict[str, Item]:
        """Known items among ``ids``."""
        if not ids:
            return {}
        assert self._pool is not None
        rows = await self._pool.fetch(f"SELECT {_COLS} FROM {T} WHERE flow=$1 AND id = ANY($2::text[])", flow, ids)
        return {r[1]: _item(r) for r in rows}

    async def claim(
        self, flow: str, id: str, info: dict[str, Any], lease: float, *, takeover: bool = False
    ) -> Item | None:
        """In flight for this replica, unless delivered, failed, or leased by a live claim
        (``takeover``: by a live claim of this replica)."""
        lease = min(lease, self.lease)
        size = info.get("size")
        mtime = info.get("mtime")
        args = (
            flow,
            id,
            info.get("name"),
            info.get("path"),
            None if size is None else int(size),
            None if mtime is None else float(mtime),
            float(lease),
        )
        sql = _CLAIM_TAKEOVER if takeover else _CLAIM_LEASED
        item: Item | None = await self._submit("claim", sql, args, durable=False)
        if item is not None:
            self._held.add((flow, id))
        return item

    async def claim_many(
        self, flow: str, ids: Sequence[str], lease: float, *, takeover: bool = False
    ) -> dict[str, Item | None]:
        """Claim each of ``ids`` as :meth:`claim` does, in one statement."""
        lease = float(min(lease, self.lease))
        rows = tuple((flow, id, None, None, None, None, lease) for id in dict.fromkeys(ids))
        if not rows:
            return {}
        sql = _CLAIM_TAKEOVER if takeover else _CLAIM_LEASED
        items: dict[str, Item | None] = await self._submit("claims", sql, rows, durable=False)
        self._held.update((flow, id) for id, item in items.items() if item is not None)
        return items

    async def delivered_many(self, flow: str, ids: Sequence[str]) -> None:
        """Record each of ``ids`` delivered (durable before returning), in one statement."""
        self._held.difference_update((flow, id) for id in ids)
        if ids:
            await self._submit("rows", _DELIVERED, tuple((flow, id) for id in ids), durable=True)

    async def settled_many(self, flow: str, ids: Sequence[str]) -> None:
        """Record each of ``ids`` settled (if lost in a crash, the completion is redone)."""
        if ids:
            await self._submit("rows", _SETTLED, tuple((flow, id) for id in ids), durable=False)

    async def delivered(self, flow: str, id: str, *, no_target: bool = False, targets: Sequence[str] = ()) -> None:
        """The target confirmed (durable before returning); ``no_target``: no target was to have it;
        ``targets``: those targets' confirmations, recorded in the same batch."""
        self._held.discard((flow, id))
        writes = [self._submit("bulk", _TARGET_SET, (flow, id, t, "delivered", None), durable=True) for t in targets]
        writes.append(self._submit("bulk", _NO_TARGET if no_target else _DELIVERED, (flow, id), durable=True))
        await asyncio.gather(*writes)

    async def target_delivered(self, flow: str, id: str, target: str) -> None:
        """One target of a ``targets:`` list confirmed (durable before returning)."""
        await self._submit("bulk", _TARGET_SET, (flow, id, target, "delivered", None), durable=True)

    async def target_failed(self, flow: str, id: str, target: str, error: str) -> None:
        """One target of a ``targets:`` list failed the item."""
        await self._submit("bulk", _TARGET_SET, (flow, id, target, "failed", error[:2000]), durable=False)

    async def targets(self, flow: str, ids: list[str]) -> dict[str, dict[str, TargetItem]]:
        """Each target's record of the items among ``ids``."""
        if not ids:
            return {}
        assert self._pool is not None
        rows = await self._pool.fetch(
            f"SELECT id, target, state, attempts, last_error, updated FROM {TT}"
            " WHERE flow=$1 AND id = ANY($2::text[]) ORDER BY target",
            flow,
            ids,
        )
        out: dict[str, dict[str, TargetItem]] = {}
        for r in rows:
            out.setdefault(r[0], {})[r[1]] = TargetItem(r[1], r[2], r[3], r[4], r[5])
        return out

    async def settled(self, flow: str, id: str) -> None:
        """The after action / ack is done (if lost in a crash, the completion is redone)."""
        await self._submit("bulk", _SETTLED, (flow, id), durable=False)

    async def failed(self, flow: str, id: str, error: str, *, final: bool) -> None:
        """Record a failed attempt."""
        self._held.discard((flow, id))
        await self._submit("bulk", _FAILED, (flow, id, "failed" if final else "pending", error[:2000]), durable=final)

    async def release(self, flow: str, id: str) -> None:
        """Give an in-flight item of ours back."""
        self._held.discard((flow, id))
        await self._submit("bulk", _RELEASE, (flow, id, self.owner), durable=False)

    async def search(self, flows: list[str], text: str | None, state: str | None, limit: int) -> list[Item]:
        """Items of ``flows`` matching ``text`` (id, or part of name or path), failed first."""
        assert self._pool is not None
        if not flows:
            return []
        where = ["flow = ANY($1::text[])"]
        args: tuple[Any, ...] = (flows,)
        if state:
            args += (state,)
            where.append(f"state=${len(args)}")
        if text:
            args += (text,)
            n = len(args)
            where.append(f"(id=${n} OR strpos(lower(name), lower(${n})) > 0 OR strpos(lower(path), lower(${n})) > 0)")
        args += (limit,)
        rows = await self._pool.fetch(
            f"SELECT {_COLS} FROM {T} WHERE {' AND '.join(where)}"
            f" ORDER BY (state='failed') DESC, updated DESC LIMIT ${len(args)}",
            *args,
        )
        return [_item(r) for r in rows]

    async def counts(self, flows: list[str], states: list[str]) -> dict[str, dict[str, int]]:
        """{flow: {state: n}} for those flows and states."""
        assert self._pool is not None
        out: dict[str, dict[str, int]] = {}
        rows = await self._pool.fetch(
            f"SELECT flow, state, count(*) AS n FROM {T} WHERE flow = ANY($1::text[]) AND state = ANY($2::text[])"
            " GROUP BY flow, state",
            flows,
            states,
        )
        for r in rows:
            out.setdefault(r["flow"], {})[r["state"]] = r["n"]
        return out

    async def list(self, flow: str, state: str | None, limit: int = 100, offset: int = 0) -> list[Item]:
        """Items of a flow, newest first."""
        assert self._pool is not None
        if state:
            rows = await self._pool.fetch(
                f"SELECT {_COLS} FROM {T} WHERE flow=$1 AND state=$2 ORDER BY updated DESC LIMIT $3 OFFSET $4",
                flow,
                state,
                limit,
                offset,
            )
        else:
            rows = await self._pool.fetch(
                f"SELECT {_COLS} FROM {T} WHERE flow=$1 ORDER BY updated DESC LIMIT $2 OFFSET $3", flow, limit, offset
            )
        return [_item(r) for r in rows]

    async def arrivals(self, flow: str, since: float, limit: int) -> int:
        """Items first seen at or after ``since``, up to ``limit``."""
        assert self._pool is not None
        # A row's updated is never before its first_seen: the bound on updated lets the
        # (flow, state, updated) index answer without reading the flow's older rows.
        n = await self._pool.fetchval(
            f"SELECT count(*) FROM (SELECT 1 FROM {T} WHERE flow=$1 AND state = ANY($2::text[]) "
            "AND updated >= $3 AND first_seen >= $3 LIMIT $4) AS recent",
            flow,
            ["pending", "in_flight", "delivered", "failed"],
            float(since),
            limit,
        )
        return int(n or 0)

    async def retry(self, flow: str, id: str) -> bool:
        """failed → pending, attempts reset."""
        n = await self._submit(
            "count",
            f"UPDATE {T} SET state='pending', attempts=0, updated={_NOW} WHERE flow=$1 AND id=$2 AND state='failed'",
            (flow, id),
            durable=True,
        )
        return bool(n)

    async def forget(self, flow: str, id: str) -> bool:
        """Drop the row."""
        self._held.discard((flow, id))
        await self._submit("count", f"DELETE FROM {TT} WHERE flow=$1 AND id=$2", (flow, id), durable=True)
        await self._submit("count", f"DELETE FROM {TP} WHERE flow=$1 AND id=$2", (flow, id), durable=True)
        n = await self._submit("count", f"DELETE FROM {T} WHERE flow=$1 AND id=$2", (flow, id), durable=True)
        return bool(n)

    async def prune(self, older_than: float) -> int:
        """Delete settled, delivered rows not touched since ``older_than`` (epoch seconds)."""
        for side in (TT, TP):
            await self._submit(
                "count",
                f"DELETE FROM {side} AS t USING {T} AS i WHERE i.flow = t.flow AND i.id = t.id"
                " AND i.settled AND i.state='delivered' AND i.updated < $1",
                (float(older_than),),
                durable=True,
            )
        n: int = await self._submit(
            "count",
            f"DELETE FROM {T} WHERE settled AND state='delivered' AND updated < $1",
            (float(older_than),),
            durable=True,
        )
        return n

    async def progress(self, flow: str, id: str, target: str) -> Progress | None:
        """The recorded progress of a split, if any."""
        assert self._pool is not None
        row = await self._pool.fetchrow(
            f"SELECT mark, position FROM {TP} WHERE flow=$1 AND id=$2 AND target=$3", flow, id, target
        )
        return None if row is None else Progress(row["mark"], int(row["position"]))

    async def set_progress(self, flow: str, id: str, target: str, progress: Progress) -> None:
        """Record a split's progress, durably."""
        await self._submit(
            "count",
            f"INSERT INTO {TP} (flow, id, target, mark, position, updated) VALUES ($1, $2, $3, $4, $5, {_NOW}) "
            "ON CONFLICT (flow, id, target) DO UPDATE SET mark=excluded.mark, position=excluded.position, "
            "updated=excluded.updated",
            (flow, id, target, progress.mark, progress.position),
            durable=True,
        )

    async def progress_of(self, flow: str, target: str) -> dict[str, Progress]:
        """Every progress record of ``flow`` for ``target``."""
        assert self._pool is not None
        rows = await self._pool.fetch(f"SELECT id, mark, position FROM {TP} WHERE flow=$1 AND target=$2", flow, target)
        return {r["id"]: Progress(r["mark"], int(r["position"])) for r in rows}

    async def drop_progress(self, flow: str, id: str, target: str) -> None:
        """Forget one progress record, durably."""
        await self._submit(
            "count", f"DELETE FROM {TP} WHERE flow=$1 AND id=$2 AND target=$3", (flow, id, target), durable=True
        )
