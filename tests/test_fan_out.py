"""Fan-out and routing through `conveyor run`: a flow with a `targets:` list on real servers.

- Routing by name: csv files to one directory, xml files to another, the rest matched by no
  target and settled as such; the ledger (`conveyor ledger`) and /status (`conveyor status`)
  show each target's part.
- A directory target and an SFTP upload (OpenSSH sshd) side by side, the sshd down for a while:
  the directory gets each file once at once, the SFTP server each file once after it is back,
  and no source file is deleted before both have it.
- kill -9 of the daemon in the middle of fan-out deliveries: nothing lost, nothing delivered twice
  to a target beyond what a kill between a target's answer and its ledger record excuses.
- Routing RabbitMQ messages by header; a state file from before per-target records still works.
- Bad input: `when:` keys the source's payloads can never have, and other `targets:` mistakes,
  each an error naming its key path.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from conveyor.payload.payload import stable_id
from conveyor.state.sqlite import SCHEMA
from tests.backends.sftp import sftp_folder
from tests.counting_sink import CountingSink, classify, counting_sink, kill_points
from tests.faultlog import COUNTING_DIRECTORY, count_bodies, record
from tests.harness import DaemonProcess, bodies, running, wait_for, write_config
from tests.servers.asyncssh_server import ssh_client_keys  # noqa: F401  (fixture)
from tests.servers.ops import free_port
from tests.servers.rabbitmq import Vhost
from tests.servers.restartable import kill_tree, killable_sshd, restart_sshd  # noqa: F401  (fixture)
from tests.servers.sshd import Sshd
from tests.test_faults import PATIENT

CONVEYOR = [sys.executable, "-m", "conveyor"]


def source(root: Path, **over: Any) -> dict[str, Any]:
    """A local folder ``root/in``, polled every 200 ms, files taken at once and deleted once delivered."""
    (root / "in").mkdir(parents=True, exist_ok=True)
    src = {"instance": "box", "path": "in", "poll_interval": "200ms", "min_age": "0s", "after": "delete"}
    src.update(over)
    return src


def box(root: Path) -> dict[str, Any]:
    return {"type": "local", "root": str(root)}


def target_deliveries(d: DaemonProcess, flow: str) -> Counter[tuple[str, str]]:
    """(target, payload id) -> confirmations in the daemon's debug log."""
    out: Counter[tuple[str, str]] = Counter()
    for r in d.logs():
        msg = str(r.get("msg", ""))
        if r.get("flow") == flow and r.get("target") and msg.startswith("delivered ") and " in " in msg:
            out[(str(r["target"]), str(r.get("payload_id")))] += 1
    return out


def cli(*args: str) -> tuple[int, str, str]:
    p = subprocess.run([*CONVEYOR, *args], capture_output=True, text=True, timeout=60)
    return p.returncode, p.stdout, p.stderr


async def test_routes_by_name_and_settles_what_no_target_takes(tmp_path: Path) -> None:
    """csv to one directory, xml to another, a file both globs miss to neither: it is settled
    (deleted) as "no target", counted, and shown so by the ledger and /status."""
    csv_out, xml_out = tmp_path / "csv", tmp_path / "xml"
    port = free_port()
    cfg = write_config(
        tmp_path,
        {"box": box(tmp_path)},
        {
            "f": {
                "source": source(tmp_path),
                "targets": [
                    {
                        "name": "csv",
                        "type": "directory",
                        "filename": "{name}",
                        "path": str(csv_out),
                        "when": {"name": "*.csv"},
                    },
                    {
                        "type": "directory",
                        "filename": "{name}",
                        "path": str(xml_out),
                        "when": {"name": ["*.xml", "*.XML"]},
                    },
                ],
            }
        },
        health={"listen": f"127.0.0.1:{port}"},
    )
    files = {"a.csv": b"a,1\n", "b.csv": b"b,2\n", "c.xml": b"<c/>", "D.XML": b"<d/>", "e.txt": b"neither"}
    for name, data in files.items():
        (tmp_path / "in" / name).write_bytes(data)
    d = DaemonProcess(cfg).start()
    try:
        await wait_for(lambda: list((tmp_path / "in").iterdir()) == [], 30)
        await wait_for(lambda: "matched no target" in d.text(), 10)
        assert bodies(csv_out) == {"a.csv": b"a,1\n", "b.csv": b"b,2\n"}
        assert bodies(xml_out) == {"c.xml": b"<c/>", "D.XML": b"<d/>"}

        code, out, err = await asyncio.to_thread(cli, "ledger", "-c", str(cfg), "f")
        assert code == 0, err
        rows = {line.split()[5]: line for line in out.splitlines()[1:] if len(line.split()) > 6}
        assert "csv=delivered" in rows["a.csv"] and "directory" not in rows["a.csv"]
        assert "directory=delivered" in rows["c.xml"]
        assert "no target" in rows["e.txt"] and rows["e.txt"].split()[1] == "delivered"

        code, out, err = await asyncio.to_thread(cli, "status", "-c", str(cfg))
        assert code == 0, err
        section = out.split("targets:", 1)[1].splitlines()
        assert any(line.split()[:3] == ["f", "csv", "2"] for line in section), out
        assert any(line.split()[:3] == ["f", "directory", "2"] for line in section), out
        assert any(line.split()[:3] == ["f", "(no", "target)"] and line.split()[3] == "1" for line in section), out
    finally:
        d.stop()
    counts = target_deliveries(d, "f")
    assert sorted(t for t, _ in counts) == ["csv", "csv", "directory", "directory"]
    assert set(counts.values()) == {1}


