"""The fault suite's daemon-level scenarios that the connector suites do not already cover:
a full spool, a target down for a long while, an oversized listing, a Pub/Sub connection cut.

kill -9 per source type is in tests/test_behaviour.py (shared suite), cuts for sftp, ftp and
rabbitmq in each connector's own tests, replicas in tests/test_replicas.py. Every scenario here
writes into a directory target that refuses a second write of a name (``COUNTING_DIRECTORY``),
counts those refusals, asserts that everything arrived once and nothing was left in the spool,
and records its figures with :func:`tests.faultlog.record`.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from tests.backends.pubsub import PubsubBackend
from tests.backends.rabbitmq import RabbitBackend
from tests.backends.sftp import SftpBackend
from tests.counting_sink import settled_count
from tests.faultlog import COUNTING_DIRECTORY, count_bodies, deliveries, record, refused_twice
from tests.harness import DaemonProcess, bodies, wait_for, write_config
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.fault

PATIENT = {"attempts": 10_000, "backoff": "100ms", "max_backoff": "1s"}
"""A retry policy that outlasts the outages below (the flow keeps retrying, it does not give up)."""


def proc_kib(d: DaemonProcess, field: str) -> int:
    """A /proc/PID/status field (VmRSS, VmHWM) of a daemon process, in KiB."""
    assert d.proc is not None
    for line in Path(f"/proc/{d.proc.pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def block(folder: Path) -> None:
    """Make a directory target unusable: a regular file where its folder should be (root ignores modes)."""
    if folder.is_dir():
        for p in folder.iterdir():
            p.unlink()
        folder.rmdir()
    folder.write_bytes(b"not a folder")


def unblock(folder: Path) -> None:
    folder.unlink()


COUNTED_BY = "directory target, exists: fail (second writes refused and counted)"


def target(folder: Path) -> dict[str, Any]:
    """The counting directory target into ``folder``."""
    return {**COUNTING_DIRECTORY, "path": str(folder)}


def once_each(d: DaemonProcess, flow: str, folder: Path | None = None) -> tuple[int, int]:
    """(distinct payloads delivered, second deliveries): the second deliveries are the target's
    refusals of a second write plus any confirmation beyond one per payload in the daemon's log
    (logged at debug level); the distinct ones are the bodies in ``folder``, or without it the
    payloads the log confirms."""
    logs = d.logs()
    counts = [v for k, v in deliveries(logs).items() if k[0] == flow]
    distinct = count_bodies(folder) if folder is not None else len(counts)
    return distinct, refused_twice(logs, flow) + sum(v - 1 for v in counts)


def digests(folder: Path) -> set[str]:
    """SHA-256 of every body in a directory target."""
    return {hashlib.sha256(v).hexdigest() for v in bodies(folder).values()}


def spool_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.spool") if p.exists())


async def test_spool_full_pauses_file_intake_and_loses_nothing(
    sftp_openssh_backend: SftpBackend, tmp_path: Path
) -> None:
    """spool_max far below what is waiting, target blocked: downloads stop at the limit, nothing is
    deleted, the spool never passes its limit; when the target returns everything flows."""
    fb = sftp_openssh_backend
    n_files, size = 40, 48 * 1024
    files = {f"in/s{i:03}.bin": os.urandom(size) for i in range(n_files)}
    for p, data in files.items():
        fb.put(p, data)
    out_f = tmp_path / "out-files"
    block(out_f)
    limit = 256 * 1024
    cfg = write_config(
        tmp_path,
        {"remote": fb.instance_config()},
        {
            "files": {
                "source": {
                    "instance": "remote",
                    "path": "in",
                    "poll_interval": "300ms",
                    "min_age": "0s",
                    "after": "delete",
                },
                "target": target(out_f),
                "retry": PATIENT,
                "max_in_flight": 8,
            },
        },
        spool_threshold="4KiB",
        spool_max=f"{limit}",
    )
    d = DaemonProcess(cfg).start()
    try:
        peak = await _spool_peak(tmp_path / "spool", 6)
        assert 0 < peak <= limit, peak
        assert len(fb.names("in")) == n_files, "nothing deleted while the target is down"
        assert "spool limit reached" in d.text(), "intake hit the spool limit"
        unblock(out_f)
        await wait_for(lambda: count_bodies(out_f) == n_files, 60, 0.2)
        await wait_for(lambda: fb.names("in") == [], 30)
    finally:
        assert d.stop() == 0
    assert digests(out_f) == {hashlib.sha256(v).hexdigest() for v in files.values()}
    assert spool_bytes(tmp_path / "spool") == 0
    distinct, dup = once_each(d, "files", out_f)
    assert distinct == n_files and dup == 0
    record(
        "spool limit reached with the target down (sftp)",
        moved=distinct,
        lost=n_files - distinct,
        duplicates=dup,
        counted_by=COUNTED_BY,
        spool_peak_bytes=peak,
        spool_max=limit,
    )


async def test_spool_full_pauses_message_intake_and_loses_nothing(
    rabbitmq_backend: RabbitBackend, tmp_path: Path
) -> None:
    """The same for a queue: nothing acked while the spool is full; everything once space returns."""
    mb = rabbitmq_backend
    msgs, out_m, cfg, limit = _message_flow_into_blocked_folder(tmp_path, mb)
    n_msgs = len(msgs)
    await mb.publish(msgs)
    d = DaemonProcess(cfg).start()
    try:
        peak = await _spool_peak(tmp_path / "spool", 6)
        assert 0 < peak <= limit, peak
        assert await mb.pending() == n_msgs, "nothing acked while the target is down"
        unblock(out_m)
        await wait_for(lambda: count_bodies(out_m) == n_msgs, 25, 0.2)
        await _until_zero(mb)
    finally:
        assert d.stop() == 0
    assert digests(out_m) == {hashlib.sha256(v).hexdigest() for v in msgs}
    assert spool_bytes(tmp_path / "spool") == 0
    distinct, dup = once_each(d, "msgs", out_m)
    assert distinct == n_msgs and dup == 0
    record(
        "spool limit reached with the target down (rabbitmq)",
        moved=distinct,
        lost=n_msgs - distinct,
        duplicates=dup,
        counted_by=COUNTED_BY,
        spool_peak_bytes=peak,
        spool_max=limit,
    )


async def test_spool_full_pauses_pubsub_intake_and_loses_nothing(pubsub_backend: PubsubBackend, tmp_path: Path) -> None:
    """The same for a Pub/Sub subscription. Its bodies arrive whole in memory (gRPC), so they do not
    go through the spool: intake is bounded by max_in_flight instead (nothing acked can only be
    checked at the end: the emulator cannot count leased messages)."""
    pb = pubsub_backend
    msgs, out_m, cfg, limit = _message_flow_into_blocked_folder(tmp_path, pb)
    n_msgs = len(msgs)
    d = DaemonProcess(cfg).start()
    try:
        await pb.publish(msgs)
        peak = await _spool_peak(tmp_path / "spool", 6)
        assert peak <= limit, peak
        taken = {r["payload_id"] for r in d.logs() if "retrying in " in str(r.get("msg")) and r.get("payload_id")}
        assert 0 < len(taken) <= 8, f"{len(taken)} messages taken in while the target is down (max_in_flight 8)"
        unblock(out_m)
        await wait_for(lambda: count_bodies(out_m) == n_msgs, 60, 0.2)
        await wait_for(lambda: settled_count(tmp_path / "state.db", "msgs") == n_msgs, 30, 0.2)
    finally:
        assert d.stop() == 0
    assert digests(out_m) == {hashlib.sha256(v).hexdigest() for v in msgs}
    assert spool_bytes(tmp_path / "spool") == 0
    assert await asyncio.to_thread(pb._count) == 0
    distinct, dup = once_each(d, "msgs", out_m)
    assert distinct == n_msgs and dup == 0
    record(
        "target down with spool_max set (pubsub: bodies in memory, bounded by max_in_flight)",
        moved=distinct,
        lost=n_msgs - distinct,
        duplicates=dup,
        counted_by=COUNTED_BY,
        spool_peak_bytes=peak,
        spool_max=limit,
    )


def _message_flow_into_blocked_folder(
    tmp_path: Path, backend: RabbitBackend | PubsubBackend
) -> tuple[list[bytes], Path, Path, int]:
    """60 distinct 48 KiB messages (not published yet), a target folder that refuses writes, and a
    config moving the backend's queue into it with a 4 KiB spool threshold and a 256 KiB spool_max:
    (messages, target folder, config, spool_max)."""
    msgs = [os.urandom(48 * 1024) + str(i).encode() for i in range(60)]
    out_m = tmp_path / "out-msgs"
    block(out_m)
    limit = 256 * 1024
    cfg = write_config(
        tmp_path,
        {"broker": backend.instance_config()},
        {
            "msgs": {
                "source": {"instance": "broker", **backend.source_config()},
                "target": target(out_m),
                "retry": PATIENT,
                "max_in_flight": 8,
            },
        },
        spool_threshold="4KiB",
        spool_max=f"{limit}",
    )
    return msgs, out_m, cfg, limit


async def _spool_peak(folder: Path, seconds: float) -> int:
    peak = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        peak = max(peak, spool_bytes(folder))
        await asyncio.sleep(0.05)
    return peak


async def _until_zero(mb: Any) -> None:
    async def zero() -> bool:
        return bool(await mb.pending() == 0)

    await wait_for(zero, 60, 0.5)


async def test_target_down_for_long_backs_off_with_bounded_memory(
    rabbitmq_backend: RabbitBackend, tmp_path: Path
) -> None:
    """A directory target gone for 25 s under a local source and a queue: retries back off to the
    cap, memory stays flat, nothing is deleted or acked; all arrives once it returns."""
    mb = rabbitmq_backend
    n = 200
    src = tmp_path / "disk" / "in"
    src.mkdir(parents=True)
    files = {f"t{i:03}.dat": os.urandom(2000) + str(i).encode() for i in range(n)}
    for name, data in files.items():
        (src / name).write_bytes(data)
    msgs = [os.urandom(2000) + str(i).encode() for i in range(n)]
    await mb.publish(msgs)
    out_f, out_m = tmp_path / "out-files", tmp_path / "out-msgs"
    block(out_f)
    block(out_m)
    cfg = write_config(
        tmp_path,
        {"disk": {"type": "local", "root": str(tmp_path / "disk")}, "broker": mb.instance_config()},
        {
            "files": {
                "source": {
                    "instance": "disk",
                    "path": "in",
                    "poll_interval": "200ms",
                    "min_age": "0s",
                    "after": "delete",
                },
                "target": target(out_f),
                "retry": PATIENT,
            },
            "msgs": {"source": {"instance": "broker", **mb.source_config()}, "target": target(out_m), "retry": PATIENT},
        },
        log={"level": "info", "format": "json"},
    )
    d = DaemonProcess(cfg).start()
    outage = 25.0
    try:
        # The outage itself: time passing with the target down is what this scenario is about.
        await asyncio.sleep(5)
        rss_early = proc_kib(d, "VmRSS")
        await asyncio.sleep(outage - 5)
        rss_late = proc_kib(d, "VmRSS")
        assert len(list(src.iterdir())) == n and await mb.pending() == n
        retries = [r for r in d.logs() if "retrying in " in str(r.get("msg")) and r.get("payload_id")]
        waits = [float(r["msg"].rsplit("retrying in ", 1)[1].rstrip("s")) for r in retries]
        assert waits and max(waits) == pytest.approx(1.0, abs=0.11), "backoff reaches its cap"
        # Backpressure: only max_in_flight (16) payloads per flow were taken in; each retries at most
        # twice a second at the cap (jitter: 0.5-1 s), not thousands of attempts.
        for flow in ("files", "msgs"):
            assert len({r["payload_id"] for r in retries if r.get("flow") == flow}) <= 16
        assert len(waits) < 2 * 16 * (outage + 5) * 2, len(waits)
        assert rss_late - rss_early < 20 * 1024, f"RSS grew {rss_early} -> {rss_late} KiB during the outage"
        unblock(out_f)
        unblock(out_m)
        await wait_for(lambda: count_bodies(out_f) == n and count_bodies(out_m) == n, 90, 0.2)
        await wait_for(lambda: not any(src.iterdir()), 30)
        await _until_zero(mb)
    finally:
        assert d.stop() == 0
    assert digests(out_f) == {hashlib.sha256(v).hexdigest() for v in files.values()}
    assert digests(out_m) == {hashlib.sha256(v).hexdigest() for v in msgs}
    (files_done, files_dup), (msgs_done, msgs_dup) = once_each(d, "files", out_f), once_each(d, "msgs", out_m)
    dup = files_dup + msgs_dup
    assert files_done == n and msgs_done == n and dup == 0
    record(
        "directory target down 25 s (local + rabbitmq)",
        moved=files_done + msgs_done,
        lost=2 * n - files_done - msgs_done,
        duplicates=dup,
        counted_by=COUNTED_BY,
        rss_kib=[rss_early, rss_late],
        retries_logged=len(waits),
    )


async def test_oversized_listing_streams_with_bounded_memory(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """100,000 files in one folder, 200 of them wanted: every poll walks the whole folder, RSS stays
    near an idle daemon's, the wanted ones arrive."""
    # On tmpfs when there is one: 100,000 creates on a busy overlay disk take half a minute.
    shm = Path("/dev/shm")
    disk = Path(tempfile.mkdtemp(dir=shm)) if os.access(shm, os.W_OK) else tmp_path / "disk"
    request.addfinalizer(lambda: shutil.rmtree(disk, ignore_errors=True))
    src = disk / "big"
    src.mkdir(parents=True)
    out = tmp_path / "out"
    cfg = write_config(
        tmp_path,
        {"disk": {"type": "local", "root": str(disk)}},
        {
            "f": {
                "source": {
                    "instance": "disk",
                    "path": "big",
                    "pattern": "*.csv",
                    "poll_interval": "500ms",
                    "min_age": "0s",
                    "after": "delete",
                },
                "target": target(out),
            }
        },
        log={"level": "info", "format": "json"},
    )
    idle = DaemonProcess(cfg).start()
    await asyncio.sleep(3)  # idle for a while: its peak RSS is the baseline
    rss_idle = proc_kib(idle, "VmHWM")
    assert idle.stop() == 0
    t0 = time.monotonic()
    # xargs touch: creating 100,000 files from Python takes half a minute on a busy machine.
    await asyncio.to_thread(
        subprocess.run, "seq -f 'noise-%06g.dat' 0 99999 | xargs touch", shell=True, cwd=src, check=True
    )
    made = time.monotonic() - t0
    wanted = {f"w{i:03}.csv": str(i).encode() * 10 for i in range(200)}
    for name, data in wanted.items():
        (src / name).write_bytes(data)
    d = DaemonProcess(cfg).start()
    try:
        await wait_for(lambda: count_bodies(out) == 200, 120, 0.2)
        await asyncio.sleep(3)  # time for a few more full listings, whose memory is measured
        rss = proc_kib(d, "VmHWM")
    finally:
        assert d.stop() == 0
    assert rss - rss_idle < 40 * 1024, f"peak RSS {rss} KiB against {rss_idle} KiB idle"
    assert len(list(src.iterdir())) == 100_000
    assert digests(out) == {hashlib.sha256(v).hexdigest() for v in wanted.values()}
    distinct, dup = once_each(d, "f", out)
    assert distinct == len(wanted) and dup == 0
    record(
        "100,000-file listing, 200 wanted (local)",
        moved=distinct,
        lost=len(wanted) - distinct,
        duplicates=dup,
        counted_by=COUNTED_BY,
        peak_rss_kib=rss,
        idle_peak_rss_kib=rss_idle,
        seconds_to_create=round(made, 1),
    )


