"""A hostile RabbitMQ publisher (the real broker, 127.0.0.1:5672) against ``conveyor run``: message
ids that are paths, control characters, names alike in their first 240 characters or a sidecar's
name, hostile headers, and messages as large as the broker accepts (its ``max_message_size``,
128 MiB by default). Every queue dead-letters into a queue of its own, so a message the daemon
refuses is accounted for, not lost. What each case must show is in tests/hostile/harness.py."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from tests.hostile.harness import MARK, Case, Group, Outcome, Sent, assert_case, run_groups, sha, unique
from tests.servers.rabbitmq import Vhost

FORGED_LOG = f"2026-01-01 00:00:00 error   conveyor.flow: FORGED-{MARK}"
"""A whole text log line, carried inside a message id after a newline."""


class MqCase(Case):
    """One queue (dead-lettering into ``<queue>.dlq``) consumed by one flow into a directory target."""

    vhost: Vhost | None = None
    """The module's vhost (set by its fixture)."""

    def __init__(self, name: str, group: str = "ids") -> None:
        super().__init__(name)
        self.group = group
        self.remaining: set[str] = set()
        """SHA-256 of the messages left in the queue and its dead-letter queue after the daemon stopped."""

    @property
    def v(self) -> Vhost:
        assert self.vhost is not None
        return self.vhost

    @property
    def queue(self) -> str:
        return self.v.q(self.name)

    async def prepare(self) -> None:
        async with await aio_pika.connect(self.v.url) as conn:
            ch = await conn.channel()
            await ch.declare_queue(self.queue + ".dlq", durable=True)
            await ch.declare_queue(
                self.queue,
                durable=True,
                arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": self.queue + ".dlq"},
            )
        self.g.instances["mq"] = self.v.instance_config()
        await self.publish_all()

    async def publish_all(self) -> None:
        """The case's messages, published before the daemon starts."""

    async def publish(
        self, key: str, body: bytes, expect: str = "any", *, message_id: str | None = None, **props: Any
    ) -> Sent:
        """One message onto the case's queue, with confirms, recorded as sent."""
        async with await aio_pika.connect(self.v.url) as conn:
            ch = await conn.channel()
            await ch.default_exchange.publish(
                aio_pika.Message(body, message_id=message_id, **props), routing_key=self.queue, timeout=120
            )
        ident = {"message_id": message_id} if message_id else {}
        return self.add(key, body, expect, ident=ident, ledger_id=message_id)

    def flow(self) -> dict[str, Any]:
        return {
            "source": {"instance": "mq", "queue": self.queue, "max_attempts": 2},
            "target": self.directory(),
            "retry": {"attempts": 2, "backoff": "200ms", "max_backoff": "1s"},
        }

    async def after_stop(self) -> None:
        for q in (self.queue, self.queue + ".dlq"):
            async with await aio_pika.connect(self.v.url) as conn:
                ch = await conn.channel()
                queue = await ch.declare_queue(q, passive=True)
                while (msg := await queue.get(no_ack=True, fail=False, timeout=30)) is not None:
                    self.remaining.add(hashlib.sha256(msg.body).hexdigest())

    def completed(self, s: Sent) -> bool:
        return s.sha256 not in self.remaining


class Ids(MqCase):
    """Message ids that are paths or carry control characters."""

    def __init__(self, name: str, ids: list[tuple[str, str]]) -> None:
        super().__init__(name)
        self.ids = ids

    async def publish_all(self) -> None:
        for key, mid in self.ids:
            await self.publish(key, f"body of {key} {mid[-30:]!r}\n".encode(), message_id=mid)
        await self.publish(unique(f"ok-{self.name}"), b"ordinary\n", "deliver", message_id=unique(f"ok-{self.name}"))


class ForgedLogLine(Ids):
    """A message id with a newline and a whole log line after it (the daemon logs as text here)."""

    def extra(self) -> list[str]:
        text = self.g.daemon.text() if self.g.daemon is not None else ""
        forged = [ln for ln in text.splitlines() if ln.startswith(FORGED_LOG[:30])]
        return [f"a message id forged a line of the daemon's log: {forged[0][:120]!r}"] if forged else []


class LongIds(MqCase):
    """Two ids of 255 characters (AMQP's longest) alike in their first 250: both arrive, apart."""

    async def publish_all(self) -> None:
        stem = unique("long") + "L" * (250 - len(unique("long")))
        for end in ("-0001", "-0002"):
            await self.publish(stem[-10:] + end, f"long id {end}\n".encode(), "deliver", message_id=stem + end)


