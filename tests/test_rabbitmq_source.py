"""The rabbitmq source against the real broker, in its own vhost: consume, ack, nack, reject, stop."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
import time
import warnings
from collections.abc import Callable
from typing import Any

import aio_pika
import pytest

from conveyor.brokers.rabbitmq.config import RabbitSourceConfig
from conveyor.errors import AuthError, NotFound, Transient
from conveyor.interfaces import Inbound
from conveyor.stopping import StopSignal
from tests.servers.ops import free_port
from tests.servers.rabbitmq import (
    Vhost,
    declare,
    drain,
    make_instance,
    publish,
    rabbit_vhost_fixture,  # noqa: F401  (the rabbit_vhost fixture)
    ready_count,
)


class Collector:
    """An emit that records each inbound and settles it with ``action`` (or leaves it unsettled);
    ``stop`` is the flow's stop signal it hands to the source."""

    def __init__(self, want: int, action: Callable[[Inbound], Any] | None = None, block: bool = False) -> None:
        self.items: list[Inbound] = []
        self.want = want
        self.action = action
        self.block = block
        """Once ``want`` arrived, block further emits until the stop (a full flow), then hand them
        back as the flow runner does."""
        self.done = asyncio.Event()
        self.stop = StopSignal()

    async def emit(self, inbound: Inbound) -> None:
        if self.block and len(self.items) >= self.want:
            await self.stop.wait()
            await inbound.nack(True)
            return
        self.items.append(inbound)
        if self.action is not None:
            await self.action(inbound)
        if len(self.items) >= self.want:
            self.done.set()

    async def wait(self, seconds: float = 10.0) -> None:
        await asyncio.wait_for(self.done.wait(), seconds)


def src_cfg(queue: str, **kw: Any) -> RabbitSourceConfig:
    return RabbitSourceConfig.model_validate({"instance": "mq", "queue": queue, **kw})


