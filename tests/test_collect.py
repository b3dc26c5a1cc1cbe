"""``collect`` through ``conveyor run``: RabbitMQ messages gathered into ndjson files on OpenSSH's
SFTP, with a kill -9 while a batch is being written; csv with a header, concat and a max_wait
flush into a folder; Pub/Sub messages into a folder; config errors at their key path."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from conveyor.config import load_config
from conveyor.errors import ConfigError
from conveyor.state import open_store
from conveyor.state.base import Progress
from conveyor.steps.collect import TARGET_KEY
from tests.backends.pubsub import PubsubBackend, pubsub_backend, pubsub_emulator
from tests.backends.sftp import SftpBackend, sftp_openssh_backend, sshd
from tests.harness import DaemonProcess, running, wait_for, write_config
from tests.servers.postgres import pg_url
from tests.servers.rabbitmq import (
    Vhost,
    declare,
    publish,
    rabbit_vhost_fixture,  # noqa: F401  (the rabbit_vhost fixture)
    ready_count,
)
from tests.tcp_proxy import TcpProxy
from tests.test_run_once import run_once

__all__ = ["pg_url", "pubsub_backend", "pubsub_emulator", "sftp_openssh_backend", "sshd"]


def rabbit_source(queue: str, prefetch: int = 1000) -> dict[str, Any]:
    return {"instance": "mq", "queue": queue, "prefetch": prefetch}


def files_in(folder: Path) -> dict[str, bytes]:
    """The delivered files of a folder (no sidecars, no temp files being written)."""
    if not folder.exists():
        return {}
    return {
        p.name: p.read_bytes()
        for p in folder.iterdir()
        if p.is_file() and not p.name.endswith(".meta.json") and not p.name.startswith(".")
    }


async def publish_numbered(v: Vhost, queue: str, first: int, n: int) -> None:
    """``{"n": i}`` for i in first..first+n-1, each with its own message_id, confirms pipelined."""
    async with await aio_pika.connect(v.url) as conn:
        ch = await conn.channel()
        batch = []
        for i in range(first, first + n):
            m = aio_pika.Message(
                json.dumps({"n": i}).encode(), message_id=f"m{i}", delivery_mode=aio_pika.DeliveryMode.PERSISTENT
            )
            batch.append(ch.default_exchange.publish(m, routing_key=queue))
            if len(batch) == 500:
                for p in batch:
                    await p
                batch = []
        for p in batch:
            await p


def manifests(db_path: Path, flow: str) -> list[tuple[str, str, int]]:
    """The collect step's recorded batches: (id, manifest, state)."""
    with sqlite3.connect(db_path) as db:
        rows = db.execute(
            "SELECT id, mark, position FROM item_progress WHERE flow=? AND target LIKE ?", (flow, TARGET_KEY + "%")
        ).fetchall()
    db.close()
    return [(r[0], r[1], r[2]) for r in rows]