class SidecarId(MqCase):
    """`` v`` (lands as ``v``), then ``v.meta.json`` holding ``{"id": "v"}`` over its sidecar, then the
    real ``v``: the real one must be delivered, not skipped as already there and acked."""

    deadline = 30.0

    async def publish_all(self) -> None:
        self.v_id = unique("victim")
        await self.publish(self.v_id + "-decoy", b"decoy\n", "replaceable", message_id=" " + self.v_id)
        doc = json.dumps({"id": self.v_id, "sha256": sha(b"decoy\n"), "size": 6}).encode()
        self.forged = await self.publish(self.v_id + ".meta.json", doc, message_id=self.v_id + ".meta.json")

    async def attack(self) -> None:
        end = time.monotonic() + 12
        while time.monotonic() < end and not (
            self.g.ledger_seen(self.name, " " + self.v_id)
            and (
                self.g.ledger_seen(self.name, self.v_id + ".meta.json")
                or self.g.error_line(self.name, (self.forged.key,))
            )
        ):
            await asyncio.sleep(0.2)
        await asyncio.sleep(0.5)
        await self.publish(self.v_id, b"the real victim\n", "deliver", message_id=self.v_id)


class Headers(MqCase):
    """Headers a publisher may choose: path-like and control-character names, a 10,000-character
    value, the broker's own ``x-death``/``x-delivery-count``, ``id`` and ``sha256``, nested tables,
    bytes that are not UTF-8. Delivered, with a true sidecar."""

    async def publish_all(self) -> None:
        headers: dict[str, Any] = {
            "../x": "v",
            "k\nFORGED": "a\r\nb",
            "nul\0name": "a\0b",
            unique("big"): "H" * 10_000,
            "x-death": "forged",
            "x-delivery-count": 99,
            "id": "forged-id",
            "sha256": "0" * 64,
            "nested": {"a": {"b": {"c": [1, 2, {"d": bytearray(b"\xff\xfe")}]}}},
            "bytes": bytearray(b"\xff\xfe\x00"),
        }
        mid = unique("headers")
        await self.publish(mid, b"hostile headers\n", "deliver", message_id=mid, headers=headers)
        # Without a message id the id is a hash of queue, body and headers.
        await self.publish(unique("headers-noid"), b"hostile headers, no id\n", "deliver", headers=headers)


class Oversize(MqCase):
    """Messages as large as the broker accepts (127 and 100 MiB; its limit is 128 MiB): delivered whole
    through the spool, or dead-lettered with an error line, in bounded memory."""

    deadline = 90.0

    def __init__(self) -> None:
        super().__init__("mq-oversize", "oversize")

    async def publish_all(self) -> None:
        for key, size in ((unique("big127"), 127 << 20), (unique("big100"), 100 << 20)):
            await self.publish(key, key.encode().ljust(size, b"B"), message_id=key)
        await self.publish(unique("ok-oversize"), b"small\n", "deliver", message_id=unique("ok-oversize"))


def cases() -> list[MqCase]:
    """Every RabbitMQ case."""
    t = unique
    return [
        Ids(
            "id-path",
            [
                (t("up1"), f"../{t('up1')}"),
                (t("up2"), f"../../{t('up2')}"),
                ("..", ".."),
                (t("abs"), f"/tmp/{t('abs')}"),
                (t("sub"), f"a/b/{t('sub')}"),
            ],
        ),
        Ids(
            "id-control",
            [
                (t("nul"), f"{t('nul')}\0x"),
                (t("lf"), f"{t('lf')}\nx"),
                (t("cr"), f"{t('cr')}\rx"),
                (t("tab"), f"{t('tab')}\t\x7f\x1bx"),
            ],
        ),
        ForgedLogLine("id-log-line", [(t("logline"), f"{t('logline')}\n{FORGED_LOG}")]),
        LongIds("id-long"),
        SidecarId("id-sidecar"),
        Headers("mq-headers"),
        Oversize(),
    ]


CASES = [c.name for c in cases()]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory, rabbit_vhost: Vhost) -> Iterator[dict[str, Outcome]]:
    """The id and header cases on one daemon (logging as text, where a newline could forge a line),
    the oversize messages on another, both at once."""
    MqCase.vhost = rabbit_vhost
    root: Path = tmp_path_factory.mktemp("hostile-rabbitmq")
    every: list[Case] = list(cases())
    ids = [c for c in every if c.group == "ids"]
    big = [c for c in every if c.group == "oversize"]
    groups = [
        Group("rabbitmq", "rabbitmq-ids", root / "ids", ids, log={"level": "debug", "format": "text"}),
        Group("rabbitmq", "rabbitmq-oversize", root / "oversize", big),
    ]
    yield run_groups(groups)


@pytest.mark.parametrize("case", CASES)
def test_hostile_rabbitmq_publisher(results: dict[str, Outcome], case: str) -> None:
    assert_case(results, case)