async def run_until(source: Any, col: Collector, seconds: float = 10.0) -> asyncio.Task[None]:
    """Start source.run(col.emit, col.stop) and wait until the collector has what it wants; returns the task."""
    task = asyncio.create_task(source.run(col.emit, col.stop))
    done = asyncio.create_task(col.wait(seconds))
    await asyncio.wait({task, done}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        done.cancel()
        task.result()  # raises what run raised
        raise AssertionError("run returned before the messages arrived")
    await done
    return task


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def ack(i: Inbound) -> None:
    await i.ack()


async def test_consume_and_ack(rabbit_vhost: Vhost, tmp_path: Any) -> None:
    v = rabbit_vhost
    q = v.q("plain")
    await declare(v, q)
    await publish(v, q, [b"with-id"], message_id="m-1", headers={"k": "v"}, content_type="text/plain")
    await publish(v, q, [f"body {i}".encode() for i in range(30)], headers={"n": 1})
    inst = make_instance(v, tmp_path)
    col = Collector(31, ack)
    task = await run_until(inst.source("f", src_cfg(q, prefetch=10)), col)
    await stop(task)
    first = col.items[0].payload
    assert first.id == "m-1"
    assert first.content_type == "text/plain"
    assert first.body.data() == b"with-id"
    msg = first.message
    assert msg is not None
    assert msg["headers"] == {"k": "v"} and msg["exchange"] == "" and msg["routing_key"] == q
    assert msg["redelivered"] is False and msg["id"] == "m-1" and msg["delivery_attempt"] == 1
    assert col.items[0].delivery_count == 1
    ids = {i.payload.id for i in col.items[1:]}
    assert len(ids) == 30 and all(len(x) == 32 for x in ids)
    assert (await first.metadata())["source"] == {"instance": "mq", "type": "rabbitmq"}
    assert v.counts().get(q) == 0  # acked, not merely delivered: unacked ones would be back after the close
    assert inst.ctx.status.instances["mq"].state == "up"
    await inst.close()


async def test_nack_requeue_redelivers_same_id(rabbit_vhost: Vhost, tmp_path: Any) -> None:
    v = rabbit_vhost
    q = v.q("requeue")
    await declare(v, q)
    await publish(v, q, [b"again"], headers={"a": 1})
    inst = make_instance(v, tmp_path)

    async def nack_first(i: Inbound) -> None:
        await (i.ack() if i.payload.message and i.payload.message["redelivered"] else i.nack(True))

    col = Collector(2, nack_first)
    task = await run_until(inst.source("f", src_cfg(q)), col)
    await stop(task)
    a, b = col.items
    assert a.payload.id == b.payload.id
    assert b.payload.message and b.payload.message["redelivered"] is True
    assert (a.delivery_count, b.delivery_count) == (1, None)  # a classic queue does not count
    assert v.counts().get(q) == 0
    await inst.close()


async def test_reject_goes_to_dead_letter_queue(rabbit_vhost: Vhost, tmp_path: Any) -> None:
    v = rabbit_vhost
    q, dlq = v.q("work"), v.q("work.dlq")
    await declare(v, dlq)
    inst = make_instance(v, tmp_path)
    cfg = src_cfg(q, declare={"arguments": {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dlq}})

    async def reject(i: Inbound) -> None:
        await i.nack(False)

    # declare through the source first (run creates the queue), then publish
    col = Collector(1, reject)
    task = asyncio.create_task(inst.source("f", cfg).run(col.emit, col.stop))
    for _ in range(50):
        if q in v.counts():
            break
        await asyncio.sleep(0.1)
    await publish(v, q, [b"poison"], message_id="p-1")
    await col.wait()
    await stop(task)
    dead = await drain(v, dlq)
    assert [m.body for m in dead] == [b"poison"]
    assert dead[0].message_id == "p-1"
    assert v.counts().get(q) == 0
    await inst.close()


async def test_quorum_delivery_count(rabbit_vhost: Vhost, tmp_path: Any) -> None:
    v = rabbit_vhost
    q = v.q("quorum")
    await declare(v, q, arguments={"x-queue-type": "quorum"})
    await publish(v, q, [b"q"])
    inst = make_instance(v, tmp_path)

    async def nack_twice(i: Inbound) -> None:
        await (i.nack(True) if (i.delivery_count or 0) < 3 else i.ack())

    col = Collector(3, nack_twice)
    task = await run_until(inst.source("f", src_cfg(q, declare={"type": "quorum"})), col)
    await stop(task)
    assert [i.delivery_count for i in col.items] == [1, 2, 3]
    assert len({i.payload.id for i in col.items}) == 1  # x-delivery-count is not part of the id
    assert col.items[2].payload.message and col.items[2].payload.message["delivery_attempt"] == 3
    await inst.close()


async def test_passive_declare_of_missing_queue_is_not_found(rabbit_vhost: Vhost, tmp_path: Any) -> None:
    inst = make_instance(rabbit_vhost, tmp_path)
    with pytest.raises(NotFound) as e:
        await inst.source("f", src_cfg("no-such-queue")).run(Collector(1).emit, StopSignal())
    assert "no-such-queue" in str(e.value) and "declare" in str(e.value)
    # the shared connection survives a channel error
    assert inst._conn is not None and not inst._conn.is_closed
    await inst.close()


async def test_wrong_password_fails_fast(rabbit_vhost: Vhost, tmp_path: Any) -> None:
    inst = make_instance(rabbit_vhost, tmp_path, password="wrong-secret")
    t0 = time.monotonic()
    with pytest.raises(AuthError) as e:
        await inst.check()
    assert time.monotonic() - t0 < 3
    assert str(e.value) == f"instance 'mq': login refused for guest@127.0.0.1:5672/{rabbit_vhost.name}"
    assert "wrong-secret" not in repr(e.value)
    st = inst.ctx.status.instances["mq"]
    assert st.state == "down" and st.permanent
    await inst.close()


async def test_missing_vhost_is_not_found(rabbit_vhost: Vhost, tmp_path: Any) -> None:
    inst = make_instance(rabbit_vhost, tmp_path, vhost="no-such-vhost")
    with pytest.raises(NotFound, match="vhost 'no-such-vhost' does not exist"):
        await inst.check()
    await inst.close()


async def test_check_describes_the_login(rabbit_vhost: Vhost, tmp_path: Any) -> None:
    inst = make_instance(rabbit_vhost, tmp_path)
    assert await inst.check() == f"guest@127.0.0.1:5672/{rabbit_vhost.name}"
    await inst.close()


async def test_large_body_goes_through_the_spool(rabbit_vhost: Vhost, tmp_path: Any) -> None:
    v = rabbit_vhost
    q = v.q("big")
    await declare(v, q)
    await publish(v, q, [b"x" * 5000])
    inst = make_instance(v, tmp_path / "spool", threshold=1024)
    col = Collector(1, ack)
    task = await run_until(inst.source("f", src_cfg(q)), col)
    await stop(task)
    body = col.items[0].payload.body
    assert not body.in_memory and body.path is not None and body.path.parent == tmp_path / "spool"
    assert body.size == 5000
    body.release()
    await inst.close()


async def test_ack_on_dead_channel_is_not_sent_on_the_new_one(rabbit_vhost: Vhost, tmp_path: Any) -> None:
    v = rabbit_vhost
    q = v.q("deadack")
    await declare(v, q)
    await publish(v, q, [b"held"])
    inst = make_instance(v, tmp_path)
    source = inst.source("f", src_cfg(q))
    col = Collector(1)  # holds the message, unsettled
    task = await run_until(source, col)
    old = col.items[0]
    await inst._conn.close()  # the connection drops under the consumer
    with pytest.raises(Transient):
        await asyncio.wait_for(task, 5)
    assert inst.ctx.status.instances["mq"].state == "down"
    col2 = Collector(1)
    task = await run_until(source, col2)  # reconnects; the broker redelivers on a new channel
    new = col2.items[0]
    assert new.payload.id == old.payload.id and new.payload.message and new.payload.message["redelivered"]
    await old.ack()  # same delivery tag number as `new`: must not be sent on the new channel
    await old.nack(False)  # settled already: ignored
    await asyncio.sleep(0.2)  # a wrong ack on the new channel would close it by now
    await stop(task)  # new is not acked: it returns to the queue
    assert await ready_count(v, q) == 1
    await inst.close()


async def test_the_stop_signal_drains_then_returns(rabbit_vhost: Vhost, tmp_path: Any) -> None:
    v = rabbit_vhost
    q = v.q("drain")
    await declare(v, q)
    await publish(v, q, [f"{i}".encode() for i in range(20)])
    inst = make_instance(v, tmp_path)
    source = inst.source("f", src_cfg(q, prefetch=10))
    col = Collector(3, block=True)  # three in flight, unsettled; then the flow is full
    task = await run_until(source, col)
    await asyncio.sleep(0.2)  # the rest of the prefetch arrives, held behind the full flow
    col.stop.set()
    await asyncio.sleep(0.3)  # time goes by: run() keeps waiting for the three
    assert not task.done()  # three emitted messages still in flight
    for i in col.items[:3]:
        await i.ack()
    await asyncio.wait_for(task, 5)  # returns by itself once they are settled
    acked = {int(i.payload.body.data()) for i in col.items[:3]}
    # everything else (emitted after stop or prefetched) is back on the queue, nothing lost
    assert v.counts().get(q) == 20 - len(acked)
    await inst.close()


async def test_queue_deleted_under_the_consumer(rabbit_vhost: Vhost, tmp_path: Any) -> None:
    import aio_pika

    v = rabbit_vhost
    q = v.q("doomed")
    await declare(v, q)
    await publish(v, q, [b"1"])
    inst = make_instance(v, tmp_path)
    source = inst.source("f", src_cfg(q))
    col = Collector(1, ack)
    task = await run_until(source, col)
    async with await aio_pika.connect(v.url) as conn:
        ch = await conn.channel()
        await ch.queue_delete(q)
    with pytest.raises(Transient, match="cancelled the consumer"):
        await asyncio.wait_for(task, 5)
    with pytest.raises(NotFound):  # the supervisor's restart then finds the queue gone
        await asyncio.wait_for(source.run(col.emit, col.stop), 5)
    await inst.close()


async def test_out_of_order_acks_and_rejects_coalesce_safely(rabbit_vhost: Vhost, tmp_path: Any) -> None:
    import random

    v = rabbit_vhost
    q, dlq = v.q("shuffle"), v.q("shuffle.dlq")
    await declare(v, dlq)
    await declare(v, q, arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dlq})
    n = 600
    await publish(v, q, [f"{i}".encode() for i in range(n)])
    inst = make_instance(v, tmp_path)
    rejected: set[int] = set()
    tasks: set[asyncio.Task[None]] = set()

    async def settle_later(i: Inbound) -> None:
        await asyncio.sleep(random.random() * 0.02)
        k = int(i.payload.body.data())
        if k % 10 == 3:
            rejected.add(k)
            await i.nack(False)
        else:
            await i.ack()

    async def spawn(i: Inbound) -> None:
        t = asyncio.create_task(settle_later(i))
        tasks.add(t)

    col = Collector(n, spawn)
    task = await run_until(inst.source("f", src_cfg(q, prefetch=100)), col, 30)
    await asyncio.gather(*tasks)
    await asyncio.sleep(0.2)  # a double or unknown ack would close the channel by now
    assert not task.done()  # no channel error from a double or unknown ack
    await stop(task)
    assert v.counts().get(q) == 0
    assert sorted(int(m.body) for m in await drain(v, dlq)) == sorted(rejected)
    await inst.close()


