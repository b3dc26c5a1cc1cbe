"""RabbitMQ messages over ``max_message_size`` go to the dead-letter exchange, their body never
held, on the real broker."""

from __future__ import annotations

import asyncio
import os
import tracemalloc
from pathlib import Path

import pytest

from conveyor._compat import ENV
from conveyor._compat import aiormq as aiormq_compat
from tests.servers.rabbitmq import (
    Vhost,
    declare,
    drain,
    make_instance,
    publish,
    rabbit_vhost_fixture,  # noqa: F401  (the rabbit_vhost fixture)
)
from tests.test_file_limits import errors_about
from tests.test_rabbitmq_source import Collector, ack, src_cfg, stop


@pytest.fixture(params=["private", "public"])
def aiormq_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both of aiormq's paths: the body dropped frame by frame, and the body whole, then refused."""
    if request.param == "public":
        monkeypatch.setenv(ENV, "public")
        monkeypatch.setattr(aiormq_compat, "CHOICE", aiormq_compat.select())
        assert not aiormq_compat.CHOICE.private
    else:
        monkeypatch.delenv(ENV, raising=False)
        monkeypatch.setattr(aiormq_compat, "CHOICE", aiormq_compat.select())
        assert aiormq_compat.CHOICE.private, aiormq_compat.CHOICE.why
    return str(request.param)


async def test_an_oversize_message_goes_to_the_dead_letter_queue(
    rabbit_vhost: Vhost, tmp_path: Path, aiormq_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    v = rabbit_vhost
    q, dlq = v.q(f"sized-{aiormq_path}"), v.q(f"sized-{aiormq_path}.dlq")
    await declare(v, dlq)
    await declare(v, q, arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dlq})
    big = os.urandom(8 * 1024 * 1024)
    await publish(v, q, [b"before"], message_id="ok-1")
    await publish(v, q, [big], message_id="big\n1")
    await publish(v, q, [b"after"], message_id="ok-2")
    inst = make_instance(v, tmp_path / "spool")
    col = Collector(2, ack)
    tracemalloc.start()
    try:
        task = asyncio.create_task(inst.source("f", src_cfg(q, max_message_size="1MiB")).run(col.emit, col.stop))
        await col.wait(30)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    await stop(task)
    await inst.close()
    assert [i.payload.body.data() for i in col.items] == [b"before", b"after"]
    dead = await drain(v, dlq)
    assert [(m.message_id, m.body == big) for m in dead] == [("big\n1", True)]
    assert v.counts().get(q) == 0
    said = errors_about(caplog, "max_message_size")
    assert len(said) == 1 and "'big\\n1'" in said[0].getMessage() and getattr(said[0], "flow", None) == "f"
    if aiormq_path == "private":
        assert peak < len(big) // 2, f"the oversize body was held: peak {peak} bytes traced"


def test_the_aiormq_hook_checks_what_it_reaches_into(monkeypatch: pytest.MonkeyPatch) -> None:
    import aiormq

    monkeypatch.delenv(ENV, raising=False)
    assert aiormq_compat.feature_problem(aiormq.Channel) is None

    class Renamed:
        async def _get_frame(self) -> None: ...

    assert "_read_content" in (aiormq_compat.feature_problem(Renamed) or "")
    outside = aiormq_compat.select(version="9.0.0")
    assert not outside.private and "tested range" in outside.why
