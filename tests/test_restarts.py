"""Real servers and brokers restarted under a running daemon (a subprocess), mid-transfer.

- OpenSSH sshd SIGKILLed (listener and session processes) while a flow downloads a large file,
  and again while a flow uploads one; started again on the same port with the same host keys.
- vsftpd SIGKILLed the same way mid-download and mid-upload, started again with the same config.
- A private RabbitMQ node (tests/servers/rabbitmq_node.py; the machine's broker on 5672 is left
  alone) stopped (SIGTERM: orderly shutdown) or SIGKILLed while a flow consumes a durable queue,
  and while a flow publishes to one; started again on the same port with the same data.

Every scenario checks each item arrived exactly once (the daemon's own "delivered" log lines,
and the target's contents), byte-identical, with the source completed (files deleted, queue
drained with nothing unacked; no temp file left on an upload target), and records its figures
with :func:`tests.faultlog.record`. Each file scenario moves one 256 MiB file and 20 small ones,
10 of them dropped while the server is down.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from subprocess import Popen
from typing import Any

import pytest

from tests.backends.ftp import FtpBackend
from tests.backends.sftp import SftpBackend, sftp_folder
from tests.faultlog import count_bodies, record
from tests.harness import DaemonProcess, sidecars, wait_for, write_config
from tests.servers.asyncssh_server import ssh_client_keys  # noqa: F401  (fixture)
from tests.servers.rabbitmq import declare, drain
from tests.servers.rabbitmq_node import NodeVhost, RabbitNode, rabbit_node  # noqa: F401  (fixture)
from tests.servers.restartable import kill_tree, killable_sshd, restart_sshd, restart_vsftpd  # noqa: F401  (fixture)
from tests.servers.sshd import Sshd
from tests.servers.vsftpd import vsftpd_certs, vsftpd_factory  # noqa: F401  (fixtures)
from tests.test_faults import PATIENT, once_each, spool_bytes
from tests.test_sftp_faults import pattern_file

pytestmark = pytest.mark.fault

BIG = 256 * 1024 * 1024
"""Large enough that the kill lands mid-transfer (a few seconds on loopback), small enough to stay quick."""
SMALL = 10
"""Small files waiting beside the big one before the kill, and as many more added while the server is down."""


def file_sha256(path: Path) -> str:
    """sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def write_pattern(path: Path, size: int) -> str:
    """A local file of ``size`` bytes (a random 1 MiB block repeated); its sha256."""
    h = hashlib.sha256()
    block = os.urandom(1 << 20)
    with open(path, "wb") as f:
        for _ in range(size >> 20):
            f.write(block)
            h.update(block)
    return h.hexdigest()


def smalls(prefix: str) -> dict[str, bytes]:
    """SMALL small files under ``in/``: name -> content."""
    return {f"in/{prefix}{i:02}.csv": os.urandom(1500) + prefix.encode() for i in range(SMALL)}


def log_count(d: DaemonProcess, text: str) -> int:
    """Log lines of the daemon containing ``text``."""
    return sum(1 for r in d.logs() if text in str(r.get("msg", "")))


def file_flow(instance: str, target: dict[str, Any]) -> dict[str, Any]:
    """A flow polling ``in`` every 200 ms, taking files at once, deleting them once delivered."""
    return {
        "source": {"instance": instance, "path": "in", "poll_interval": "200ms", "min_age": "0s", "after": "delete"},
        "target": target,
        "retry": PATIENT,
    }