async def test_a_batch_is_acked_with_one_multiple_ack(rabbit_vhost: Vhost, tmp_path: Any) -> None:
    v = rabbit_vhost
    q = v.q("batch")
    await declare(v, q)
    await publish(v, q, [f"{i}".encode() for i in range(60)])
    inst = make_instance(v, tmp_path)
    col = Collector(60)  # held, not settled
    source = inst.source("f", src_cfg(q, prefetch=100))
    task = await run_until(source, col)
    raw = source._raw
    sent: list[tuple[int, bool]] = []
    basic_ack = raw.basic_ack

    async def counting(tag: int, multiple: bool = False, **kw: Any) -> Any:
        sent.append((tag, multiple))  # every ack frame the source writes on its channel
        return await basic_ack(tag, multiple=multiple, **kw)

    raw.basic_ack = counting
    acks = col.items[0].acks
    assert acks is not None and all(i.acks is acks for i in col.items)
    # A batch behind unsettled older deliveries cannot be covered by a multiple ack: one ack each.
    await acks.ack_many([i.token for i in col.items[50:]])
    assert sent == [(i.token._tag, False) for i in col.items[50:]]
    sent.clear()
    # The oldest 50, with every older delivery in it: one basic.ack multiple, up to its highest tag.
    await acks.ack_many([i.token for i in col.items[:50]])
    assert sent == [(col.items[49].token._tag, True)]
    await col.items[0].ack()  # settled already: ignored, no second ack of the tag
    await acks.ack_many([col.items[1].token])
    assert len(sent) == 1
    await asyncio.sleep(0.2)  # a double or unknown ack would close the channel by now
    assert not task.done()
    await stop(task)
    assert v.counts().get(q) == 0, "acked, not handed back when the channel closed"
    await inst.close()