async def test_status_and_metrics_count_each_target(tmp_path: Path) -> None:
    """The /status document and /metrics: each target's deliveries, and the payloads no target took."""
    import aiohttp

    from tests.servers.ops import daemon_in_process, get_json

    cfg = write_config(
        tmp_path,
        {"box": box(tmp_path)},
        {
            "f": {
                "source": source(tmp_path),
                "targets": [
                    {
                        "name": "big",
                        "type": "directory",
                        "filename": "{name}",
                        "path": str(tmp_path / "big"),
                        "when": {"min_size": "1KiB"},
                    },
                    {
                        "name": "all",
                        "type": "directory",
                        "filename": "{name}",
                        "path": str(tmp_path / "all"),
                        "when": {"max_size": "1MiB"},
                    },
                    {
                        "name": "none",
                        "type": "directory",
                        "filename": "{name}",
                        "path": str(tmp_path / "n"),
                        "when": {"name": "*.zip"},
                    },
                ],
            }
        },
        health={"listen": "127.0.0.1:0"},
    )
    (tmp_path / "in" / "small.bin").write_bytes(b"x" * 10)
    (tmp_path / "in" / "large.bin").write_bytes(b"y" * 4096)
    (tmp_path / "in" / "empty.bin").write_bytes(b"")
    async with daemon_in_process(cfg) as d, aiohttp.ClientSession() as s:
        await wait_for(lambda: list((tmp_path / "in").iterdir()) == [], 30)
        _, doc = await get_json(s, d.health.url + "/status")
        flow = doc["flows"]["f"]
        assert flow["targets"]["big"]["delivered"] == 1
        assert flow["targets"]["all"]["delivered"] == 3
        assert flow["targets"]["none"]["delivered"] == 0
        assert flow["no_target"] == 0 and flow["delivered"] == 3
        async with s.get(d.health.url + "/metrics") as r:
            text = await r.text()
    assert 'conveyor_target_deliveries_total{flow="f",outcome="delivered",target="all"} 3.0' in text
    assert 'conveyor_payloads_total{flow="f",outcome="no_target"} 0.0' in text
    assert set(bodies(tmp_path / "big")) == {"large.bin"}