async def download_through_restart(
    tmp_path: Path,
    backend: SftpBackend | FtpBackend,
    instance: dict[str, Any],
    kill: Callable[[], Popen[bytes]],
    restart: Callable[[], None],
) -> dict[str, Any]:
    """Common body of the download scenarios: a big file and small ones on the server, the server
    killed once a quarter of the big file is in the spool, more small files dropped on it while it
    is down, restarted once the daemon has failed to resume twice. Returns the figures."""
    digest = pattern_file(backend, "in/big.bin", BIG)
    files = smalls("early")
    for p, data in files.items():
        backend.put(p, data)
    out = tmp_path / "out"
    cfg = write_config(
        tmp_path,
        {"remote": instance},
        {"f": file_flow("remote", {"type": "directory", "path": str(out), "filename": "{name}"})},
    )
    d = DaemonProcess(cfg).start()
    try:
        await wait_for(lambda: spool_bytes(tmp_path / "spool") > BIG // 4, 60, 0.01)
        t_kill = time.monotonic()
        sessions = kill_tree(kill())
        at = spool_bytes(tmp_path / "spool")
        late = smalls("late")
        for p, data in late.items():
            backend.put(p, data)
        files.update(late)
        # Down until the daemon has tried to resume (and failed) twice: it backs off, not gives up.
        await wait_for(lambda: log_count(d, "big.bin interrupted at") >= 2, 30, 0.05)
        await asyncio.to_thread(restart)
        outage = time.monotonic() - t_kill
        await wait_for(lambda: count_bodies(out) == len(files) + 1, 120, 0.1)
        await wait_for(lambda: backend.names("in") == [], 30, 0.1)
    finally:
        assert d.stop() == 0
    got = {p.name for p in out.iterdir() if not p.name.endswith(".meta.json")}
    want = {"big.bin"} | {p.split("/")[1] for p in files}
    assert got == want
    assert file_sha256(out / "big.bin") == digest
    (out / "big.bin").unlink()  # pytest keeps the last runs' tmp_path: do not keep 256 MiB in each
    for p, data in files.items():
        assert (out / p.split("/")[1]).read_bytes() == data
    assert len(sidecars(out)) == len(want)
    distinct, dup = once_each(d, "f")
    assert distinct == len(want) and dup == 0
    assert spool_bytes(tmp_path / "spool") == 0
    return {
        "moved": distinct,
        "lost": len(want - got),
        "duplicates": dup,
        "big_bytes": BIG,
        "killed_at_bytes": at,
        "sessions_killed": sessions,
        "outage_s": round(outage, 2),
        "resume_attempts_logged": log_count(d, "big.bin interrupted at"),
    }


@pytest.mark.timeout(600)
async def test_sshd_killed_mid_download(killable_sshd: Sshd, tmp_path: Path) -> None:  # noqa: F811
    """sshd and its sessions SIGKILLed a quarter into a 256 MiB download, 20 small files pending:
    the download resumes after the restart, every file arrives once, whole, and is deleted."""
    b = sftp_folder(killable_sshd)
    try:
        figures = await download_through_restart(
            tmp_path,
            b,
            b.instance_config(max_connection_attempts=2),
            lambda: killable_sshd.proc,
            lambda: restart_sshd(killable_sshd),
        )
    finally:
        shutil.rmtree(b.folder, ignore_errors=True)
    record("sshd killed (SIGKILL) and restarted mid-download (sftp -> directory)", **figures)


async def upload_through_restart(
    tmp_path: Path,
    instance: dict[str, Any],
    out: Path,
    refused: str,
    kill: Callable[[], Popen[bytes]],
    restart: Callable[[], None],
) -> dict[str, Any]:
    """Common body of the upload scenarios: a big local file and small ones uploaded into ``out``
    on the server (the instance's ``out`` folder), the server killed once a quarter of the big
    file's temp file is written, more small files added while it is down, restarted once the
    upload failed and a reconnect was refused (a log line containing ``refused``). The folder
    must end with every file once, whole, and no temp file. Returns the figures."""
    disk = tmp_path / "disk"
    (disk / "in").mkdir(parents=True)
    digest = write_pattern(disk / "in" / "big.bin", BIG)
    files = smalls("early")
    for p, data in files.items():
        (disk / p).write_bytes(data)
    cfg = write_config(
        tmp_path,
        {"disk": {"type": "local", "root": str(disk)}, "remote": instance},
        {"f": file_flow("disk", {"instance": "remote", "path": "out"})},
    )

    def temp_bytes() -> int:
        return sum(p.stat().st_size for p in out.glob(".big.bin.*.tmp"))

    def names() -> list[str]:
        return sorted(p.name for p in out.iterdir())

    d = DaemonProcess(cfg).start()
    try:
        await wait_for(lambda: temp_bytes() > BIG // 4, 60, 0.01)
        t_kill = time.monotonic()
        sessions = kill_tree(kill())
        at = temp_bytes()
        temps_at_kill = sorted(p.name for p in out.glob(".*.tmp"))
        late = smalls("late")
        for p, data in late.items():
            (disk / p).write_bytes(data)
        files.update(late)
        # Down until the upload failed and a reconnect was refused: the daemon retries with backoff.
        await wait_for(lambda: log_count(d, "delivery of big.bin failed") >= 1 and log_count(d, refused) >= 1, 30, 0.05)
        await asyncio.to_thread(restart)
        outage = time.monotonic() - t_kill
        want = sorted({"big.bin"} | {p.split("/")[1] for p in files})
        await wait_for(lambda: [n for n in names() if not n.endswith(".tmp")] == want, 120, 0.1)
        await wait_for(lambda: not any((disk / "in").iterdir()), 30, 0.1)
    finally:
        assert d.stop() == 0
    assert temps_at_kill, "the kill came mid-upload: a temp file was being written"
    assert names() == want, "no temp file left behind"
    assert file_sha256(out / "big.bin") == digest
    for p, data in files.items():
        assert (out / p.split("/")[1]).read_bytes() == data
    distinct, dup = once_each(d, "f")
    assert distinct == len(want) and dup == 0
    return {
        "moved": distinct,
        "lost": 0,
        "duplicates": dup,
        "big_bytes": BIG,
        "killed_at_bytes": at,
        "sessions_killed": sessions,
        "outage_s": round(outage, 2),
        "failed_attempts_logged": log_count(d, "delivery of big.bin failed"),
        "temp_files_at_kill": len(temps_at_kill),
    }


async def test_sshd_killed_mid_upload(killable_sshd: Sshd, tmp_path: Path) -> None:  # noqa: F811
    """sshd killed a quarter into a 256 MiB upload (local -> sftp): the retry rewrites the same
    temp file and renames it; the target folder ends with every file once and no temp file."""
    b = sftp_folder(killable_sshd)
    try:
        figures = await upload_through_restart(
            tmp_path,
            b.instance_config(max_connection_attempts=2),
            b.mkdir("out"),
            "cannot connect to",
            lambda: killable_sshd.proc,
            lambda: restart_sshd(killable_sshd),
        )
    finally:
        shutil.rmtree(b.folder, ignore_errors=True)
    record("sshd killed (SIGKILL) and restarted mid-upload (local -> sftp)", **figures)


async def test_vsftpd_killed_mid_upload(vsftpd_factory: Any, tmp_path: Path) -> None:  # noqa: F811
    """vsftpd killed a quarter into a 256 MiB upload (local -> ftp): the target folder ends with
    every file once and no temp file."""
    v = vsftpd_factory(tls="none")
    out = v.root / "out"
    out.mkdir()
    v.own(out)
    figures = await upload_through_restart(
        tmp_path, v.config(), out, "Connect call failed", lambda: v.proc, lambda: restart_vsftpd(v)
    )
    record("vsftpd killed (SIGKILL) and restarted mid-upload (local -> ftp)", **figures)


@pytest.mark.timeout(600)
async def test_vsftpd_killed_mid_download(vsftpd_factory: Any, tmp_path: Path) -> None:  # noqa: F811
    """vsftpd and its sessions SIGKILLed a quarter into a 256 MiB download: resumed with REST after
    the restart, every file once, whole, deleted."""
    v = vsftpd_factory(tls="none")
    b = FtpBackend("ftp-vsftpd", v)
    figures = await download_through_restart(tmp_path, b, v.config(), lambda: v.proc, lambda: restart_vsftpd(v))
    record("vsftpd killed (SIGKILL) and restarted mid-download (ftp -> directory)", **figures)


# -- RabbitMQ ---------------------------------------------------------------------------------
async def publish_with_ids(v: NodeVhost, queue: str, n: int, size: int = 600) -> dict[str, bytes]:
    """Publish ``n`` persistent messages with message ids m00000... (confirmed in batches of 200)."""
    import aio_pika

    msgs = {f"m{i:05}": os.urandom(size) for i in range(n)}
    async with await aio_pika.connect(v.url) as conn:
        ch = await conn.channel()
        items = list(msgs.items())
        for i in range(0, n, 200):
            await asyncio.gather(
                *(
                    ch.default_exchange.publish(
                        aio_pika.Message(body, message_id=mid, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                        routing_key=queue,
                    )
                    for mid, body in items[i : i + 200]
                )
            )
    return msgs


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
async def test_broker_restart_mid_consume(rabbit_node: RabbitNode, tmp_path: Path, how: str) -> None:  # noqa: F811
    """A durable queue of persistent messages consumed into a directory; the broker stopped and
    started again mid-stream: every message lands once, the queue ends empty with nothing unacked."""
    node = rabbit_node
    v = node.vhost()
    q = f"restart-consume-{how}"
    await declare(v, q)
    n = 3000
    msgs = await publish_with_ids(v, q, n)
    out = tmp_path / "out"
    cfg = write_config(
        tmp_path,
        {"mq": v.instance_config()},
        {
            "c": {
                "source": {"instance": "mq", "queue": q, "prefetch": 50},
                "target": {"type": "directory", "path": str(out)},
                "retry": PATIENT,
            }
        },
    )
    d = DaemonProcess(cfg).start()
    try:
        await wait_for(lambda: count_bodies(out) >= n // 10, 60, 0.01)
        t_stop = time.monotonic()
        await asyncio.to_thread(node.stop, kill=how == "sigkill")
        at = count_bodies(out)
        assert at < n, "the broker went down mid-stream"
        boot = await asyncio.to_thread(node.start)
        outage = time.monotonic() - t_stop
        # The durable queue must come back with the node; a broker that lost it after a SIGKILL
        # leaves conveyor waiting on NOT_FOUND, so fail here, with the node's log. A node recovers
        # its queues a moment after it answers, more slowly after a SIGKILL: give it 30 s.
        for _ in range(60):
            try:
                await asyncio.to_thread(node.queue, q)
                break
            except AssertionError:
                await asyncio.sleep(0.5)
        await asyncio.to_thread(node.queue, q)
        await wait_for(lambda: count_bodies(out) == n, 120, 0.2)
        await wait_for(lambda: node.queue(q) == (0, 0), 60, 0.5)
    finally:
        assert d.stop() == 0
    assert node.queue(q) == (0, 0), "queue drained, nothing left unacked"
    got = {p.name: p for p in out.iterdir() if not p.name.endswith(".meta.json")}
    assert set(got) == set(msgs)
    assert all(got[mid].read_bytes() == body for mid, body in msgs.items())
    distinct, dup = once_each(d, "c")
    assert distinct == n and dup == 0
    record(
        f"private RabbitMQ node restarted ({how}) mid-consume (rabbitmq -> directory)",
        moved=distinct,
        lost=n - len(got),
        duplicates=dup,
        delivered_before_restart=at,
        outage_s=round(outage, 2),
        boot_s=round(boot, 2),
    )


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
async def test_broker_restart_mid_publish(rabbit_node: RabbitNode, tmp_path: Path, how: str) -> None:  # noqa: F811
    """Local files published with confirms to a durable queue; the broker stopped and started again
    mid-stream: no file is missing from the queue (a source file is deleted only after its
    confirm). A second copy of a message is possible only where a confirm was lost: each one
    must belong to a file whose publish failed and was retried; they are counted."""
    node = rabbit_node
    v = node.vhost()
    q = f"restart-publish-{how}"
    await declare(v, q)
    n = 2000
    disk = tmp_path / "disk"
    (disk / "in").mkdir(parents=True)
    files = {f"f{i:05}.dat": os.urandom(600) + str(i).encode() for i in range(n)}
    for name, data in files.items():
        (disk / "in" / name).write_bytes(data)
    cfg = write_config(
        tmp_path,
        {"disk": {"type": "local", "root": str(disk)}, "mq": v.instance_config()},
        {"p": file_flow("disk", {"instance": "mq", "routing_key": q})},
    )

    def left() -> int:
        return sum(1 for _ in os.scandir(disk / "in"))

    d = DaemonProcess(cfg).start()
    try:
        await wait_for(lambda: left() <= n - n // 10, 60, 0.01)
        t_stop = time.monotonic()
        await asyncio.to_thread(node.stop, kill=how == "sigkill")
        at = n - left()
        assert left() > 0, "the broker went down mid-stream"
        boot = await asyncio.to_thread(node.start)
        outage = time.monotonic() - t_stop
        await wait_for(lambda: left() == 0, 120, 0.2)
    finally:
        assert d.stop() == 0
    got = await drain(v, q, wait=60)  # the whole queue (drain stops at the first empty get)
    names = collections.Counter(json.loads(m.headers["x-conveyor-meta"])["name"] for m in got)
    missing = set(files) - set(names)
    assert not missing, f"{len(missing)} files deleted at the source but not on the queue"
    for m in got:
        name = json.loads(m.headers["x-conveyor-meta"])["name"]
        assert m.body == files[name]
    extra = {k: c - 1 for k, c in names.items() if c > 1}
    retried = {r["msg"].split(" ")[2] for r in d.logs() if str(r.get("msg", "")).startswith("delivery of ")}
    assert set(extra) <= retried, "a second copy only of a message whose publish was retried"
    distinct, dup = once_each(d, "p")
    assert distinct == n and dup == 0
    assert node.queue(q) == (0, 0)
    record(
        f"private RabbitMQ node restarted ({how}) mid-publish (local -> rabbitmq, confirms)",
        moved=distinct,
        lost=len(missing),
        duplicates=dup,
        broker_extra_copies=sum(extra.values()),
        published_before_restart=at,
        publishes_retried=len(retried),
        outage_s=round(outage, 2),
        boot_s=round(boot, 2),
    )


async def test_publish_queued_on_a_channel_that_closes_is_retried_not_stuck(
    rabbit_node: RabbitNode,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The hang the mid-publish restart found, made deterministic: a publish queued behind another
    on the channel's lock (as behind one blocked on a dead connection's full write queue) when the
    broker closes the connection. aiormq never wakes it; the target aborts it when its channel
    closes and raises Transient, so the flow retries it on a new connection."""
    from conveyor.brokers.rabbitmq.config import RabbitTargetConfig
    from conveyor.errors import Transient
    from conveyor.payload import Body, Payload
    from tests.servers.rabbitmq import make_instance

    v = rabbit_node.vhost()
    q = "restart-stuck-publish"
    await declare(v, q)

    def payload(name: str) -> Payload:
        return Payload(
            id=name,
            flow="f",
            source_instance="disk",
            source_type="local",
            body=Body.from_bytes(name.encode()),
            name=name,
        )

    inst = make_instance(v, tmp_path / "spool")
    target = inst.target("f", RabbitTargetConfig.model_validate({"instance": "mq", "routing_key": q}))
    try:
        await target.deliver(payload("before"))
        raw = await target._channel()
        async with raw.lock:  # the publish ahead of it, holding the lock
            queued = asyncio.create_task(target.deliver(payload("queued")))
            await wait_for(lambda: len(target._publishing) == 1, 10, 0.01)  # the queued publish
            closed = await asyncio.to_thread(rabbit_node.ctl, "close_all_connections", "restart test")
            assert closed.returncode == 0, closed.stderr
            with pytest.raises(Transient, match="channel closed while publishing"):
                async with asyncio.timeout(30):
                    await queued
        await target.deliver(payload("after"))  # a new connection and channel
    finally:
        await target.close()
        await inst.close()
    assert sorted(m.body for m in await drain(v, q, wait=10)) == [b"after", b"before"]
    assert rabbit_node.queue(q) == (0, 0)
