"""The rabbitmq target against the real broker, and the rabbitmq config models."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from pydantic import ValidationError

from conveyor.brokers.rabbitmq.config import RabbitConfig, RabbitTargetConfig
from conveyor.errors import NotFound, Rejected, Transient
from conveyor.payload import Body, Payload
from tests.servers.rabbitmq import (
    Vhost,
    declare,
    drain,
    make_instance,
    rabbit_vhost_fixture,  # noqa: F401  (the rabbit_vhost fixture)
)


def tgt_cfg(**kw: Any) -> RabbitTargetConfig:
    return RabbitTargetConfig.model_validate({"instance": "mq", **kw})


def payload(i: int, flow: str = "f", message: dict[str, Any] | None = None) -> Payload:
    return Payload(
        id=f"id-{i}",
        flow=flow,
        source_instance="inbox",
        source_type="local",
        body=Body.from_bytes(f"body {i}".encode()),
        name=f"file{i}.csv",
        message=message,
        content_type="text/csv",
    )


async def test_publish_with_confirms_reaches_the_queue(rabbit_vhost: Vhost, tmp_path: Any) -> None:
    v = rabbit_vhost
    q = v.q("out")
    await declare(v, q)
    inst = make_instance(v, tmp_path)
    target = inst.target("f", tgt_cfg(routing_key=q, headers={"team": "integrations"}))
    # many deliveries at once, as the flow runtime runs them: all pipelined on one channel
    await asyncio.gather(*(target.deliver(payload(i)) for i in range(200)))
    got = await drain(v, q)
    assert len(got) == 200
    m = next(x for x in got if x.message_id == "id-7")
    assert m.body == b"body 7"
    assert m.delivery_mode == 2 and m.content_type == "text/csv"
    h = m.headers
    assert h["x-conveyor-id"] == "id-7" and h["x-conveyor-flow"] == "f" and h["team"] == "integrations"
    meta = json.loads(h["x-conveyor-meta"])
    assert meta["id"] == "id-7" and meta["name"] == "file7.csv" and meta["size"] == 6
    await target.close()
    await inst.close()


async def test_routing_key_template_and_exchange(rabbit_vhost: Vhost, tmp_path: Any) -> None:
    import aio_pika

    v = rabbit_vhost
    ex, q = v.q("events"), v.q("events.orders")
    async with await aio_pika.connect(v.url) as conn:
        ch = await conn.channel()
        exchange = await ch.declare_exchange(ex, aio_pika.ExchangeType.TOPIC, durable=True)
        queue = await ch.declare_queue(q, durable=True)
        await queue.bind(exchange, "orders.#")
    inst = make_instance(v, tmp_path)
    target = inst.target("f", tgt_cfg(exchange=ex, routing_key="orders.{flow}.{headers[region]}"))
    await target.deliver(payload(1, flow="relay", message={"headers": {"region": "eu", "x-death": []}}))
    (m,) = await drain(v, q)
    assert m.routing_key == "orders.relay.eu"
    assert m.headers["region"] == "eu" and "x-death" not in m.headers
    with pytest.raises(Rejected, match="region"):
        await target.deliver(payload(2))  # no headers: the template cannot be filled
    await target.close()
    await inst.close()


async def test_unroutable_publish_is_rejected(rabbit_vhost: Vhost, tmp_path: Any) -> None:
    inst = make_instance(rabbit_vhost, tmp_path)
    target = inst.target("f", tgt_cfg(routing_key="nobody-listens-here"))
    with pytest.raises(Rejected, match="unroutable"):
        await target.deliver(payload(1))
    # the channel is still good for the next one
    q = rabbit_vhost.q("after-unroutable")
    await declare(rabbit_vhost, q)
    target2 = inst.target("f", tgt_cfg(routing_key=q))
    await target2.deliver(payload(2))
    assert target._raw is not None and not target._raw.is_closed
    assert len(await drain(rabbit_vhost, q)) == 1
    await inst.close()


async def test_missing_exchange_is_not_found(rabbit_vhost: Vhost, tmp_path: Any) -> None:
    inst = make_instance(rabbit_vhost, tmp_path)
    target = inst.target("f", tgt_cfg(exchange="no-such-exchange", routing_key="k"))
    with pytest.raises(NotFound, match="no-such-exchange"):
        await target.deliver(payload(1))
    await inst.close()


async def test_broker_nack_is_transient(rabbit_vhost: Vhost, tmp_path: Any) -> None:
    v = rabbit_vhost
    q = v.q("full")
    # a full queue with reject-publish overflow makes the broker nack further publishes
    await declare(v, q, arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    inst = make_instance(v, tmp_path)
    target = inst.target("f", tgt_cfg(routing_key=q))
    await target.deliver(payload(1))
    with pytest.raises(Transient, match="did not take"):
        await target.deliver(payload(2))
    assert [m.message_id for m in await drain(v, q)] == ["id-1"]
    await target.deliver(payload(3))  # room again: the same channel goes on
    await inst.close()


# -- config -----------------------------------------------------------------------------------
def test_config_url_or_fields() -> None:
    with pytest.raises(ValidationError, match="either url or host"):
        RabbitConfig.model_validate({"type": "rabbitmq", "url": "amqp://u:p@h/v", "host": "h"})
    with pytest.raises(ValidationError, match="amqp:// or amqps://"):
        RabbitConfig.model_validate({"type": "rabbitmq", "url": "http://h/"})
    with pytest.raises(ValidationError, match="no broker address"):
        RabbitConfig.model_validate({"type": "rabbitmq"})
    c = RabbitConfig.model_validate({"type": "rabbitmq", "url": "amqps://bob:s3cret@mq.example/orders"})
    assert c.describe() == "bob@mq.example:5671/orders" and c.use_tls
    assert "s3cret" not in repr(c) and c.secrets() == ["amqps://bob:s3cret@mq.example/orders"]
    c = RabbitConfig.model_validate({"type": "rabbitmq", "host": "mq", "username": "u", "password": "pw"})
    assert c.describe() == "u@mq:5672/" and "pw" not in repr(c)
    with pytest.raises(ValidationError, match="tls is off"):
        RabbitConfig.model_validate({"type": "rabbitmq", "host": "mq", "ca_file": "/ca.pem"})


def test_target_config_templates() -> None:
    with pytest.raises(ValidationError, match="needs routing_key"):
        tgt_cfg()
    with pytest.raises(ValidationError, match="unknown field"):
        tgt_cfg(routing_key="{nope}")
    assert tgt_cfg(exchange="ex").routing_key == ""
    assert tgt_cfg(routing_key="{headers[a]}.{id}").routing_key == "{headers[a]}.{id}"