async def test_a_target_that_failed_for_good_is_retried_alone(tmp_path: Path) -> None:
    """An HTTP target refuses a file (422, permanent) while the directory takes it: the item is
    failed, the ledger shows which target has it; a ledger retry sends it to the HTTP target alone."""
    import aiohttp

    from tests.servers.ops import api_headers, daemon_in_process, get_json, http_sink, status

    async with http_sink(plan=[status(422, "bad row")]) as sink:
        cfg = write_config(
            tmp_path,
            {"box": box(tmp_path)},
            {
                "f": {
                    "source": source(tmp_path, after="keep"),
                    "targets": [
                        {"name": "archive", "type": "directory", "path": str(tmp_path / "out")},
                        {"name": "hook", "type": "http", "url": sink.url},
                    ],
                }
            },
            health={"listen": "127.0.0.1:0"},
        )
        (tmp_path / "in" / "a.csv").write_bytes(b"a,1\n")
        async with daemon_in_process(cfg) as d, aiohttp.ClientSession(headers=api_headers(cfg)) as s:
            base = d.health.url + "/flows/f/items"
            await wait_for(lambda: getattr(d.status.flows.get("f"), "failed", 0) == 1, 30)
            _, doc = await get_json(s, base + "?state=failed")
            [item] = doc["items"]
            assert item["targets"]["archive"]["state"] == "delivered"
            assert item["targets"]["hook"]["state"] == "failed" and "422" in item["targets"]["hook"]["last_error"]
            assert "hook: " in item["last_error"]
            code, doc = await get_json(s, f"{base}/{item['id']}/retry", method="POST")
            assert code == 200
            await wait_for(lambda: getattr(d.status.flows.get("f"), "delivered", 0) == 1, 30)
            _, doc = await get_json(s, base)
            assert doc["items"][0]["state"] == "delivered"
            assert {n: t["state"] for n, t in doc["items"][0]["targets"].items()} == {
                "archive": "delivered",
                "hook": "delivered",
            }
            assert doc["items"][0]["targets"]["hook"]["attempts"] == 2
            assert doc["items"][0]["targets"]["archive"]["attempts"] == 1, "the archive was not sent it again"
            assert d.status.flows["f"].targets["archive"].delivered == 1
        assert len(sink.received) == 2
    assert bodies(tmp_path / "out") != {}


# -- a directory and an SFTP server, the SFTP server down for a while ------------------------------
@pytest.mark.fault
@pytest.mark.timeout(300)
async def test_directory_and_sftp_with_the_sftp_server_down(killable_sshd: Sshd, tmp_path: Path) -> None:  # noqa: F811
    """The directory gets each file once while the SFTP server is down; the SFTP server gets each
    once after it is back; a source file is deleted only once both have it."""
    remote = sftp_folder(killable_sshd)
    out = tmp_path / "out"
    n = 12
    files = {f"f{i:02}.csv": os.urandom(2000 + i) for i in range(n)}
    cfg = write_config(
        tmp_path,
        {"box": box(tmp_path), "partner": remote.instance_config(max_connection_attempts=1)},
        {
            "f": {
                "source": source(tmp_path),
                "targets": [
                    {"name": "archive", **COUNTING_DIRECTORY, "filename": "{name}", "path": str(out)},
                    {"name": "partner", "instance": "partner", "path": "drop", "exists": "fail"},
                ],
                "retry": PATIENT,
                "max_in_flight": n,
            }
        },
    )
    kill_tree(killable_sshd.proc)  # down before the first file
    d = DaemonProcess(cfg).start()
    try:
        for name, data in files.items():
            (tmp_path / "in" / name).write_bytes(data)
        await wait_for(lambda: count_bodies(out) == n, 30)
        # Several failed tries of every file to the SFTP server: the directory's copies stay one each.
        await wait_for(lambda: d.text().count("to partner failed (attempt") >= 2 * n, 60)
        assert sorted(p.name for p in (tmp_path / "in").iterdir()) == sorted(files), "nothing deleted yet"
        with sqlite3.connect(tmp_path / "state.db") as db:
            rows = db.execute("SELECT target, state FROM item_targets WHERE flow='f'").fetchall()
        db.close()
        assert sorted(rows) == [("archive", "delivered")] * n, "the ledger holds the archive's part of each"
        assert remote.names("drop") == []
        await asyncio.to_thread(restart_sshd, killable_sshd)
        # Until every file is gone from the source: each one gone is on both targets already.
        while True:
            left = {p.name for p in (tmp_path / "in").iterdir()}
            there = set(remote.names("drop"))
            for name in set(files) - left:
                assert name in there, f"{name} deleted before the SFTP server had it"
            if not left:
                break
            await asyncio.sleep(0.02)
    finally:
        d.stop()
    assert bodies(out) == files
    assert {name: remote.read(f"drop/{name}") for name in remote.names("drop")} == files
    counts = target_deliveries(d, "f")
    assert len(counts) == 2 * n and set(counts.values()) == {1}, counts
    assert "already exists" not in d.text() and "already holds" not in d.text()
    shutil.rmtree(remote.folder, ignore_errors=True)
    record(
        "fan-out to a directory and sftp, the sshd down then back (local -> directory + sftp)",
        moved=n,
        lost=0,
        duplicates=sum(v - 1 for v in counts.values()),
        counted_by="the daemon's confirmations per target; directory and sftp refuse second writes",
    )