@pytest.mark.fault
@pytest.mark.timeout(300)
async def test_rabbitmq_into_ndjson_files_on_sftp_survives_kill9(
    rabbit_vhost: Vhost, sftp_openssh_backend: SftpBackend, tmp_path: Path
) -> None:
    """RabbitMQ → collect (ndjson, 1,000 a file) → SFTP on OpenSSH, through a proxy. Once two files
    are in place the proxy stops forwarding, so the next batch's upload hangs after its manifest
    was recorded, and ``conveyor run`` is killed with SIGKILL. After the restart every message is
    in exactly one file, each interrupted batch's file exists once under its recorded name with its
    recorded members, no temp file is left, and the queue is empty."""
    n, per_file = 6000, 1000
    q = rabbit_vhost.q(f"collect-{uuid.uuid4().hex[:6]}")
    await declare(rabbit_vhost, q)
    await publish_numbered(rabbit_vhost, q, 0, n)
    db = tmp_path / "state.db"

    def done_files() -> list[str]:
        return [x for x in sftp_openssh_backend.names("inbox") if not x.startswith(".")]

    def open_batch() -> bool:
        """A batch recorded, its file not in place (the one whose upload the proxy holds up)."""
        try:
            recorded = manifests(db, "f")
        except sqlite3.Error:
            return False  # not made yet
        return any(state == 0 and json.loads(mark)["name"] not in done_files() for _, mark, state in recorded)

    async with TcpProxy("127.0.0.1", sftp_openssh_backend.port) as proxy:
        cfg = write_config(
            tmp_path,
            {"mq": rabbit_vhost.instance_config(), "partner": sftp_openssh_backend.instance_config(port=proxy.port)},
            {
                "f": {
                    "source": rabbit_source(q),
                    "steps": [{"collect": {"format": "ndjson", "max_messages": per_file, "max_wait": "2s"}}],
                    "target": {"instance": "partner", "path": "inbox", "filename": "{name}"},
                }
            },
        )
        first = DaemonProcess(cfg).start()
        try:
            await wait_for(lambda: len(done_files()) >= 2, 60, 0.01)
            proxy.pause()
            await wait_for(open_batch, 60, 0.01)
            await asyncio.sleep(0.5)  # the upload is stuck, not merely slow
        finally:
            first.kill9()
        proxy.cut()
        proxy.resume()
        interrupted = {key: json.loads(mark) for key, mark, state in manifests(db, "f") if state == 0}
        # One batch, or two: the next one fills while one is written, and may be recorded too.
        assert 1 <= len(interrupted) <= 2, interrupted
        assert not {doc["name"] for doc in interrupted.values()} & set(done_files())
        second = DaemonProcess(cfg).start()
        try:

            def lines() -> list[bytes]:
                return [ln for x in done_files() for ln in sftp_openssh_backend.read(f"inbox/{x}").splitlines()]

            await wait_for(lambda: len(lines()) >= n, 120, 0.2)
        finally:
            second.stop()
    names = sftp_openssh_backend.names("inbox")
    assert not [x for x in names if x.startswith(".") or x.endswith(".tmp")], f"a temp file was left: {names}"
    numbers = sorted(json.loads(line)["n"] for line in lines())
    assert numbers == list(range(n)), "every message exactly once across the files"
    assert len(names) == n // per_file
    for key, doc in interrupted.items():
        body = sftp_openssh_backend.read(f"inbox/{doc['name']}")
        assert [json.loads(x)["n"] for x in body.splitlines()] == [int(m.removeprefix("m")) for m in doc["members"]]
        assert key not in {k for k, _, _ in manifests(db, "f")}, "a written batch's manifest is dropped"
    assert await ready_count(rabbit_vhost, q) == 0
    async with running(cfg) as d:
        assert await d.store.counts(["f"], ["delivered"]) == {"f": {"delivered": n}}


