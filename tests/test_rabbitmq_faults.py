"""RabbitMQ connection cuts (through a TCP proxy) under the source and the target: nothing lost."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from conveyor.brokers.rabbitmq.config import RabbitSourceConfig, RabbitTargetConfig
from conveyor.errors import Transient
from conveyor.interfaces import Inbound
from conveyor.payload import Body, Payload
from conveyor.stopping import StopSignal
from tests.servers.rabbitmq import (
    HOST,
    PORT,
    Vhost,
    declare,
    drain,
    make_instance,
    publish,
    rabbit_vhost_fixture,  # noqa: F401  (the rabbit_vhost fixture)
)
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.fault


async def test_cut_mid_stream_then_resume_loses_nothing(rabbit_vhost: Vhost, tmp_path: Any) -> None:
    v = rabbit_vhost
    q = v.q("cut")
    await declare(v, q)
    n = 2000
    await publish(v, q, [f"m{i}".encode() for i in range(n)])
    async with TcpProxy(HOST, PORT) as proxy:
        inst = make_instance(v, tmp_path, port=proxy.port)
        source = inst.source("f", RabbitSourceConfig(instance="mq", queue=q, prefetch=50))
        seen: dict[str, int] = {}
        all_in = asyncio.Event()

        async def emit(i: Inbound) -> None:
            seen[i.payload.id] = seen.get(i.payload.id, 0) + 1
            await i.ack()
            if len(seen) == 300 and proxy.connections == 1:
                proxy.cut()
            if len(seen) == n:
                all_in.set()

        with pytest.raises(Transient):
            await asyncio.wait_for(source.run(emit, StopSignal()), 10)
        assert inst.ctx.status.instances["mq"].state == "down"
        assert 300 <= len(seen) < n
        task = asyncio.create_task(source.run(emit, StopSignal()))  # what the supervisor does after its backoff
        await asyncio.wait_for(all_in.wait(), 30)
        assert inst.ctx.status.instances["mq"].state == "up"
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await inst.close()
    assert len(seen) == n  # every message arrived; a few may have arrived twice (acks lost in the cut)
    assert sum(seen.values()) - n <= 50 + 1
    assert v.counts().get(q) == 0


async def test_target_publish_through_a_cut(rabbit_vhost: Vhost, tmp_path: Any) -> None:
    v = rabbit_vhost
    q = v.q("cut-out")
    await declare(v, q)
    async with TcpProxy(HOST, PORT) as proxy:
        inst = make_instance(v, tmp_path, port=proxy.port)
        target = inst.target("f", RabbitTargetConfig(instance="mq", routing_key=q))

        def p(i: int) -> Payload:
            return Payload(
                id=f"p{i}", flow="f", source_instance="s", source_type="local", body=Body.from_bytes(b"x" * 1000)
            )

        for i in range(21):
            await target.deliver(p(i))  # confirmed before the cut
        # Cut once about 50 more publishes have reached the broker: the rest are still in the
        # client or the proxy then, whatever the machine's speed, so some must fail.
        proxy.cut_after(50_000, up=True)
        results = await asyncio.gather(*(target.deliver(p(i)) for i in range(21, 300)), return_exceptions=True)
        failed = [i for i, r in zip(range(21, 300), results, strict=True) if r is not None]
        assert failed, "the cut should have failed some publishes"
        assert all(isinstance(results[i - 21], Transient) for i in failed), results
        # the flow runtime retries the failures: the target reconnects lazily
        await asyncio.gather(*(target.deliver(p(i)) for i in failed))
        assert proxy.connections == 2
        await inst.close()
    ids = {m.message_id for m in await drain(v, q)}
    assert ids == {f"p{i}" for i in range(300)}