# -- kill -9 in the middle of fan-out deliveries ------------------------------------------------
def delivered_to(state_db: Path, flow: str, target: str) -> set[str]:
    """Ids the ledger holds as delivered to ``target`` (or delivered whole), read after a kill."""
    with sqlite3.connect(state_db) as db:
        rows = db.execute(
            "SELECT id FROM item_targets WHERE flow=? AND target=? AND state='delivered'"
            " UNION SELECT id FROM items WHERE flow=? AND state='delivered'",
            (flow, target, flow),
        ).fetchall()
    return {r[0] for r in rows}


KILLS = 3


@pytest.mark.fault
@pytest.mark.timeout(600)
async def test_kill9_mid_fan_out_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    """Two HTTP sinks count every delivery; the first kills the daemon while it holds a request,
    three times. Each sink ends with every body once; a second delivery to a sink is excused only
    when a kill fell between that sink's answer and the ledger's record of it for that target."""
    n = 120
    files = {f"k{i:03}.bin": os.urandom(3000 + i) for i in range(n)}
    for name, data in files.items():
        (tmp_path / "in").mkdir(exist_ok=True)
        (tmp_path / "in" / name).write_bytes(data)
    want = {hashlib.sha256(v).hexdigest() for v in files.values()}
    async with counting_sink() as first, counting_sink() as second:
        cfg = write_config(
            tmp_path,
            {"box": box(tmp_path)},
            {
                "f": {
                    "source": source(tmp_path),
                    "targets": [{"name": "one", **first.target()}, {"name": "two", **second.target()}],
                    "retry": PATIENT,
                    "max_in_flight": 4,
                }
            },
        )
        points = kill_points(n, KILLS)
        first.points = sorted(points)
        sinks = {"one": first, "two": second}
        for i in range(KILLS):
            d = start_run(cfg, sinks)
            first.kill = d.kill9
            await wait_for(ended(d), 180)
            assert d.proc is not None and d.proc.returncode == -9, d.text()[-2000:]
            await wait_for(lambda: first.open == 0 and second.open == 0, 30)
            for name, sink in sinks.items():
                known = frozenset(delivered_to(tmp_path / "state.db", "f", name))
                if sink is first:
                    sink.kills[i] = replace(sink.kills[i], answers=len(sink.answered), delivered_in_ledger=known)
                else:
                    sink.kills.append(replace(first.kills[i], answers=len(sink.answered), delivered_in_ledger=known))
        d = start_run(cfg, sinks)
        first.kill = d.kill9
        try:
            await wait_for(lambda: first.distinct() == n and second.distinct() == n, 120)
            await wait_for(lambda: list((tmp_path / "in").iterdir()) == [], 30)
        finally:
            d.stop()
    assert len(first.kills) == KILLS and not first.points
    redelivered = 0
    for name, sink in sinks.items():
        assert sink.digests() == want and sink.distinct() == n, name
        second_ones = classify(sink)
        assert second_ones.duplicates == 0, (name, second_ones.examples[:5])
        redelivered += second_ones.window
    assert not list((tmp_path / "spool").glob("*.spool"))
    record(
        f"kill -9 x{KILLS} mid-fan-out to two targets, restarted (local -> http + http)",
        moved=n,
        lost=0,
        duplicates=0,
        redelivered=redelivered,
        counted_by="two http sinks (every POST answered, per target)",
        kill_points=points,
    )


def ended(d: DaemonProcess) -> Callable[[], bool]:
    return lambda: d.proc is not None and d.proc.poll() is not None


def start_run(cfg: Path, sinks: dict[str, CountingSink]) -> DaemonProcess:
    """Start the daemon as run number N + 1; both sinks refuse requests of earlier runs."""
    run = max(s.run for s in sinks.values()) + 1
    for s in sinks.values():
        s.run = run
    return DaemonProcess(cfg, {"CONVEYOR_TEST_RUN": str(run)}).start()


