"""``split`` through ``conveyor run``: files into RabbitMQ messages, with confirms, resumed after
a kill -9 from the progress in the state store; bad input fails naming the step and the record."""

from __future__ import annotations

import asyncio
import csv
import gzip
import io
import json
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from conveyor.payload.payload import stable_id
from conveyor.steps import PROGRESS_EVERY, SPLIT_WINDOW
from tests.backends.local import LocalBackend
from tests.backends.pubsub import PubsubBackend, pubsub_backend, pubsub_emulator
from tests.harness import DaemonProcess, running, wait_for, write_config
from tests.servers.rabbitmq import (
    Vhost,
    declare,
    drain,
    rabbit_vhost_fixture,  # noqa: F401  (the rabbit_vhost fixture)
    ready_count,
)
from tests.servers.vsftpd import vsftpd_certs, vsftpd_factory

__all__ = ["pubsub_backend", "pubsub_emulator", "vsftpd_certs", "vsftpd_factory"]


def source(instance: str = "in", **over: Any) -> dict[str, Any]:
    return {"instance": instance, "path": "", "poll_interval": "100ms", "min_age": "0s", "after": "delete", **over}


def csv_text(n: int) -> bytes:
    """A header and ``n`` records, some quoted with commas and line breaks inside."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\r\n")
    w.writerow(["n", "name", "note"])
    for i in range(n):
        w.writerow([i, f"item {i}", f"line one\nline two, {i}" if i % 7 == 0 else "plain"])
    return out.getvalue().encode()


def records_of(body: bytes) -> tuple[list[str], list[list[str]]]:
    """A CSV message's header and data rows."""
    rows = list(csv.reader(io.StringIO(body.decode(), newline="")))
    return rows[0], rows[1:]


async def test_lines_ndjson_and_json_array_with_lineage(rabbit_vhost: Vhost, tmp_path: Path) -> None:
    """Each format's messages: records joined in the input's format, ids derived from the parent's
    id and the first record's index (the AMQP message_id), lineage in the metadata header."""
    src = LocalBackend(tmp_path / "src")
    queues = {fmt: rabbit_vhost.q(f"fmt-{fmt}-{uuid.uuid4().hex[:6]}") for fmt in ("lines", "ndjson", "json_array")}
    for q in queues.values():
        await declare(rabbit_vhost, q)
    flows = {
        fmt: {
            "source": source(include=[f"*.{fmt}"]),
            "steps": [{"split": {"format": fmt, "batch_size": 2}}],
            "target": {"instance": "mq", "routing_key": q},
        }
        for fmt, q in queues.items()
    }
    flows["single"] = {
        "source": source(include=["*.one"]),
        "steps": [{"split": "json_array"}],
        "target": {"instance": "mq", "routing_key": queues["json_array"]},
    }
    cfg = write_config(tmp_path, {"in": src.instance_config(), "mq": rabbit_vhost.instance_config()}, flows)
    src.put("a.lines", b"one\r\ntwo\nthree")
    src.put("a.ndjson", b'{"a": 1}\n\n[2, 3]\n"x"\n')
    src.put("a.json_array", b' [ {"k": [1, 2]}, 3.5e2 ,"s\\"" ] ')
    async with running(cfg):
        await wait_for(lambda: not any(src.exists(n) for n in ("a.lines", "a.ndjson", "a.json_array")), 30)
    got = {fmt: await drain(rabbit_vhost, q) for fmt, q in queues.items()}
    assert [m.body for m in got["lines"]] == [b"one\ntwo\n", b"three\n"]
    assert [m.body for m in got["ndjson"]] == [b'{"a": 1}\n[2, 3]\n', b'"x"\n']
    assert [m.body for m in got["json_array"]] == [b'[{"k": [1, 2]},3.5e2]', b'["s\\""]']
    assert [m.content_type for m in got["ndjson"]] == ["application/x-ndjson"] * 2
    first, second = got["ndjson"]
    meta = json.loads(second.headers["x-conveyor-meta"])
    parent = meta["lineage"][0]["parent"]
    assert meta["lineage"] == [{"parent": parent, "step": 0, "kind": "split", "record": 2, "records": 1}]
    assert second.message_id == meta["id"] == stable_id(parent, 0, ("record", 2))
    assert first.message_id == stable_id(parent, 0, ("record", 0))

    src.put("b.one", b'[{"a": 1}, 2]')
    async with running(cfg):
        await wait_for(lambda: not src.exists("b.one"), 30)
    assert [m.body for m in await drain(rabbit_vhost, queues["json_array"])] == [b'{"a": 1}', b"2"]