async def test_csv_with_header_concat_and_max_wait_into_a_folder(rabbit_vhost: Vhost, tmp_path: Path) -> None:
    """csv: the header line on top, a line break added where a message lacks one; concat: the
    bodies as they are; a batch that does not fill is written max_wait after its first message,
    its name from the template; a message that is not JSON fails alone in an ndjson flow."""
    queues = {k: rabbit_vhost.q(f"{k}-{uuid.uuid4().hex[:6]}") for k in ("csv", "concat", "ndjson")}
    for q in queues.values():
        await declare(rabbit_vhost, q)
    out = tmp_path / "out"
    flows = {
        "csv": {
            "source": rabbit_source(queues["csv"], 100),
            "steps": [
                {
                    "collect": {
                        "format": "csv",
                        "header": "n,name",
                        "max_messages": 100,
                        "max_wait": "500ms",
                        "filename": "orders-{batch_start:%Y%m%d}-{id:.8}-{count}.csv",
                    }
                }
            ],
            "target": {"type": "directory", "path": str(out / "csv"), "filename": "{name}"},
        },
        "concat": {
            "source": rabbit_source(queues["concat"], 100),
            "steps": {"collect": {"format": "concat", "max_messages": 3, "max_wait": "30s"}},
            "target": {"type": "directory", "path": str(out / "concat"), "filename": "{name}"},
        },
        "ndjson": {
            "source": {**rabbit_source(queues["ndjson"], 100), "max_attempts": 1},
            "steps": [{"collect": {"format": "ndjson", "max_messages": 100, "max_wait": "500ms"}}],
            "target": {"type": "directory", "path": str(out / "ndjson"), "filename": "{name}"},
        },
    }
    cfg = write_config(tmp_path, {"mq": rabbit_vhost.instance_config()}, flows)
    await publish(rabbit_vhost, queues["csv"], [b"1,a", b"2,b\n", b'3,"c\nd"\r\n'])
    await publish(rabbit_vhost, queues["concat"], [b"AB", b"CD", b"EF"])
    await publish(rabbit_vhost, queues["ndjson"], [b'{\n  "pretty": true\n}', b"not json", b"[1, 2]"])
    async with running(cfg) as d:
        csv_files = await wait_for(lambda: files_in(out / "csv") or None, 30)
        concat = await wait_for(lambda: files_in(out / "concat") or None, 30)
        ndjson = await wait_for(lambda: files_in(out / "ndjson") or None, 30)

        async def failed() -> list[Any] | None:
            return await d.store.list("ndjson", "failed") or None

        (bad,) = await wait_for(failed, 30)
    ((name, body),) = csv_files.items()
    assert name.startswith("orders-") and name.endswith("-3.csv")
    assert body == b'n,name\n1,a\n2,b\n3,"c\nd"\r\n'
    ((name, body),) = concat.items()
    assert body == b"ABCDEF" and name.startswith("concat-") and name.endswith(".bin")
    ((name, body),) = ndjson.items()
    assert body == b'{"pretty":true}\n[1, 2]\n'
    assert bad.last_error.startswith("steps[0] collect: the message is not one JSON value")
    meta = json.loads((out / "ndjson" / f"{name}.meta.json").read_text())
    assert meta["lineage"][0]["kind"] == "collect" and meta["lineage"][0]["count"] == 2
    for q in queues.values():
        assert await ready_count(rabbit_vhost, q) == 0


async def test_a_batch_the_target_refuses_is_retried_then_written_once(rabbit_vhost: Vhost, tmp_path: Path) -> None:
    """A batch whose file cannot be written: each try is recorded against every message, the
    messages go back to the queue and come again as one batch, written once the target takes it;
    where max_attempts is used up, every message of the batch fails (rejected)."""
    q, once = rabbit_vhost.q(f"retry-{uuid.uuid4().hex[:6]}"), rabbit_vhost.q(f"once-{uuid.uuid4().hex[:6]}")
    await declare(rabbit_vhost, q)
    await declare(rabbit_vhost, once)
    blocked = tmp_path / "out"
    blocked.write_text("a file where the folder should be")
    collect = {"collect": {"format": "ndjson", "max_messages": 5, "max_wait": "300ms"}}
    retry = {"attempts": 2, "backoff": "50ms", "max_backoff": "50ms"}
    flows = {
        "retry": {
            "source": {**rabbit_source(q, 100), "max_attempts": 100},
            "retry": retry,
            "steps": [collect],
            "target": {"type": "directory", "path": str(blocked / "a"), "filename": "{name}"},
        },
        "once": {
            "source": {**rabbit_source(once, 100), "max_attempts": 1},
            "retry": retry,
            "steps": [collect],
            "target": {"type": "directory", "path": str(blocked / "b"), "filename": "{name}"},
        },
    }
    cfg = write_config(tmp_path, {"mq": rabbit_vhost.instance_config()}, flows)
    await publish_numbered(rabbit_vhost, q, 0, 5)
    await publish_numbered(rabbit_vhost, once, 100, 3)
    async with running(cfg) as d:

        async def tried_twice() -> bool:
            items = await d.store.get_many("retry", [f"m{i}" for i in range(5)])
            return len(items) == 5 and all(i.attempts >= 2 and i.last_error for i in items.values())

        await wait_for(tried_twice, 30)

        async def failed() -> list[Any] | None:
            rows = await d.store.list("once", "failed")
            return rows if len(rows) == 3 else None

        assert {r.id for r in await wait_for(failed, 30)} == {"m100", "m101", "m102"}
        blocked.unlink()
        got = await wait_for(lambda: files_in(blocked / "a") or None, 30)

        async def settled() -> bool:
            items = await d.store.get_many("retry", [f"m{i}" for i in range(5)])
            return all(i.state == "delivered" and i.settled for i in items.values())

        await wait_for(settled, 30)
    ((_, body),) = got.items()
    assert sorted(json.loads(line)["n"] for line in body.splitlines()) == [0, 1, 2, 3, 4]
    assert manifests(tmp_path / "state.db", "retry") == [], "a written batch's manifest is dropped"
    assert await ready_count(rabbit_vhost, q) == 0 and await ready_count(rabbit_vhost, once) == 0
    assert not files_in(blocked / "b")


