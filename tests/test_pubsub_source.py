"""The pubsub source against Google's real Pub/Sub emulator: delivery, nack, leases, ordering, restarts."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
import warnings
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from conveyor.brokers.pubsub.config import PubsubConfig, PubsubSourceConfig
from conveyor.brokers.pubsub.instance import PubsubInstance
from conveyor.errors import NotFound, Transient
from conveyor.interfaces import Context, Inbound
from conveyor.payload import Spool
from conveyor.status import StatusBoard
from conveyor.stopping import StopSignal
from tests.harness import wait_for
from tests.servers.pubsub_emulator import PubsubEmulator, pubsub_emulator

__all__ = ["pubsub_emulator"]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def instance(emu: PubsubEmulator, tmp_path: Path, **over: Any) -> PubsubInstance:
    cfg = PubsubConfig(type="pubsub", project=emu.project, emulator_host=emu.host, timeout="10s", **over)
    return PubsubInstance("gcp", cfg, Context(spool=Spool(tmp_path / "spool"), status=StatusBoard()))


def source_cfg(subscription: str, **over: Any) -> PubsubSourceConfig:
    return PubsubSourceConfig(instance="gcp", subscription=subscription, **over)


def publish(emu: PubsubEmulator, topic: str, bodies: list[bytes], **kw: Any) -> list[str]:
    """Publish with a plain client; returns the message ids."""
    from google.cloud.pubsub_v1.types import PublisherOptions

    ordered = {"publisher_options": PublisherOptions(enable_message_ordering=True)} if "ordering_key" in kw else {}
    pub = emu.publisher(**ordered)
    path = pub.topic_path(emu.project, topic)
    futures = [pub.publish(path, b, **kw) for b in bodies]
    ids = [f.result(timeout=30) for f in futures]
    pub.stop()
    return ids


async def consume(
    source: Any, handler: Callable[[Inbound], Awaitable[None]], done: Callable[[], bool], limit: float = 30.0
) -> asyncio.Task[None]:
    """Run the source until ``done()``, then stop it; returns the finished run task."""
    stop = StopSignal()
    task = asyncio.create_task(source.run(handler, stop))
    deadline = time.monotonic() + limit
    while not done():
        if task.done():
            task.result()  # raise what ended it
            raise AssertionError("run() ended early")
        if time.monotonic() > deadline:
            task.cancel()
            raise AssertionError("timed out waiting for messages")
        await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(task, 15)
    return task


async def until(cond: Callable[[], bool], limit: float) -> None:
    """Wait until ``cond()`` holds, at most ``limit`` seconds."""
    for _ in range(int(limit / 0.05)):
        if cond():
            return
        await asyncio.sleep(0.05)


def pull_now(emu: PubsubEmulator, sub: str) -> int:
    """Messages a plain unary pull gets right now (then released again)."""
    with emu.subscriber() as client, warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # return_immediately: right for a peek
        path = client.subscription_path(emu.project, sub)
        resp = client.pull(request={"subscription": path, "max_messages": 100, "return_immediately": True}, timeout=5)
        ids = [m.ack_id for m in resp.received_messages]
        if ids:
            client.modify_ack_deadline(request={"subscription": path, "ack_ids": ids, "ack_deadline_seconds": 0})
        return len(ids)


async def test_delivers_payloads_and_acks(pubsub_emulator: PubsubEmulator, tmp_path: Path) -> None:
    emu = pubsub_emulator
    topic, sub = unique("topic"), unique("sub")
    emu.create(topic, sub)
    ids = publish(emu, topic, [f"body {i}".encode() for i in range(20)], kind="order", name="a.json")
    inst = instance(emu, tmp_path)
    source = inst.source("flow-a", source_cfg(sub, max_messages=5))
    got: dict[str, Inbound] = {}

    async def emit(item: Inbound) -> None:
        got[item.payload.id] = item
        await item.ack()

    await consume(source, emit, lambda: len(got) >= 20)
    assert sorted(got) == sorted(ids)
    item = got[ids[3]]
    assert item.payload.body.data() == b"body 3"
    assert item.payload.name == "a.json"
    meta = await item.payload.metadata()
    assert meta["source"] == {"instance": "gcp", "type": "pubsub"}
    assert meta["message"]["id"] == ids[3]
    assert meta["message"]["attributes"] == {"kind": "order", "name": "a.json"}
    assert meta["message"]["publish_time"].endswith("Z")
    assert inst.ctx.status.instances["gcp"].state == "up"
    await asyncio.sleep(1)  # acks go out in the background, unseen: a lost one would show in a pull
    assert pull_now(emu, sub) == 0, "every message was acked"
    await inst.close()


async def test_nack_redelivers_with_same_id(pubsub_emulator: PubsubEmulator, tmp_path: Path) -> None:
    emu = pubsub_emulator
    topic, sub = unique("topic"), unique("sub")
    emu.create(topic, sub)
    [mid] = publish(emu, topic, [b"retry me"])
    inst = instance(emu, tmp_path)
    source = inst.source("flow-n", source_cfg(sub))
    seen: list[str] = []

    async def emit(item: Inbound) -> None:
        seen.append(item.payload.id)
        if len(seen) == 1:
            await item.nack(True)
        else:
            await item.ack()

    await consume(source, emit, lambda: len(seen) >= 2)
    assert seen == [mid, mid]
    await asyncio.sleep(1)  # acks go out in the background, unseen: a lost one would show in a pull
    assert pull_now(emu, sub) == 0
    await inst.close()


async def test_slow_delivery_keeps_lease(pubsub_emulator: PubsubEmulator, tmp_path: Path) -> None:
    """A delivery slower than the 10 s ack deadline is not redelivered: the library extends the lease."""
    emu = pubsub_emulator
    topic, sub = unique("topic"), unique("sub")
    emu.create(topic, sub, ack_deadline_seconds=10)
    [mid] = publish(emu, topic, [b"slow"])
    inst = instance(emu, tmp_path)
    source = inst.source("flow-s", source_cfg(sub))
    deliveries: Counter[str] = Counter()
    acked = asyncio.Event()

    async def slow_ack(item: Inbound) -> None:
        await asyncio.sleep(15)
        await item.ack()
        acked.set()

    async def emit(item: Inbound) -> None:
        deliveries[item.payload.id] += 1
        asyncio.get_running_loop().create_task(slow_ack(item))  # the flow runtime settles later, too

    stop = StopSignal()

    task = asyncio.create_task(source.run(emit, stop))
    await asyncio.wait_for(acked.wait(), 40)
    await asyncio.sleep(3)  # a redelivery, had the lease lapsed, would have come by now
    stop.set()
    await asyncio.wait_for(task, 15)
    assert deliveries == {mid: 1}
    assert pull_now(emu, sub) == 0
    await inst.close()


async def test_ordering_keys_kept_in_order(pubsub_emulator: PubsubEmulator, tmp_path: Path) -> None:
    emu = pubsub_emulator
    topic, sub = unique("topic"), unique("sub")
    emu.create(topic, sub, enable_message_ordering=True)
    for key in ("k1", "k2", "k3"):
        publish(emu, topic, [f"{key}:{i}".encode() for i in range(15)], ordering_key=key)
    inst = instance(emu, tmp_path)
    source = inst.source("flow-o", source_cfg(sub, max_messages=20))
    order: dict[str, list[int]] = defaultdict(list)
    count = 0
    rnd = random.Random(7)

    async def settle(item: Inbound) -> None:
        await asyncio.sleep(rnd.random() * 0.05)  # settle out of order across keys, as parallel deliveries do
        await item.ack()

    async def emit(item: Inbound) -> None:
        nonlocal count
        key, i = item.payload.body.data().decode().split(":")
        assert item.payload.message is not None and item.payload.message["ordering_key"] == key
        order[key].append(int(i))
        count += 1
        asyncio.get_running_loop().create_task(settle(item))

    await consume(source, emit, lambda: count >= 45)
    assert {k: v for k, v in order.items()} == {k: list(range(15)) for k in ("k1", "k2", "k3")}
    await inst.close()


async def test_missing_subscription_is_not_found(pubsub_emulator: PubsubEmulator, tmp_path: Path) -> None:
    inst = instance(pubsub_emulator, tmp_path)
    source = inst.source("flow-m", source_cfg("no-such-sub"))

    async def emit(item: Inbound) -> None:
        raise AssertionError("nothing to emit")

    with pytest.raises(NotFound) as e:
        await asyncio.wait_for(source.run(emit, StopSignal()), 20)
    assert "no-such-sub" in str(e.value)
    assert inst.ctx.status.instances["gcp"].state == "up", "the server answered: the flow, not the instance, is wrong"
    await inst.close()


async def test_create_subscription_and_delivery_attempt(pubsub_emulator: PubsubEmulator, tmp_path: Path) -> None:
    """create_subscription makes topic and subscription; with a dead-letter policy, delivery_attempt counts."""
    emu = pubsub_emulator
    topic, sub = unique("topic"), unique("sub")
    inst = instance(emu, tmp_path)
    cfg = source_cfg(
        sub,
        create_subscription={
            "topic": topic,
            "ack_deadline": "10s",
            "dead_letter_topic": unique("dead"),
            "max_delivery_attempts": 5,
        },
    )
    source = inst.source("flow-c", cfg)
    attempts: list[int | None] = []

    async def emit(item: Inbound) -> None:
        attempts.append(item.delivery_count)
        assert item.payload.message is not None
        assert item.payload.message["delivery_attempt"] == item.delivery_count
        if len(attempts) == 1:
            await item.nack(True)
        else:
            await item.ack()

    stop = StopSignal()

    task = asyncio.create_task(source.run(emit, stop))
    for _ in range(100):  # wait until run() created the subscription
        await asyncio.sleep(0.1)
        with emu.subscriber() as c:
            try:
                c.get_subscription(request={"subscription": c.subscription_path(emu.project, sub)})
                break
            except Exception:
                continue
    publish(emu, topic, [b"dl"])
    await asyncio.sleep(0)
    await until(lambda: len(attempts) >= 2, 30)
    stop.set()
    await asyncio.wait_for(task, 15)
    assert attempts == [1, 2]
    await inst.close()


async def test_reject_without_dead_letter_parks(
    pubsub_emulator: PubsubEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """nack(requeue=False) with no dead-letter policy neither acks (that would delete an
    undelivered message) nor nacks (that would loop): the message is parked, away for
    PARK_SECONDS, then offered again; acked only when the flow finally takes it."""
    from conveyor.brokers.pubsub import source as pubsub_source

    monkeypatch.setattr(pubsub_source, "PARK_SECONDS", 10)
    emu = pubsub_emulator
    topic, sub = unique("topic"), unique("sub")
    emu.create(topic, sub)
    publish(emu, topic, [b"poison"])
    inst = instance(emu, tmp_path)
    source = inst.source("flow-r", source_cfg(sub))
    seen: list[float] = []

    async def emit(item: Inbound) -> None:
        seen.append(time.monotonic())
        if len(seen) == 1:
            await item.nack(False)  # failed for good
        else:
            await item.ack()  # retried through the ledger: delivered this time

    stop = StopSignal()

    task = asyncio.create_task(source.run(emit, stop))
    try:
        await wait_for(lambda: len(seen) >= 1, 30)
        await asyncio.sleep(3)  # time goes by: a nacked message would come back at once
        assert len(seen) == 1, "parked, not nacked back at once"
        assert pull_now(emu, sub) == 0, "parked, not available to anyone for now"
        await wait_for(lambda: len(seen) >= 2, 40)
        assert seen[1] - seen[0] >= 8, "offered again once the park deadline passed"
        await asyncio.sleep(2)  # the ack goes out in the background, unseen
        assert pull_now(emu, sub) == 0, "acked the second time"
    finally:
        stop.set()
        await task
        await inst.close()


async def held_after_stop(
    emu: PubsubEmulator, tmp_path: Path, bodies: list[bytes]
) -> tuple[PubsubInstance, str, list[Inbound]]:
    """The messages consumed, unsettled, by a source that has stopped: (instance, subscription, them)."""
    topic, sub = unique("topic"), unique("sub")
    emu.create(topic, sub)
    publish(emu, topic, bodies)
    inst = instance(emu, tmp_path)
    held: list[Inbound] = []

    async def emit(item: Inbound) -> None:
        held.append(item)

    await consume(inst.source("flow-x", source_cfg(sub)), emit, lambda: len(held) >= len(bodies))
    return inst, sub, held


async def test_stop_then_settle(pubsub_emulator: PubsubEmulator, tmp_path: Path) -> None:
    """Messages emitted before the stop still ack afterwards (unary ack: the stream is gone)."""
    emu = pubsub_emulator
    inst, sub, held = await held_after_stop(emu, tmp_path, [b"one", b"two", b"three"])
    for item in held:
        await item.ack()
    await asyncio.sleep(1)  # acks go out in the background, unseen: a lost one would show in a pull
    assert pull_now(emu, sub) == 0
    await inst.close()


async def test_a_batch_is_acked_in_one_call_once_the_stream_is_gone(
    pubsub_emulator: PubsubEmulator, tmp_path: Path
) -> None:
    emu = pubsub_emulator
    inst, sub, held = await held_after_stop(emu, tmp_path, [f"{i}".encode() for i in range(5)])
    calls: list[int] = []
    call = inst.call

    async def counting(fn: Any, **kw: Any) -> Any:
        if "ack_ids" in kw and "ack_deadline_seconds" not in kw:
            calls.append(len(kw["ack_ids"]))  # one Acknowledge request, with this many ids
        return await call(fn, **kw)

    inst.call = counting  # type: ignore[method-assign,assignment]
    acks = held[0].acks
    assert acks is not None and all(h.acks is acks for h in held)
    await acks.ack_many([h.token for h in held])
    assert calls == [5]
    await asyncio.sleep(1)
    assert pull_now(emu, sub) == 0, "every message was acked"
    await inst.close()


async def test_emulator_restart_mid_stream(pubsub_emulator: PubsubEmulator, tmp_path: Path) -> None:
    """The emulator dies under a running stream: run() raises Transient; after the topic and subscription
    are made again (the emulator forgot them), a new run() consumes again."""
    emu = pubsub_emulator
    topic, sub = unique("topic"), unique("sub")
    emu.create(topic, sub)
    publish(emu, topic, [b"before"])
    inst = instance(emu, tmp_path)
    source = inst.source("flow-e", source_cfg(sub))
    got: list[bytes] = []

    async def emit(item: Inbound) -> None:
        got.append(item.payload.body.data())
        await item.ack()

    stop = StopSignal()

    task = asyncio.create_task(source.run(emit, stop))
    await until(lambda: bool(got), 20)
    assert got == [b"before"]
    await asyncio.to_thread(emu.restart)
    with pytest.raises((Transient, NotFound)) as e:
        await asyncio.wait_for(task, 60)
    status = inst.ctx.status
    assert status.instances["gcp"].state == "down" and status.instances["gcp"].last_error
    # The emulator keeps nothing: make the topic and subscription again, then resume as the supervisor would.
    emu.create(topic, sub)
    publish(emu, topic, [b"after"])
    await consume(source, emit, lambda: b"after" in got)
    assert got == [b"before", b"after"]
    assert status.instances["gcp"].state == "up"
    print("run() ended with", type(e.value).__name__, e.value)
    await inst.close()


async def test_exactly_once_subscription_confirms_acks(pubsub_emulator: PubsubEmulator, tmp_path: Path) -> None:
    """On an exactly-once subscription, ack() waits for the server's confirmation (ack_with_response)."""
    emu = pubsub_emulator
    topic, sub = unique("topic"), unique("sub")
    emu.create(topic, sub, enable_exactly_once_delivery=True)
    ids = publish(emu, topic, [b"eo1", b"eo2"])
    inst = instance(emu, tmp_path)
    source = inst.source("flow-eo", source_cfg(sub))
    got: list[str] = []

    async def emit(item: Inbound) -> None:
        await item.ack()
        got.append(item.payload.id)

    await consume(source, emit, lambda: len(got) >= 2)
    assert source.exactly_once and sorted(got) == sorted(ids)
    await asyncio.sleep(1)  # acks go out in the background, unseen: a lost one would show in a pull
    assert pull_now(emu, sub) == 0
    await inst.close()
