"""``conveyor run --once`` as a real process: every file flow polled once, every queue drained until
idle, everything delivered, then the exit code (0 all delivered, 1 an item failed, 2 a config
error). Killed with SIGKILL half-way, nothing is lost and the next run finishes the work — against
a local folder, OpenSSH's sshd, vsftpd (explicit TLS), RabbitMQ and the Pub/Sub emulator."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import MESSAGE_BACKENDS
from tests.harness import bodies, write_config
from tests.servers.ops import delayed, http_sink, status

N = 12
"""Items per kill -9 scenario: enough that the kill lands with most still to do."""


async def run_once(cfg: Path, *extra: str, kill_after: Any = None) -> tuple[int, str]:
    """``conveyor run --once -c cfg`` to its end (or SIGKILL once ``kill_after()`` is true):
    (exit code, output)."""
    log = cfg.parent / f"once-{os.urandom(4).hex()}.log"
    with open(log, "wb") as out:  # noqa: ASYNC230 (a local file, opened once)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "conveyor", "run", "--once", "-c", str(cfg), *extra, stdout=out, stderr=out
        )
        if kill_after is not None:
            for _ in range(1200):
                if kill_after() or proc.returncode is not None:
                    break
                await asyncio.sleep(0.05)
            assert proc.returncode is None, "the run ended before the kill: nothing was left to do"
            proc.send_signal(signal.SIGKILL)
        rc = await asyncio.wait_for(proc.wait(), 120)
    return rc, log.read_text(errors="replace")


def local_config(tmp: Path, target: dict[str, Any], **source: Any) -> Path:
    inbox = tmp / "in"
    inbox.mkdir(exist_ok=True)
    src = {"instance": "box", "path": "in", "poll_interval": "1h", "min_age": "0s", "after": "delete", **source}
    return write_config(
        tmp,
        {"box": {"type": "local", "root": str(tmp)}},
        {"files": {"source": src, "target": target, "retry": {"attempts": 1}}},
    )


async def test_local_folder_is_delivered_and_the_run_exits_0(tmp_path: Path) -> None:
    out = tmp_path / "out"
    cfg = local_config(tmp_path, {"type": "directory", "path": str(out)}, min_age="300ms")
    for i in range(5):
        (tmp_path / "in" / f"f{i}.txt").write_text(f"file {i}")
    rc, text = await run_once(cfg)
    assert rc == 0, text[-3000:]
    # min_age: files first seen by this run were listed again once they had time to settle
    assert sorted(bodies(out).values()) == [f"file {i}".encode() for i in range(5)]
    assert list((tmp_path / "in").iterdir()) == []
    rc, text = await run_once(cfg)  # nothing left: still all delivered
    assert rc == 0, text[-3000:]


async def test_a_failed_item_makes_the_run_exit_1_until_it_is_dealt_with(tmp_path: Path) -> None:
    async with http_sink(default=status(422, "unprocessable")) as sink:
        cfg = local_config(tmp_path, {"type": "http", "url": sink.url})
        (tmp_path / "in" / "bad.csv").write_text("qty missing")
        rc, text = await run_once(cfg)
        assert rc == 1, text[-3000:]
        assert "not everything was delivered" in text
        assert len(sink.received) == 1
        rc, text = await run_once(cfg)  # still failed in the ledger: set aside, not sent again
        assert rc == 1
        assert len(sink.received) == 1


async def test_config_errors_exit_2(tmp_path: Path) -> None:
    cfg = tmp_path / "conveyor.yaml"
    cfg.write_text("flows: {x: {source: {instance: nowhere}}}\n")
    rc, text = await run_once(cfg)
    assert rc == 2
    assert "flows.x" in text
    good = local_config(tmp_path, {"type": "directory", "path": str(tmp_path / "out")})
    for extra in (["--idle", "soon"], ["--idle", "5"]):
        rc, text = await run_once(good, *extra)
        assert rc == 2, text
        assert "--idle" in text
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "conveyor", "run", "--idle", "1s", "-c", str(good), stderr=asyncio.subprocess.PIPE
    )
    _, err = await proc.communicate()
    assert proc.returncode == 2
    assert b"--idle is for --once" in err


async def test_local_kill_9_mid_run_then_the_next_run_finishes(tmp_path: Path) -> None:
    async with http_sink(default=delayed(0.3)) as slow:
        cfg = local_config(tmp_path, {"type": "http", "url": slow.url})
        for i in range(N):
            (tmp_path / "in" / f"f{i:02}.txt").write_text(f"file {i}")
        rc, text = await run_once(cfg, kill_after=lambda: len(slow.received) >= 3)
        assert rc == -signal.SIGKILL
    async with http_sink() as fast:
        cfg = local_config(tmp_path, {"type": "http", "url": fast.url})
        rc, text = await run_once(cfg)
        assert rc == 0, text[-3000:]
    got = {r.body for r in slow.received} | {r.body for r in fast.received}
    assert got == {f"file {i}".encode() for i in range(N)}
    assert list((tmp_path / "in").iterdir()) == []


@pytest.fixture(params=["sftp_openssh_backend", "ftps_explicit_vsftpd_backend"])
def server_backend(request: pytest.FixtureRequest) -> Any:
    """A file server in turn: OpenSSH's sshd, vsftpd with explicit TLS."""
    return request.getfixturevalue(request.param)