async def folder_flow(v: Vhost, tmp_path: Path, prefix: str, max_messages: int, **top: Any) -> tuple[str, Path, Path]:
    """A fresh queue, collected as ndjson into a folder by flow "f": (queue, folder, config)."""
    q = v.q(f"{prefix}-{uuid.uuid4().hex[:6]}")
    await declare(v, q)
    out = tmp_path / "out"
    flow = {
        "source": rabbit_source(q, 2 * max_messages),
        "steps": [{"collect": {"format": "ndjson", "max_messages": max_messages, "max_wait": "500ms"}}],
        "target": {"type": "directory", "path": str(out), "filename": "{name}"},
    }
    return q, out, write_config(tmp_path, {"mq": v.instance_config()}, {"f": flow}, **top)


async def all_settled(store: Any, ids: list[str]) -> bool:
    """Whether flow "f" has each of ``ids`` delivered and settled."""
    items = await store.get_many("f", ids)
    return len(items) == len(ids) and all(i.state == "delivered" and i.settled for i in items.values())


async def test_messages_of_a_written_batch_are_acked_without_a_second_file(rabbit_vhost: Vhost, tmp_path: Path) -> None:
    """The state a crash leaves between a batch's manifest marked written and its messages'
    acks: when they come back they are recorded delivered and acked, no file written for them;
    the manifest goes once the ledger has them all, and new messages form batches as usual."""
    q, out, cfg = await folder_flow(rabbit_vhost, tmp_path, "written", 5)
    store = open_store(str(tmp_path / "state.db"), "earlier")
    await store.open()
    members = [f"m{i}" for i in range(5)]
    mark = json.dumps({"name": "f-earlier.ndjson", "members": members})
    await store.set_progress("f", "earlier-batch", TARGET_KEY, Progress(mark, 1))
    await store.close()
    await publish_numbered(rabbit_vhost, q, 0, 5)
    async with running(cfg) as d:
        await wait_for(lambda: all_settled(d.store, members), 30)
        assert await ready_count(rabbit_vhost, q) == 0
        assert not files_in(out), "no file for a batch whose file is in place"
        await publish_numbered(rabbit_vhost, q, 5, 5)
        got = await wait_for(lambda: files_in(out) or None, 30)
        await wait_for(lambda: all_settled(d.store, [f"m{i}" for i in range(5, 10)]), 30)
    ((_, body),) = got.items()
    assert [json.loads(line)["n"] for line in body.splitlines()] == [5, 6, 7, 8, 9]
    assert manifests(tmp_path / "state.db", "f") == []