async def test_bad_input_fails_naming_the_step_and_the_record(rabbit_vhost: Vhost, tmp_path: Path) -> None:
    """Broken CSV quoting, an invalid ndjson line, a malformed JSON array: each item fails naming
    the step and the record, and its file stays where it was."""
    src = LocalBackend(tmp_path / "src")
    q = rabbit_vhost.q(f"bad-{uuid.uuid4().hex[:6]}")
    await declare(rabbit_vhost, q)
    flows = {
        fmt: {
            "source": source(include=[f"*.{fmt}"]),
            "steps": [{"split": fmt}],
            "target": {"instance": "mq", "routing_key": q},
        }
        for fmt in ("csv", "ndjson", "json_array")
    }
    cfg = write_config(tmp_path, {"in": src.instance_config(), "mq": rabbit_vhost.instance_config()}, flows)
    src.put("x.csv", b'h1,h2\na,b\nc,"d\ne,f\n')
    src.put("x.ndjson", b'{"a": 1}\n{"b": \n')
    src.put("x.json_array", b'[1, 2, {"a" 3}]')
    async with running(cfg) as d:

        async def failed() -> dict[str, str] | None:
            out = {}
            for fmt in flows:
                items = await d.store.list(fmt, "failed")
                if items:
                    out[fmt] = items[0].last_error or ""
            return out if len(out) == len(flows) else None

        errors = await wait_for(failed, 30)
    assert "steps[0] split: record 2 (line 4): broken CSV: unexpected end of data" in errors["csv"]
    assert "steps[0] split: record 2 (line 2): invalid JSON" in errors["ndjson"]
    assert "steps[0] split: record 3: malformed JSON array: Expecting ':' delimiter" in errors["json_array"]
    assert all(src.exists(f"x.{fmt}") for fmt in flows)


