"""The real RabbitMQ broker on 127.0.0.1:5672 (guest/guest), with a fresh vhost per test module.

``ensure_broker()`` starts Debian's ``rabbitmq-server -detached`` when nothing answers on the port
(as ``.ci/run`` does on a new machine). Vhosts are made and removed with ``rabbitmqctl`` (the
management plugin is not enabled here); when rabbitmqctl cannot be used, tests fall back to the
default vhost ``/`` with unique queue names.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

HOST = "127.0.0.1"
PORT = int(os.environ.get("CONVEYOR_TEST_RABBITMQ_PORT", "5672"))
USER = "guest"
PASSWORD = "guest"


def broker_up(port: int = PORT, timeout: float = 1.0) -> bool:
    """Whether something accepts TCP connections on the AMQP port."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout):
            return True
    except OSError:
        return False


def ensure_broker(wait: float = 90.0) -> None:
    """Start the local broker if it is not running, and wait until it accepts connections."""
    if broker_up():
        return
    if shutil.which("rabbitmq-server") is None:
        pytest.fail(
            "RabbitMQ is not running on 127.0.0.1:5672 and rabbitmq-server is not installed "
            "(apt-get install -y rabbitmq-server)"
        )
    subprocess.run(["rabbitmq-server", "-detached"], check=False, capture_output=True, timeout=60)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if broker_up():
            if shutil.which("rabbitmqctl"):
                subprocess.run(
                    ["rabbitmqctl", "await_startup", "--timeout", "60"], check=False, capture_output=True, timeout=90
                )
            return
        time.sleep(0.5)
    pytest.fail(f"RabbitMQ did not come up on {HOST}:{PORT} within {wait:.0f}s")


def _ctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=60, check=False)


@dataclass
class Vhost:
    """A vhost of the test broker, owned by one test module (or the default vhost as a fallback)."""

    name: str
    owned: bool
    prefix: str
    """Prefix for queue and exchange names (unique when sharing the default vhost)."""

    @property
    def url(self) -> str:
        """An amqp:// URL for plain aio-pika clients."""
        from urllib.parse import quote

        return f"amqp://{USER}:{PASSWORD}@{HOST}:{PORT}/{quote(self.name, safe='')}"

    def instance_config(self, **over: Any) -> dict[str, Any]:
        """The ``instances.<name>`` mapping for conveyor."""
        cfg: dict[str, Any] = {
            "type": "rabbitmq",
            "host": HOST,
            "port": PORT,
            "username": USER,
            "password": PASSWORD,
            "vhost": self.name,
            "timeout": "5s",
        }
        cfg.update(over)
        return cfg

    def q(self, name: str) -> str:
        """A queue/exchange name unique to this vhost's user."""
        return f"{self.prefix}{name}"

    def counts(self) -> dict[str, int]:
        """Messages per queue (ready + unacknowledged) as the broker reports them."""
        out = _ctl("list_queues", "-p", self.name, "--no-table-headers", "name", "messages")
        counts: dict[str, int] = {}
        for line in out.stdout.splitlines():
            parts = line.split("\t")
            if len(parts) == 2 and parts[1].strip().isdigit():
                counts[parts[0]] = int(parts[1])
        return counts


def close_connections(v: Vhost, reason: str = "broker restart (test)") -> int:
    """Have the broker close every client connection to the vhost with CONNECTION_FORCED, as a broker
    shutting down does; returns how many were closed."""
    out = _ctl("list_connections", "--no-table-headers", "pid", "vhost")
    pids = [line.split("\t")[0] for line in out.stdout.splitlines() if line.endswith("\t" + v.name)]
    for pid in pids:
        _ctl("close_connection", pid, reason)
    return len(pids)


def create_vhost() -> Vhost:
    """A fresh vhost with full permissions for guest (or the default vhost when rabbitmqctl fails)."""
    ensure_broker()
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    name = f"conveyor-test-{tag}"
    if shutil.which("rabbitmqctl"):
        made = _ctl("add_vhost", name)
        if made.returncode == 0:
            perm = _ctl("set_permissions", "-p", name, USER, ".*", ".*", ".*")
            if perm.returncode == 0:
                return Vhost(name, owned=True, prefix="")
            _ctl("delete_vhost", name)
    return Vhost("/", owned=False, prefix=f"t{tag}-")


def delete_vhost(v: Vhost) -> None:
    """Remove a vhost made by :func:`create_vhost` (and everything in it)."""
    if v.owned:
        _ctl("delete_vhost", v.name)


@pytest.fixture(scope="module", name="rabbit_vhost")
def rabbit_vhost_fixture() -> Iterator[Vhost]:
    """A fresh vhost on the real broker for one test module."""
    v = create_vhost()
    try:
        yield v
    finally:
        delete_vhost(v)


# -- helpers for tests that drive conveyor's rabbitmq connector directly ------------------------
def make_instance(
    vhost: Vhost, spool_dir: Any, /, name: str = "mq", threshold: int = 8 * 1024 * 1024, **over: Any
) -> Any:
    """A RabbitInstance on ``vhost`` with its own status board and spool."""
    from pathlib import Path

    from conveyor.brokers.rabbitmq.config import RabbitConfig
    from conveyor.brokers.rabbitmq.instance import RabbitInstance
    from conveyor.interfaces import Context
    from conveyor.payload import Spool
    from conveyor.status import StatusBoard

    cfg = RabbitConfig.model_validate(vhost.instance_config(**over))
    spool = Spool(Path(spool_dir), threshold=threshold)
    spool.prepare()
    return RabbitInstance(name, cfg, Context(spool=spool, status=StatusBoard()))


async def declare(vhost: Vhost, queue: str, **kw: Any) -> None:
    """Declare a queue with plain aio-pika (durable unless told otherwise)."""
    import aio_pika

    kw.setdefault("durable", True)
    async with await aio_pika.connect(vhost.url) as conn:
        ch = await conn.channel()
        await ch.declare_queue(queue, **kw)


async def publish(vhost: Vhost, queue: str, bodies: list[bytes], **props: Any) -> None:
    """Publish bodies to a queue through the default exchange, with confirms, using plain aio-pika."""
    import aio_pika

    async with await aio_pika.connect(vhost.url) as conn:
        ch = await conn.channel()
        for b in bodies:
            await ch.default_exchange.publish(
                aio_pika.Message(b, delivery_mode=aio_pika.DeliveryMode.PERSISTENT, **props), routing_key=queue
            )


async def drain(vhost: Vhost, queue: str, wait: float = 2.0) -> list[Any]:
    """Every message now on a queue, read (and acked) with plain aio-pika basic.get."""
    import aio_pika

    out: list[Any] = []
    async with await aio_pika.connect(vhost.url) as conn:
        ch = await conn.channel()
        q = await ch.declare_queue(queue, passive=True)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            msg = await q.get(no_ack=True, fail=False)
            if msg is None:
                if out:
                    break
                await asyncio.sleep(0.05)
                continue
            out.append(msg)
    return out


async def ready_count(vhost: Vhost, queue: str) -> int:
    """Messages ready on a queue (passive declare; unacked messages are not counted)."""
    import aio_pika

    async with await aio_pika.connect(vhost.url) as conn:
        ch = await conn.channel()
        q = await ch.declare_queue(queue, passive=True)
        return int(q.declaration_result.message_count or 0)