async def test_batches_with_the_postgresql_ledger(rabbit_vhost: Vhost, pg_url: str, tmp_path: Path) -> None:
    """The batch path on the shared store: each batch claimed, recorded and settled as a whole."""
    q, out, cfg = await folder_flow(rabbit_vhost, tmp_path, "pg", 1000, state=pg_url)
    n = 2500
    await publish_numbered(rabbit_vhost, q, 0, n)
    async with running(cfg) as d:
        await wait_for(lambda: all_settled(d.store, [f"m{i}" for i in range(n)]), 60)
        assert await d.store.progress_of("f", TARGET_KEY) == {}, "written batches' manifests are dropped"
    bodies = files_in(out).values()
    assert len(bodies) >= 3 and all(len(b.splitlines()) <= 1000 for b in bodies)
    assert sorted(json.loads(x)["n"] for b in bodies for x in b.splitlines()) == list(range(n))
    assert await ready_count(rabbit_vhost, q) == 0


async def test_run_once_writes_the_partial_batch_and_ends(rabbit_vhost: Vhost, tmp_path: Path) -> None:
    """``run --once``: the queue drained into files, the batch that did not fill written at the
    end, then the run exits 0 with every message acked."""
    q, out, cfg = await folder_flow(rabbit_vhost, tmp_path, "once", 1000)
    await publish_numbered(rabbit_vhost, q, 0, 1500)
    rc, log = await run_once(cfg, "--idle", "1s")
    assert rc == 0, log
    bodies = files_in(out).values()
    assert all(len(b.splitlines()) <= 1000 for b in bodies)
    assert sorted(json.loads(x)["n"] for b in bodies for x in b.splitlines()) == list(range(1500))
    assert await ready_count(rabbit_vhost, q) == 0


async def test_pubsub_into_a_folder(pubsub_backend: PubsubBackend, tmp_path: Path) -> None:
    """Pub/Sub emulator → collect (ndjson, 10 a file) → a folder: every message once, all acked."""
    out = tmp_path / "out"
    cfg = write_config(
        tmp_path,
        {"gcp": pubsub_backend.instance_config()},
        {
            "f": {
                "source": {"instance": "gcp", **pubsub_backend.source_config()},
                "steps": [{"collect": {"format": "ndjson", "max_messages": 10, "max_wait": "1s"}}],
                "target": {"type": "directory", "path": str(out), "filename": "{name}"},
            }
        },
    )
    await pubsub_backend.publish([json.dumps({"n": i}).encode() for i in range(25)])
    async with running(cfg):

        def numbers() -> list[int]:
            return sorted(json.loads(x)["n"] for body in files_in(out).values() for x in body.splitlines())

        await wait_for(lambda: len(numbers()) >= 25, 60, 0.2)
        await wait_for(lambda: _none_pending(pubsub_backend), 60, 0.5)
    assert numbers() == list(range(25))
    assert sorted(len(b.splitlines()) for b in files_in(out).values())[-1] <= 10


async def _none_pending(b: PubsubBackend) -> bool:
    return await b.pending() == 0


