"""The Pub/Sub backend for the shared behaviour suite: a fresh topic and subscription per test on the
session's emulator (tests/servers/pubsub_emulator.py).

``pending()`` is an approximation the emulator forces on us: Pub/Sub has no API that counts a
subscription's unacked messages (that is Cloud Monitoring's ``num_undelivered_messages``, which
the emulator lacks, and its snapshots do not carry message state). So ``pending()`` pulls what is
deliverable *now* with unary pulls, holds those leases until it has counted them all, then gives
them back (ack deadline 0, so a running consumer gets them again at once). Messages leased by a
live consumer are not counted; neither are those of a killed one until their 10 s ack deadline
lapses. It therefore answers "nothing is waiting to be delivered", which is what the suite asks
after it has already seen every body arrive. Pulling bumps a message's delivery attempt.
"""

from __future__ import annotations

import asyncio
import uuid
import warnings
from collections.abc import Iterator
from typing import Any

import pytest

from tests.servers.pubsub_emulator import PubsubEmulator, pubsub_emulator

__all__ = ["PubsubBackend", "pubsub_backend", "pubsub_emulator"]


class PubsubBackend:
    """One topic and subscription (ack deadline 10 s) on the emulator."""

    name = "pubsub-emulator"

    def __init__(self, emu: PubsubEmulator, ack_deadline: int = 10) -> None:
        self.emu = emu
        tag = uuid.uuid4().hex[:10]
        self.topic = f"suite-{tag}"
        self.subscription = f"suite-{tag}-sub"
        emu.create(self.topic, self.subscription, ack_deadline_seconds=ack_deadline)
        self._publisher = emu.publisher()
        self._subscriber = emu.subscriber()
        self.topic_path = self._publisher.topic_path(emu.project, self.topic)
        self.subscription_path = self._subscriber.subscription_path(emu.project, self.subscription)

    def instance_config(self) -> dict[str, Any]:
        """``instances.<name>`` for the emulator."""
        return {"type": "pubsub", "project": self.emu.project, "emulator_host": self.emu.host}

    def source_config(self) -> dict[str, Any]:
        """``flows.<f>.source`` minus ``instance``."""
        return {"subscription": self.subscription, "max_messages": 100}

    async def publish(self, bodies: list[bytes]) -> None:
        """Publish with a plain PublisherClient and wait for every message id."""

        def run() -> None:
            futures = [self._publisher.publish(self.topic_path, b) for b in bodies]
            for f in futures:
                f.result(timeout=60)

        await asyncio.to_thread(run)

    async def pending(self) -> int:
        """Messages deliverable right now (see the module doc for what this cannot see)."""
        return await asyncio.to_thread(self._count)

    def _count(self) -> int:
        ack_ids: dict[str, str] = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # return_immediately is right for a peek
            for _ in range(100):
                resp = self._subscriber.pull(
                    request={"subscription": self.subscription_path, "max_messages": 1000, "return_immediately": True},
                    timeout=10,
                )
                if not resp.received_messages:
                    break
                for m in resp.received_messages:
                    ack_ids[m.message.message_id] = m.ack_id
        if ack_ids:
            ids = list(ack_ids.values())
            for i in range(0, len(ids), 1000):
                self._subscriber.modify_ack_deadline(
                    request={
                        "subscription": self.subscription_path,
                        "ack_ids": ids[i : i + 1000],
                        "ack_deadline_seconds": 0,
                    }
                )
        return len(ack_ids)

    def close(self) -> None:
        """Stop the side-door clients."""
        self._publisher.stop()
        self._subscriber.close()


@pytest.fixture
def pubsub_backend(pubsub_emulator: PubsubEmulator) -> Iterator[PubsubBackend]:
    """A fresh topic + subscription on the session's emulator."""
    backend = PubsubBackend(pubsub_emulator)
    try:
        yield backend
    finally:
        backend.close()