async def test_file_server_kill_9_mid_run_then_the_next_run_finishes(server_backend: Any, tmp_path: Path) -> None:
    b = server_backend
    for i in range(N):
        b.put(f"in/f{i:02}.txt", f"file {i}".encode())

    def config(url: str) -> Path:
        src = {"instance": "remote", "path": "in", "poll_interval": "1h", "min_age": "0s", "after": "delete"}
        flow = {"source": src, "target": {"type": "http", "url": url}, "max_in_flight": 2}
        return write_config(tmp_path, {"remote": b.instance_config()}, {"files": flow})

    async with http_sink(default=delayed(0.3)) as slow:
        rc, _ = await run_once(config(slow.url), kill_after=lambda: len(slow.received) >= 3)
        assert rc == -signal.SIGKILL
    assert b.names("in"), "the kill came after everything was done"
    async with http_sink() as fast:
        rc, text = await run_once(config(fast.url))
        assert rc == 0, text[-3000:]
    got = {r.body for r in slow.received} | {r.body for r in fast.received}
    assert got == {f"file {i}".encode() for i in range(N)}
    assert b.names("in") == []


@pytest.fixture(params=MESSAGE_BACKENDS)
def broker_backend(request: pytest.FixtureRequest) -> Any:
    """A broker in turn: RabbitMQ, the Pub/Sub emulator."""
    return request.getfixturevalue(request.param)


async def test_broker_kill_9_mid_run_then_the_next_run_drains_it(broker_backend: Any, tmp_path: Path) -> None:
    b = broker_backend
    await b.publish([f"message {i}".encode() for i in range(N)])

    def config(url: str) -> Path:
        flow = {
            "source": {"instance": "mq", **b.source_config()},
            "target": {"type": "http", "url": url},
            "max_in_flight": 2,
        }
        return write_config(tmp_path, {"mq": b.instance_config()}, {"queue": flow})

    async with http_sink(default=delayed(0.3)) as slow:
        rc, _ = await run_once(config(slow.url), kill_after=lambda: len(slow.received) >= 3)
        assert rc == -signal.SIGKILL
    async with http_sink() as fast:
        # Pub/Sub holds what the killed run had leased until the subscription's ack deadline (10 s)
        idle = "12s" if broker_backend.__class__.__name__ == "PubsubBackend" else "1s"
        rc, text = await run_once(config(fast.url), "--idle", idle)
        assert rc == 0, text[-3000:]
        assert f"nothing came for {idle}" in text
    got = {r.body for r in slow.received} | {r.body for r in fast.received}
    assert got == {f"message {i}".encode() for i in range(N)}
    assert await b.pending() == 0