def test_config_errors_at_their_key_path(tmp_path: Path) -> None:
    """collect from a file source, into a broker, after another step, past the source's prefetch,
    with a header for ndjson or an unknown name field: each an error naming its key."""
    mq = {"type": "rabbitmq", "url": "amqp://guest:guest@127.0.0.1:5672/"}
    to_dir = {"type": "directory", "path": str(tmp_path / "out"), "filename": "{name}"}
    cfg = write_config(
        tmp_path,
        {"in": {"type": "local", "root": str(tmp_path)}, "mq": mq},
        {
            "files": {
                "source": {"instance": "in", "path": ""},
                "steps": [{"collect": "ndjson"}],
                "target": to_dir,
            },
            "broker": {
                "source": {"instance": "mq", "queue": "q", "prefetch": 1000},
                "steps": [{"collect": "ndjson"}],
                "target": {"instance": "mq", "routing_key": "x"},
            },
            "second": {
                "source": {"instance": "mq", "queue": "q"},
                "steps": [{"compress": "gzip"}, {"collect": "ndjson"}],
                "target": to_dir,
            },
            "prefetch": {
                "source": {"instance": "mq", "queue": "q", "prefetch": 50},
                "steps": [{"collect": {"format": "ndjson", "max_messages": 500}}],
                "target": to_dir,
            },
            "header": {
                "source": {"instance": "mq", "queue": "q"},
                "steps": [{"collect": {"format": "ndjson", "header": "a,b", "max_messages": 10}}],
                "target": to_dir,
            },
            "timeout": {
                "source": {"instance": "mq", "queue": "q"},
                "steps": [{"collect": {"format": "csv", "max_messages": 10, "max_wait": "1m"}}],
                "target": {**to_dir, "timeout": "30s"},
            },
            "name": {
                "source": {"instance": "mq", "queue": "q"},
                "steps": [{"collect": {"format": "csv", "filename": "{mtime}.csv", "max_messages": 10}}],
                "target": to_dir,
            },
            # a name without the batch's id: two batches in one second would share it
            "same": {
                "source": {"instance": "mq", "queue": "q"},
                "steps": [
                    {"collect": {"format": "csv", "filename": "o-{batch_start}-{id:.4}.csv", "max_messages": 10}}
                ],
                "target": to_dir,
            },
        },
    )
    with pytest.raises(ConfigError) as e:
        load_config(cfg)
    text = re.sub(r" \(line \d+\)", "", str(e.value))
    assert "flows.files.steps[0].collect: collect gathers messages: it needs a broker source" in text
    assert "flows.broker.steps[0].collect: collect writes files: it needs a file target" in text
    assert "flows.second.steps: " in text and "collect must be the first step" in text
    assert "flows.prefetch.steps[0].collect.max_messages: 500 messages per file" in text
    assert "raise source.prefetch to at least 500" in text
    assert "flows.header.steps[0].collect" in text and "header is for format: csv only" in text
    assert "flows.timeout.steps[0].collect.max_wait: a message waits up to max_wait (60s)" in text
    assert "flows.name.steps[0].collect.filename" in text and "unknown field {mtime}" in text
    assert "flows.same.steps[0].collect.filename" in text and "put at least 8 characters of {id}" in text


async def test_batch_start_in_the_flows_timezone(rabbit_vhost: Vhost, tmp_path: Path) -> None:
    """``{batch_start}`` in a file name is written in the flow's ``timezone`` (UTC without one);
    a directory target without a ``filename`` of its own writes the name collect gave."""
    out = tmp_path / "out"
    flows = {}
    for name, zone in (("zoned", "Pacific/Kiritimati"), ("plain", None)):
        q = rabbit_vhost.q(f"{name}-{uuid.uuid4().hex[:6]}")
        await declare(rabbit_vhost, q)
        await publish(rabbit_vhost, q, [b'{"n": 1}'])
        flows[name] = {
            "source": rabbit_source(q, 10),
            "steps": {
                "collect": {
                    "format": "ndjson",
                    "max_messages": 10,
                    "max_wait": "300ms",
                    "filename": "b-{batch_start:%z}-{id:.8}.ndjson",
                }
            },
            # the plain flow's target leaves filename out: collect's own name is kept all the same
            "target": {"type": "directory", "path": str(out / name), **({"filename": "{name}"} if zone else {})},
            **({"timezone": zone} if zone else {}),
        }
    cfg = write_config(tmp_path, {"mq": rabbit_vhost.instance_config()}, flows)
    async with running(cfg):
        zoned = await wait_for(lambda: files_in(out / "zoned") or None, 30)
        plain = await wait_for(lambda: files_in(out / "plain") or None, 30)
    ((zname, _),) = zoned.items()
    ((pname, _),) = plain.items()
    assert zname.startswith("b-+1400-")  # Kiritimati is UTC+14 all year
    assert pname.startswith("b-+0000-")