async def test_url_form_of_the_instance(rabbit_vhost: Vhost, tmp_path: Any) -> None:
    from conveyor.brokers.rabbitmq.config import RabbitConfig
    from conveyor.brokers.rabbitmq.instance import RabbitInstance
    from conveyor.interfaces import Context
    from conveyor.payload import Spool
    from conveyor.status import StatusBoard

    cfg = RabbitConfig.model_validate({"type": "rabbitmq", "url": rabbit_vhost.url, "heartbeat": "5s"})
    inst = RabbitInstance("u", cfg, Context(spool=Spool(tmp_path), status=StatusBoard()))
    assert await inst.check() == f"guest@127.0.0.1:5672/{rabbit_vhost.name}"
    assert "guest:guest" not in repr(cfg)
    await inst.close()


async def test_declare_with_bindings(rabbit_vhost: Vhost, tmp_path: Any) -> None:
    import aio_pika

    v = rabbit_vhost
    ex, q = v.q("bind-ex"), v.q("bound")
    async with await aio_pika.connect(v.url) as conn:
        ch = await conn.channel()
        await ch.declare_exchange(ex, aio_pika.ExchangeType.TOPIC, durable=True)
    inst = make_instance(v, tmp_path)
    cfg = src_cfg(q, declare={}, bindings=[{"exchange": ex, "routing_key": ["a.*", "b.#"]}])
    col = Collector(2, ack)
    task = asyncio.create_task(inst.source("f", cfg).run(col.emit, col.stop))
    for _ in range(50):
        if q in v.counts():
            break
        await asyncio.sleep(0.1)
    async with await aio_pika.connect(v.url) as conn:
        ch = await conn.channel()
        exchange = await ch.get_exchange(ex)
        for key in ("a.1", "c.1", "b.x.y"):
            await exchange.publish(aio_pika.Message(key.encode()), routing_key=key)
    await col.wait()
    await stop(task)
    assert sorted(i.payload.body.data() for i in col.items) == [b"a.1", b"b.x.y"]
    assert {i.payload.message["exchange"] for i in col.items if i.payload.message} == {ex}
    bad = src_cfg(q, bindings=[{"exchange": "no-such-exchange", "routing_key": "k"}])
    with pytest.raises(NotFound, match="no-such-exchange"):
        await inst.source("f", bad).run(col.emit, col.stop)
    await inst.close()


async def test_failed_connects_leave_no_connection_open(rabbit_vhost: Vhost, tmp_path: Any) -> None:
    """A connect that fails (refused, login refused, timed out) closes aio-pika's connection object:
    dropped open, it is closed from ``__del__``, and when the collector runs that on a worker
    thread Python prints "coroutine 'Connection.close' was never awaited" outside the logs."""
    silent = socket.socket()  # accepts (the kernel's backlog) and never answers: the timeout case
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    cases: list[dict[str, Any]] = [
        {"port": free_port()},
        {"password": "wrong-secret"},
        {"port": silent.getsockname()[1], "timeout": "300ms"},
    ]
    try:
        for over in cases:
            inst = make_instance(rabbit_vhost, tmp_path, **over)
            with pytest.raises((Transient, AuthError)):
                await inst.check()
            await inst.close()
    finally:
        silent.close()
    left = [
        c
        for c in gc.get_objects()
        if isinstance(c, aio_pika.Connection) and rabbit_vhost.name in str(c.url) and not c.is_closed
    ]
    assert not left
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        await asyncio.to_thread(gc.collect)
    assert not [w for w in caught if "never awaited" in str(w.message)]