# -- messages ---------------------------------------------------------------------------------------
async def test_routes_rabbitmq_messages_by_header(rabbit_vhost: Vhost, tmp_path: Path) -> None:
    """Orders to one folder, invoices to another; a message without the header goes to neither and is acked."""
    queue = rabbit_vhost.q(f"route-{uuid.uuid4().hex[:8]}")
    async with await aio_pika.connect(rabbit_vhost.url) as conn:
        ch = await conn.channel()
        await ch.declare_queue(queue, durable=True)
        for i, kind in enumerate(["order", "invoice", "order", None]):
            headers: dict[str, Any] = {"type": kind} if kind else {}
            await ch.default_exchange.publish(
                aio_pika.Message(f"m{i}".encode(), headers=headers, message_id=f"m{i}"), routing_key=queue
            )
    orders, invoices = tmp_path / "orders", tmp_path / "invoices"
    cfg = write_config(
        tmp_path,
        {"mq": rabbit_vhost.instance_config()},
        {
            "m": {
                "source": {"instance": "mq", "queue": queue},
                "targets": [
                    {"name": "orders", "type": "directory", "path": str(orders), "when": {"header": {"type": "order"}}},
                    {
                        "name": "bills",
                        "type": "directory",
                        "path": str(invoices),
                        "when": {"header": {"type": "invoice"}},
                    },
                ],
            }
        },
    )
    async with running(cfg) as d:

        def settled() -> bool:
            st = d.status.flows.get("m")  # registered once the daemon has started the flow
            return st is not None and st.delivered + st.no_target == 4

        await wait_for(settled, 30)
        assert d.status.flows["m"].no_target == 1
    assert sorted(bodies(orders).values()) == [b"m0", b"m2"]
    assert list(bodies(invoices).values()) == [b"m1"]
    async with await aio_pika.connect(rabbit_vhost.url) as conn:
        ch = await conn.channel()
        q = await ch.declare_queue(queue, durable=True, passive=True)
        assert q.declaration_result.message_count == 0
        await q.delete()


# -- state files from before ----------------------------------------------------------------------
async def test_a_state_file_from_before_targets_still_works(tmp_path: Path) -> None:
    """A state file of schema version 1 with a file delivered but not yet deleted: the daemon
    migrates it, finishes that file's after action without sending it again, and delivers the rest."""
    (tmp_path / "in").mkdir()
    old = tmp_path / "in" / "old.csv"
    old.write_bytes(b"delivered before the upgrade")
    os.utime(old, (1_700_000_000, 1_700_000_000))
    (tmp_path / "in" / "new.csv").write_bytes(b"new")
    pid = stable_id("box", "in/old.csv", old.stat().st_size, round(old.stat().st_mtime, 3))
    with sqlite3.connect(tmp_path / "state.db") as db:
        db.executescript(SCHEMA)
        db.execute(
            "INSERT INTO items (flow, id, state, attempts, settled, name, path, first_seen, updated)"
            " VALUES ('f', ?, 'delivered', 1, 0, 'old.csv', 'in/old.csv', 1, 1)",
            (pid,),
        )
    db.close()
    out = tmp_path / "out"
    cfg = write_config(
        tmp_path,
        {"box": box(tmp_path)},
        {
            "f": {
                "source": source(tmp_path),
                "targets": [
                    {"type": "directory", "filename": "{name}", "path": str(out)},
                    {"name": "copy", "type": "directory", "filename": "{name}", "path": str(tmp_path / "copy")},
                ],
            }
        },
    )
    async with running(cfg):
        await wait_for(lambda: list((tmp_path / "in").iterdir()) == [], 30)
    assert bodies(out) == {"new.csv": b"new"} and bodies(tmp_path / "copy") == {"new.csv": b"new"}
    with sqlite3.connect(tmp_path / "state.db") as db:
        assert db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == ("3",)
        assert db.execute("SELECT settled FROM items WHERE id=?", (pid,)).fetchone() == (1,)
    db.close()


