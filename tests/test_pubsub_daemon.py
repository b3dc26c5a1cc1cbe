"""Pub/Sub through the whole daemon on the emulator: a target slower than the ack deadline, and a
pubsub-to-pubsub relay. (The shared message tests run over Pub/Sub in tests/test_behaviour.py.)"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from conveyor.payload import Payload
from conveyor.targets.directory.target import DirectoryTarget
from tests.backends.pubsub import PubsubBackend, pubsub_backend, pubsub_emulator
from tests.harness import bodies, running, sidecars, wait_for, write_config

__all__ = ["pubsub_backend", "pubsub_emulator"]


async def test_slow_target_past_ack_deadline_delivers_once(
    pubsub_backend: PubsubBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each delivery takes 13 s against a 10 s ack deadline: leases are extended, nothing is delivered
    twice, everything is acked."""
    calls: Counter[str] = Counter()
    real = DirectoryTarget.deliver

    async def slow(self: DirectoryTarget, payload: Payload) -> None:
        calls[payload.id] += 1
        await asyncio.sleep(13)
        await real(self, payload)

    monkeypatch.setattr(DirectoryTarget, "deliver", slow)
    msgs = [f"slow {i}".encode() for i in range(5)]
    out = tmp_path / "out"
    cfg = write_config(
        tmp_path,
        {"gcp": pubsub_backend.instance_config()},
        {
            "s": {
                "source": {"instance": "gcp", **pubsub_backend.source_config()},
                "target": {"type": "directory", "path": str(out)},
            }
        },
    )
    async with running(cfg):
        await pubsub_backend.publish(msgs)
        await wait_for(lambda: len(bodies(out)) == len(msgs), 60)
        await asyncio.sleep(3)  # a lapsed lease would have brought a redelivery by now
    assert sorted(bodies(out).values()) == sorted(msgs)
    assert len(calls) == 5 and set(calls.values()) == {1}, calls
    metas = sidecars(out)
    assert {m["id"] for m in metas} == set(calls)
    assert all(m["message"]["id"] == m["id"] and m["source"]["type"] == "pubsub" for m in metas)
    assert await pubsub_backend.pending() == 0


async def test_relay_pubsub_to_pubsub(pubsub_backend: PubsubBackend, tmp_path: Path) -> None:
    """subscription -> conveyor -> topic, read back with a plain pull: bodies, ids and source attributes."""
    emu = pubsub_backend.emu
    out_topic, out_sub = f"{pubsub_backend.topic}-out", f"{pubsub_backend.topic}-out-sub"
    emu.create(out_topic, out_sub)
    cfg = write_config(
        tmp_path,
        {"gcp": pubsub_backend.instance_config()},
        {
            "r": {
                "source": {"instance": "gcp", **pubsub_backend.source_config()},
                "target": {"instance": "gcp", "topic": out_topic},
            }
        },
    )
    msgs = [f"relay {i}".encode() for i in range(20)]
    got: dict[bytes, Any] = {}

    async with running(cfg):
        await pubsub_backend.publish(msgs)

        async def all_relayed() -> bool:
            await asyncio.to_thread(emu.pull_into, out_sub, got)
            return len(got) >= len(msgs)

        await wait_for(all_relayed, 60)
    assert sorted(got) == sorted(msgs)
    m = got[b"relay 3"]
    assert m.attributes["conveyor_flow"] == "r" and m.attributes["conveyor_source"] == "pubsub:gcp"
    assert len(m.attributes["conveyor_id"]) > 0


async def test_failed_message_without_dead_letter_is_kept_and_retried(
    pubsub_backend: PubsubBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Losing nothing without a dead-letter topic: a message the target refuses for good (400)
    is failed in the ledger but stays in the subscription (parked, not acked). A ledger retry
    over the health API lets its next offer through, and only then is it acked."""
    import aiohttp
    from aiohttp import web

    from conveyor.brokers.pubsub import source as pubsub_source
    from tests.servers.ops import api_headers, daemon_in_process, http_sink

    monkeypatch.setattr(pubsub_source, "PARK_SECONDS", 10)
    async with http_sink(plan=[lambda _r: web.Response(status=400, text="bad order")]) as sink:
        cfg = write_config(
            tmp_path,
            {"gcp": pubsub_backend.instance_config()},
            {
                "p": {
                    "source": {"instance": "gcp", **pubsub_backend.source_config()},
                    "target": {"type": "http", "url": sink.url},
                }
            },
            health={"listen": "127.0.0.1:0"},
        )
        async with daemon_in_process(cfg) as d:
            await pubsub_backend.publish([b"order 1"])
            await wait_for(lambda: d.status.flows["p"].failed == 1, 30)
            pid = (await d.store.list("p", "failed"))[0].id
            await asyncio.sleep(2)  # time goes by: a parked message is not offered again
            assert len(sink.received) == 1
            assert await pubsub_backend.pending() == 0, "parked: not offered to anyone for now"
            async with (
                aiohttp.ClientSession(headers=api_headers(cfg)) as s,
                s.post(f"{d.health.url}/flows/p/items/{pid}/retry") as r,
            ):
                assert r.status == 200
            await wait_for(lambda: len(sink.received) == 2, 40)  # its next offer, after the park
            await wait_for(lambda: d.status.flows["p"].delivered == 1, 10)
            assert sink.received[1].body == b"order 1"
            assert sink.received[1].headers["Idempotency-Key"] == pid

            async def acked() -> bool:  # settled: the ack went out after the delivered record
                return bool((await d.store.get_many("p", [pid]))[pid].settled)

            await wait_for(acked, 10)
    await asyncio.sleep(11)  # past the park deadline: an unacked message would be offered again now
    assert await pubsub_backend.pending() == 0, "acked once delivered"
