"""The pubsub target against the real emulator: publish, read back by a plain subscriber; errors."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from conveyor.brokers.pubsub.config import PubsubConfig, PubsubTargetConfig
from conveyor.brokers.pubsub.instance import MAX_MESSAGE, PubsubInstance, build_attributes, fits
from conveyor.errors import NotFound, Rejected
from conveyor.interfaces import Context
from conveyor.payload import Body, Payload, Spool
from conveyor.status import StatusBoard
from tests.servers.pubsub_emulator import PubsubEmulator, pubsub_emulator

__all__ = ["pubsub_emulator"]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def instance(emu: PubsubEmulator, tmp_path: Path) -> PubsubInstance:
    cfg = PubsubConfig(type="pubsub", project=emu.project, emulator_host=emu.host, timeout="10s")
    return PubsubInstance("out", cfg, Context(spool=Spool(tmp_path / "spool"), status=StatusBoard()))


def payload(i: int, body: Body | None = None, **kw: Any) -> Payload:
    return Payload(
        id=f"id-{i}",
        flow="relay",
        source_instance="inbox",
        source_type="local",
        body=body or Body.from_bytes(f"payload {i}".encode()),
        name=f"ORD_{i}.csv",
        **kw,
    )


def pull_all(emu: PubsubEmulator, sub: str, n: int) -> list[Any]:
    """Read ``n`` messages back with a plain unary pull, acking them."""
    got: list[Any] = []
    with emu.subscriber() as client:
        path = client.subscription_path(emu.project, sub)
        for _ in range(50):
            resp = client.pull(request={"subscription": path, "max_messages": 100}, timeout=10)
            if resp.received_messages:
                client.acknowledge(
                    request={"subscription": path, "ack_ids": [m.ack_id for m in resp.received_messages]}
                )
                got.extend(m.message for m in resp.received_messages)
            if len(got) >= n:
                break
    return got


async def test_publish_read_back(pubsub_emulator: PubsubEmulator, tmp_path: Path) -> None:
    emu = pubsub_emulator
    topic, sub = unique("topic"), unique("sub")
    emu.create(topic, sub, enable_message_ordering=True)
    inst = instance(emu, tmp_path)
    cfg = PubsubTargetConfig(
        instance="out",
        topic=topic,
        ordering_key="{stem}",
        attributes={"origin": "conveyor-{flow}"},
        batch={"max_latency": "5ms"},
    )
    target = inst.target("relay", cfg)
    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * 200_000)
    await target.deliver(payload(1))
    await target.deliver(payload(2, message={"id": "m", "attributes": {"customer": "c9", "n": 3}}))
    await target.deliver(payload(3, body=Body.from_file(big, owned=False)))
    msgs = {m.attributes["conveyor_id"]: m for m in pull_all(emu, sub, 3)}
    assert sorted(msgs) == ["id-1", "id-2", "id-3"]
    m1 = msgs["id-1"]
    assert m1.data == b"payload 1" and m1.ordering_key == "ORD_1"
    assert m1.attributes["name"] == "ORD_1.csv" and m1.attributes["conveyor_flow"] == "relay"
    assert m1.attributes["origin"] == "conveyor-relay"
    assert m1.attributes["conveyor_source"] == "local:inbox"
    meta = json.loads(m1.attributes["conveyor_meta"])
    assert meta["id"] == "id-1" and meta["size"] == 9 and meta["name"] == "ORD_1.csv"
    assert msgs["id-2"].attributes["customer"] == "c9" and "n" not in msgs["id-2"].attributes  # strings only
    assert len(msgs["id-3"].data) == 200_000
    assert inst.ctx.status.instances["out"].state == "up"
    await target.close()
    await inst.close()


async def test_missing_topic_is_not_found(pubsub_emulator: PubsubEmulator, tmp_path: Path) -> None:
    inst = instance(pubsub_emulator, tmp_path)
    target = inst.target("relay", PubsubTargetConfig(instance="out", topic="no-such-topic"))
    with pytest.raises(NotFound, match="no-such-topic"):
        await target.deliver(payload(1))
    await target.close()
    await inst.close()


async def test_too_big_is_rejected(pubsub_emulator: PubsubEmulator, tmp_path: Path) -> None:
    inst = instance(pubsub_emulator, tmp_path)
    target = inst.target("relay", PubsubTargetConfig(instance="out", topic="whatever"))
    big = tmp_path / "huge.bin"
    big.touch()
    os.truncate(big, 10_000_001)  # sparse: no 10 MB written
    with pytest.raises(Rejected, match="message limit"):
        await target.deliver(payload(1, body=Body.from_file(big, owned=False)))
    await inst.close()


@pytest.mark.parametrize("ordering_key", [None, "{stem}"])
async def test_over_the_limit_with_its_attributes_is_rejected(
    pubsub_emulator: PubsubEmulator, tmp_path: Path, ordering_key: str | None
) -> None:
    """Pub/Sub's limit is on the whole publish (body, attributes, ordering key): a body just under
    it whose attributes take it over fails that payload, naming the limit, and is not retried;
    the next payload goes through, and so does a body that fits with its attributes."""
    emu = pubsub_emulator
    topic, sub = unique("topic"), unique("sub")
    emu.create(topic, sub)
    inst = instance(emu, tmp_path)
    target = inst.target("relay", PubsubTargetConfig(instance="out", topic=topic, ordering_key=ordering_key))
    with pytest.raises(Rejected, match="with their attributes exceed Pub/Sub's 10000000-byte message limit"):
        await target.deliver(payload(1, body=Body.from_bytes(b"x" * (MAX_MESSAGE - 100))))
    await target.deliver(payload(2))
    await target.deliver(payload(3, body=Body.from_bytes(b"y" * (MAX_MESSAGE - 10_000))))
    msgs = {m.attributes["conveyor_id"]: m for m in pull_all(emu, sub, 2)}
    assert sorted(msgs) == ["id-2", "id-3"]
    assert msgs["id-2"].data == b"payload 2" and len(msgs["id-3"].data) == MAX_MESSAGE - 10_000
    assert inst.ctx.status.instances["out"].state == "up"
    await target.close()
    await inst.close()


async def test_a_body_right_at_the_limit_is_delivered(pubsub_emulator: PubsubEmulator, tmp_path: Path) -> None:
    """The largest body whose publish is counted at the limit goes through the client and the
    emulator whole; one byte more is refused before it is sent."""
    emu = pubsub_emulator
    topic, sub = unique("topic"), unique("sub")
    emu.create(topic, sub, enable_message_ordering=True)
    inst = instance(emu, tmp_path)
    target = inst.target("relay", PubsubTargetConfig(instance="out", topic=topic, ordering_key="{stem}"))
    probe = payload(4, body=Body.from_bytes(b"z" * (MAX_MESSAGE - 5000)))
    attrs = build_attributes(probe, await probe.metadata(), {})  # as long for every size below
    low, high = MAX_MESSAGE - 5000, MAX_MESSAGE
    while high - low > 1:  # the largest body that fits: low
        mid = (low + high) // 2
        low, high = (mid, high) if fits(target.topic, b"z" * mid, "ORD_4", attrs) else (low, mid)
    assert MAX_MESSAGE - 5000 < low < MAX_MESSAGE - len("".join([*attrs, *attrs.values()]))
    await target.deliver(payload(4, body=Body.from_bytes(b"z" * low)))
    with pytest.raises(Rejected, match="exceed Pub/Sub's 10000000-byte message limit"):
        await target.deliver(payload(4, body=Body.from_bytes(b"z" * (low + 1))))
    [m] = pull_all(emu, sub, 1)
    assert len(m.data) == low and m.attributes["conveyor_id"] == "id-4"
    await target.close()
    await inst.close()


async def test_ordering_key_failure_resumes(pubsub_emulator: PubsubEmulator, tmp_path: Path) -> None:
    """A failed ordered publish pauses the key in the library; the target resumes it so a retry can publish."""
    emu = pubsub_emulator
    topic, sub = unique("topic"), unique("sub")
    inst = instance(emu, tmp_path)
    target = inst.target("relay", PubsubTargetConfig(instance="out", topic=topic, ordering_key="k"))
    with pytest.raises(NotFound):
        await target.deliver(payload(1))
    emu.create(topic, sub)
    await target.deliver(payload(1))  # same key: would raise PublishToPausedOrderingKeyException without resume
    [m] = pull_all(emu, sub, 1)
    assert m.ordering_key == "k"
    await target.close()
    await inst.close()


async def test_check(pubsub_emulator: PubsubEmulator, tmp_path: Path) -> None:
    inst = instance(pubsub_emulator, tmp_path)
    assert await inst.check() == f"project {pubsub_emulator.project} (emulator {pubsub_emulator.host})"
    await inst.close()