# -- bad input ------------------------------------------------------------------------------------
def problems(tmp_path: Path, flows: dict[str, Any], instances: dict[str, Any] | None = None) -> str:
    """What `conveyor run` says about a config it refuses (exit 2)."""
    cfg = write_config(tmp_path, instances or {"box": box(tmp_path)}, flows)
    p = subprocess.run([*CONVEYOR, "run", "-c", str(cfg)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2, p.stdout + p.stderr
    assert "Traceback" not in p.stderr
    return p.stderr


def test_when_on_metadata_a_file_source_lacks_is_a_config_error(tmp_path: Path) -> None:
    said = problems(
        tmp_path,
        {
            "f": {
                "source": source(tmp_path),
                "targets": [
                    {"type": "directory", "path": "/tmp/a"},
                    {"name": "eu", "type": "directory", "path": "/tmp/b", "when": {"attr": {"region": "eu"}}},
                    {"name": "orders", "type": "directory", "path": "/tmp/c", "when": {"header": {"type": "order"}}},
                ],
            }
        },
    )
    assert "flows.f.targets[1].when.attr" in said and "files, which have no message attributes" in said, said
    assert "flows.f.targets[2].when.header" in said, said


def test_when_on_metadata_a_broker_lacks_is_a_config_error(tmp_path: Path) -> None:
    said = problems(
        tmp_path,
        {
            "m": {
                "source": {"instance": "mq", "queue": "q"},
                "targets": [{"type": "directory", "path": "/tmp/a", "when": {"attr": {"region": "eu"}}}],
            }
        },
        {"mq": {"type": "rabbitmq", "host": "127.0.0.1", "username": "u", "password": "p"}},
    )
    assert "flows.m.targets[0].when.attr" in said and "no attributes" in said and "header" in said, said


def test_targets_mistakes_name_their_key(tmp_path: Path) -> None:
    said = problems(
        tmp_path,
        {
            "both": {"source": source(tmp_path), "target": {"type": "directory", "path": "/a"}, "targets": []},
            "empty": {"source": source(tmp_path), "targets": []},
            "twins": {
                "source": source(tmp_path),
                "targets": [{"type": "directory", "path": "/a"}, {"type": "directory", "path": "/b"}],
            },
            "badwhen": {
                "source": source(tmp_path),
                "targets": [
                    {
                        "type": "directory",
                        "path": "/a",
                        "when": {"nme": "*.csv", "min_size": "2KiB", "max_size": "1KiB"},
                    }
                ],
            },
            "none": {"source": source(tmp_path)},
        },
    )
    assert "flows.both.targets" in said and "not both" in said, said
    assert "flows.empty.targets" in said and "at least one target" in said, said
    assert "flows.twins.targets[1].name" in said and "named 'directory' too" in said, said
    assert "flows.badwhen.targets[0].when.nme" in said and "unknown key" in said, said
    assert "flows.none.target" in said and "missing required key" in said, said


def test_when_matching() -> None:
    """The rules of `when:` on payloads of each kind, a key the payload lacks never matching."""
    from conveyor.config.schema import WhenConfig
    from conveyor.payload.body import Body
    from conveyor.payload.payload import Payload

    def p(name: str | None, size: int = 3, message: dict[str, Any] | None = None) -> Payload:
        return Payload("i", "f", "s", "t", Body.from_bytes(b"x" * size), name=name, message=message)

    assert WhenConfig.model_validate({}).matches(p(None))
    by_name = WhenConfig.model_validate({"name": "*.csv"})
    assert by_name.matches(p("a.csv")) and not by_name.matches(p("a.CSV")) and not by_name.matches(p(None))
    sized = WhenConfig.model_validate({"min_size": 2, "max_size": "4B"})
    assert [sized.matches(p("x", n)) for n in (1, 2, 4, 5)] == [False, True, True, False]
    attr = WhenConfig.model_validate({"attr": {"region": "eu", "n": 5}})
    assert attr.matches(p(None, message={"attributes": {"region": "eu", "n": "5"}}))
    assert not attr.matches(p(None, message={"attributes": {"region": "eu"}})), "a missing attribute"
    assert not attr.matches(p(None, message={"attributes": {"region": "us", "n": "5"}}))
    assert not attr.matches(p("a.csv")), "a file has no attributes"
    header = WhenConfig.model_validate({"header": {"priority": 5, "urgent": True}})
    assert header.matches(p(None, message={"headers": {"priority": 5, "urgent": True}}))
    assert not header.matches(p(None, message={"headers": {"priority": 6, "urgent": True}}))
    assert json.loads(header.model_dump_json())["header"] == {"priority": "5", "urgent": "true"}
