"""The free-space floor (``min_free_space``): intake pauses on a disk with too little room and
resumes when there is room again, for files and for messages; nothing is lost."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import aiohttp
import pytest
import yaml

from conveyor.config.types import SpaceFloor, parse_space_floor
from conveyor.flows.intake import IntakeGate
from conveyor.status import StatusBoard
from tests.harness import bodies, running, wait_for, write_config
from tests.servers.ops import free_port
from tests.servers.rabbitmq import (
    Vhost,
    declare,
    publish,
    rabbit_vhost_fixture,  # noqa: F401  (the rabbit_vhost fixture)
)
from tests.test_file_limits import RETRY, flow


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


async def test_low_disk_space_pauses_intake_and_a_lower_floor_resumes_it(tmp_path: Path) -> None:
    root = tmp_path / "remote"
    (root / "in").mkdir(parents=True)
    (root / "in" / "a.txt").write_bytes(b"waits for room")
    out = tmp_path / "out"
    port = free_port()
    floor = free_bytes(tmp_path) + 1024**4  # more than this disk has free: intake must pause
    instances = {"remote": {"type": "local", "root": str(root)}}
    cfg = write_config(
        tmp_path, instances, {"f": flow(out)}, min_free_space=floor, health={"listen": f"127.0.0.1:{port}"}
    )
    async with running(cfg) as d, aiohttp.ClientSession() as http:
        await wait_for(lambda: d.status.paused, 10)
        await asyncio.sleep(1.0)  # several poll intervals
        assert bodies(out) == {} and (root / "in" / "a.txt").exists()
        async with http.get(f"http://127.0.0.1:{port}/readyz") as r:
            ready = await r.json()
        assert r.status == 503
        assert "min_free_space" in ready["reasons"]["flows"]["f"]
        assert str(tmp_path) in ready["reasons"]["flows"]["f"]
        doc = d.status.snapshot()
        assert doc["intake"]["paused"] is True and "min_free_space" in doc["intake"]["reason"]

        doc = yaml.safe_load(cfg.read_text())
        doc["min_free_space"] = "0"
        cfg.write_text(yaml.safe_dump(doc))
        assert await d.reload()
        await wait_for(lambda: bodies(out) == {"a.txt": b"waits for room"}, 20)
        assert d.status.paused is None
        # The source file goes once the delivery is recorded, a moment after the target has it.
        await wait_for(lambda: not (root / "in" / "a.txt").exists(), 10)


async def test_paused_intake_leaves_messages_with_the_broker(rabbit_vhost: Vhost, tmp_path: Path) -> None:
    v = rabbit_vhost
    q = v.q("paused")
    await declare(v, q)
    await publish(v, q, [b"one", b"two"])
    out = tmp_path / "out"
    instances = {"mq": v.instance_config()}
    flows = {
        "f": {
            "source": {"instance": "mq", "queue": q},
            "target": {"type": "directory", "path": str(out)},
            "retry": RETRY,
        }
    }
    cfg = write_config(tmp_path, instances, flows, min_free_space=free_bytes(tmp_path) + 1024**4)
    async with running(cfg) as d:
        await wait_for(lambda: d.status.paused, 10)
        await asyncio.sleep(1.0)
        assert bodies(out) == {}
        doc = yaml.safe_load(cfg.read_text())
        doc["min_free_space"] = "0%"
        cfg.write_text(yaml.safe_dump(doc))
        assert await d.reload()
        await wait_for(lambda: sorted(bodies(out).values()) == [b"one", b"two"], 20)
    assert v.counts().get(q) == 0


def test_the_gate_compares_with_the_folders_file_system(tmp_path: Path) -> None:
    board = StatusBoard()
    free = free_bytes(tmp_path)
    gate = IntakeGate([tmp_path / "not-made-yet" / "spool"], SpaceFloor(bytes=free + 1024**4), board)
    reason = gate.check()
    assert reason is not None and "min_free_space" in reason and board.paused == reason
    gate.set_floor(SpaceFloor(bytes=0))
    assert gate.check() is None and board.paused is None
    gate.set_floor(parse_space_floor("99.9%"))
    st = os.statvfs(tmp_path)
    assert (gate.check() is not None) == (st.f_bavail < st.f_blocks * 0.999)


def test_space_floor_values() -> None:
    assert parse_space_floor("1GiB") == SpaceFloor(bytes=1024**3)
    assert parse_space_floor("5%").of(1000) == 50
    assert str(parse_space_floor("5%")) == "5%" and str(parse_space_floor("1GiB")) == "1GiB"
    for bad in ("100%", "-1%", "lots%"):
        with pytest.raises(ValueError):
            parse_space_floor(bad)