async def test_pubsub_connection_cut_mid_stream(pubsub_backend: PubsubBackend, tmp_path: Path) -> None:
    """Pub/Sub's streaming pull through a TCP proxy that cuts every connection twice mid-stream."""
    pb = pubsub_backend
    n = 300
    msgs = [os.urandom(500) + str(i).encode() for i in range(n)]
    out = tmp_path / "out"
    host, port = pb.emu.host.rsplit(":", 1)
    async with TcpProxy(host, int(port)) as proxy:
        inst = {**pb.instance_config(), "emulator_host": f"127.0.0.1:{proxy.port}"}
        cfg = write_config(
            tmp_path,
            {"broker": inst},
            {"m": {"source": {"instance": "broker", **pb.source_config()}, "target": target(out), "retry": PATIENT}},
        )
        d = DaemonProcess(cfg).start()
        try:
            await pb.publish(msgs)
            await wait_for(lambda: count_bodies(out) >= n // 3, 60, 0.05)
            proxy.cut()
            await wait_for(lambda: count_bodies(out) >= 2 * n // 3, 60, 0.05)
            proxy.cut()
            await wait_for(lambda: count_bodies(out) == n, 90, 0.2)
            await wait_for(lambda: settled_count(tmp_path / "state.db", "m") == n, 30, 0.2)
        finally:
            assert d.stop() == 0
    assert proxy.connections >= 2, "the client reconnected through the proxy"
    assert digests(out) == {hashlib.sha256(m).hexdigest() for m in msgs}
    assert await asyncio.to_thread(pb._count) == 0
    distinct, dup = once_each(d, "m", out)
    assert distinct == n and dup == 0
    record(
        "pubsub streaming pull cut twice by a TCP proxy",
        moved=distinct,
        lost=n - distinct,
        duplicates=dup,
        counted_by=COUNTED_BY,
        proxy_connections=proxy.connections,
    )