@pytest.mark.fault
@pytest.mark.timeout(300)
async def test_gzip_csv_on_vsftpd_split_into_rabbitmq_survives_kill9(
    vsftpd_factory: Any, rabbit_vhost: Vhost, tmp_path: Path
) -> None:
    """A gzip'd CSV on vsftpd → decompress → split (header kept in each batch) → RabbitMQ with
    confirms, ``conveyor run`` killed with SIGKILL mid-file: the restarted daemon goes on from
    the last recorded position, every record arrives, and copies (by message id) come only
    from the window since that record."""
    srv = vsftpd_factory()
    n, size = 120_000, 10
    data = csv_text(n)
    path = srv.root / "orders.csv.gz"
    path.write_bytes(gzip.compress(data))
    srv.own(path)
    q = rabbit_vhost.q(f"split-{uuid.uuid4().hex[:6]}")
    await declare(rabbit_vhost, q)
    cfg = write_config(
        tmp_path,
        {"ftp": srv.config(), "mq": rabbit_vhost.instance_config()},
        {
            "f": {
                "source": source("ftp"),
                "steps": [{"decompress": "gzip"}, {"split": {"format": "csv", "batch_size": size, "header": "keep"}}],
                "target": {"instance": "mq", "routing_key": q},
            }
        },
    )
    first = DaemonProcess(cfg).start()
    try:
        await wait_for(lambda: ready_count(rabbit_vhost, q), 60, 0.01)  # it has begun
        await wait_for(_at_least(rabbit_vhost, q, 1500), 60, 0.01)
    finally:
        first.kill9()
    assert path.exists(), "the file is settled only once every message is confirmed"
    with sqlite3.connect(tmp_path / "state.db") as db:
        recorded = db.execute("SELECT position FROM item_progress WHERE flow='f'").fetchone()
    db.close()
    published_before = await ready_count(rabbit_vhost, q)
    assert recorded is not None and 0 < recorded[0] < n
    assert published_before < n // size, "the kill came after the last message"
    second = DaemonProcess(cfg).start()
    try:
        await wait_for(lambda: not path.exists(), 120)
    finally:
        second.stop()
    messages = await _consume_all(rabbit_vhost, q, expect=n // size)
    by_id: dict[str, bytes] = {}
    for m in messages:
        assert by_id.setdefault(m.message_id, m.body) == m.body, "a redo gives the same id the same records"
    assert len(by_id) == n // size
    copies = len(messages) - len(by_id)
    window = PROGRESS_EVERY + SPLIT_WINDOW  # unrecorded confirmed messages, and those awaiting a confirm
    assert copies <= window, f"{copies} messages sent twice: more than the window since the last record"
    assert len(messages) < published_before + n // size, "the restart went on from the record, not the start"
    seen: list[int] = []
    for body in by_id.values():
        header, rows = records_of(body)
        assert header == ["n", "name", "note"] and len(rows) == size
        seen += [int(r[0]) for r in rows]
    assert sorted(seen) == list(range(n))


async def test_ndjson_split_into_pubsub(pubsub_backend: PubsubBackend, tmp_path: Path) -> None:
    """An ndjson file into a Pub/Sub topic, three records a message: each message's id (derived
    from the file's and the first record's index) is its conveyor_id attribute."""
    emu = pubsub_backend.emu
    topic, sub = f"{pubsub_backend.topic}-split", f"{pubsub_backend.topic}-split-sub"
    emu.create(topic, sub)
    src = LocalBackend(tmp_path / "src")
    cfg = write_config(
        tmp_path,
        {"in": src.instance_config(), "gcp": pubsub_backend.instance_config()},
        {
            "f": {
                "source": source(),
                "steps": [{"split": {"format": "ndjson", "batch_size": 3}}],
                "target": {"instance": "gcp", "topic": topic},
            }
        },
    )
    src.put("events.ndjson", b"".join(json.dumps({"n": i}).encode() + b"\n" for i in range(10)))
    got: dict[bytes, Any] = {}
    async with running(cfg):
        await wait_for(lambda: not src.exists("events.ndjson"), 30)

        async def all_in() -> bool:
            await asyncio.to_thread(emu.pull_into, sub, got)
            return len(got) >= 4

        await wait_for(all_in, 30, 0.2)
    numbers = sorted(json.loads(line)["n"] for body in got for line in body.splitlines())
    assert numbers == list(range(10))
    m = got[b'{"n": 9}\n']
    meta = json.loads(m.attributes["conveyor_meta"])
    parent = meta["lineage"][0]["parent"]
    assert meta["lineage"] == [{"parent": parent, "step": 0, "kind": "split", "record": 9, "records": 1}]
    assert m.attributes["conveyor_id"] == meta["id"] == stable_id(parent, 0, ("record", 9))


def _at_least(v: Vhost, q: str, n: int) -> Any:
    async def check() -> bool:
        return await ready_count(v, q) >= n

    return check


async def _consume_all(v: Vhost, q: str, expect: int) -> list[Any]:
    """Every message on the queue, as a consumer counts them (acked as read)."""
    out: list[Any] = []
    async with await aio_pika.connect(v.url) as conn:
        ch = await conn.channel()
        await ch.set_qos(prefetch_count=500)
        queue = await ch.declare_queue(q, passive=True)
        while True:
            msg = await queue.get(fail=False, no_ack=True)
            if msg is None:
                break
            out.append(msg)
    assert len(out) >= expect
    return out


def test_a_second_split_is_a_config_error(tmp_path: Path) -> None:
    from conveyor.config import load_config
    from conveyor.errors import ConfigError

    cfg = write_config(
        tmp_path,
        {"in": {"type": "local", "root": str(tmp_path)}},
        {
            "f": {
                "source": source(),
                "steps": [{"split": "lines"}, {"split": {"format": "csv", "header": "drop"}}],
                "target": {"type": "directory", "path": str(tmp_path / "out")},
            }
        },
    )
    with pytest.raises(ConfigError, match=r"flows\.f\.steps.*one split step"):
        load_config(cfg)
