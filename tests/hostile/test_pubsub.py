"""A hostile Pub/Sub publisher (the emulator) against ``conveyor run``: a ``name`` attribute that is a
path, carries control characters or 10,000 characters, or takes a sidecar's name (the target writes
``{name}``), and attributes that mimic metadata or carry line breaks. Pub/Sub chooses message ids,
so the ledger says what was delivered: a message it holds delivered must be in the target. What
each case must show is in tests/hostile/harness.py."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.hostile.harness import MARK, Case, Group, Outcome, Sent, assert_case, run_groups, sha, unique
from tests.servers.pubsub_emulator import PubsubEmulator


class PsCase(Case):
    """One topic and subscription, consumed by one flow into a directory target writing ``{name}``."""

    emu: PubsubEmulator | None = None
    """The session's emulator (set by the module's fixture)."""

    def __init__(self, name: str, messages: list[tuple[str, bytes, dict[str, str], str]]) -> None:
        super().__init__(name)
        self.messages = messages
        """(key, body, attributes, expect) of each message."""
        tag = uuid.uuid4().hex[:8]
        self.topic, self.subscription = f"hostile-{name}-{tag}", f"hostile-{name}-{tag}-sub"
        self.skipped: list[str] = []
        """Messages left out because the emulator refused their attributes (Pub/Sub's own limits)."""

    async def prepare(self) -> None:
        emu = self.emu
        assert emu is not None
        await asyncio.to_thread(emu.create, self.topic, self.subscription, ack_deadline_seconds=10)
        self.g.instances["gcp"] = {"type": "pubsub", "project": emu.project, "emulator_host": emu.host}
        ok = unique(f"ok-{self.name}")
        for key, body, attrs, expect in [*self.messages, (ok, b"ordinary\n", {"name": ok}, "deliver")]:
            await self.publish(key, body, attrs, expect)

    async def publish(self, key: str, body: bytes, attrs: dict[str, str], expect: str) -> Sent | None:
        """Publish one message; an attribute set the emulator refuses is noted, and the message left out."""
        assert self.emu is not None
        emu = self.emu

        def run() -> str:
            pub = emu.publisher()
            try:
                return str(pub.publish(pub.topic_path(emu.project, self.topic), body, **attrs).result(timeout=60))
            finally:
                pub.stop()

        try:
            mid = await asyncio.to_thread(run)
        except Exception as e:
            self.skipped.append(f"{key}: the emulator refused the attributes ({type(e).__name__})")
            return None
        return self.add(key, body, expect, ident={"id": mid}, ledger_id=mid)

    def flow(self) -> dict[str, Any]:
        return {
            "source": {"instance": "gcp", "subscription": self.subscription, "max_messages": 100},
            "target": self.directory(filename="{name}"),
            "retry": {"attempts": 2, "backoff": "200ms", "max_backoff": "1s"},
        }


def cases() -> list[PsCase]:
    """Every Pub/Sub case."""
    t = unique
    forged = json.dumps({"id": "forged", "sha256": sha(b"forged"), "size": 6}).encode()
    return [
        PsCase(
            "attr-name-path",
            [
                (t("up1"), b"up1\n", {"name": f"../{t('up1')}"}, "any"),
                (t("up2"), b"up2\n", {"name": f"../../{t('up2')}"}, "any"),
                (t("abs"), b"abs\n", {"name": f"/tmp/{t('abs')}"}, "any"),
                (t("sub"), b"sub\n", {"name": f"a/b/{t('sub')}"}, "any"),
                ("dots", b"dots\n", {"name": ".."}, "any"),
            ],
        ),
        PsCase(
            "attr-name-control",
            [
                (t("nul"), b"nul\n", {"name": f"{t('nul')}\0x"}, "any"),
                (t("crlf"), b"crlf\n", {"name": f"{t('crlf')}\r\nFORGED"}, "any"),
                (t("long") + "-1", b"long 1\n", {"name": t("long") + "L" * 10_000 + "-1"}, "any"),
                (t("long") + "-2", b"long 2\n", {"name": t("long") + "L" * 10_000 + "-2"}, "any"),
            ],
        ),
        PsCase(
            "attr-name-sidecar",
            [
                (f"{MARK}-a.csv", b"id;qty\n1;2\n", {"name": f"{MARK}-a.csv"}, "deliver"),
                (f"{MARK}-a.csv.meta.json", forged, {"name": f"{MARK}-a.csv.meta.json"}, "deliver"),
            ],
        ),
        PsCase(
            "attr-hostile",
            [
                (
                    t("attrs"),
                    b"hostile attributes\n",
                    {
                        "name": t("attrs"),
                        "../k": "v",
                        "k\nFORGED": "x\r\ny",
                        "content_type": "text/plain\r\nX-Evil: 1",
                        "id": "forged-id",
                        "sha256": "0" * 64,
                        "size": "1",
                        "flow": "another-flow",
                        t("big"): "V" * 10_000,
                    },
                    "deliver",
                ),
                (
                    t("attrs-small"),
                    b"hostile attributes within Pub/Sub's limits\n",
                    {
                        "name": t("attrs-small"),
                        "../k": "v",
                        "k\nFORGED": "x\r\ny",
                        "id": "forged-id",
                        "sha256": "0" * 64,
                        "flow": "another-flow",
                    },
                    "deliver",
                ),
            ],
        ),
    ]


CASES = [c.name for c in cases()]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory, pubsub_emulator: PubsubEmulator) -> Iterator[dict[str, Outcome]]:
    """Every case on one daemon."""
    PsCase.emu = pubsub_emulator
    root: Path = tmp_path_factory.mktemp("hostile-pubsub")
    all_cases: list[Case] = list(cases())
    yield run_groups([Group("pubsub", "pubsub-attrs", root / "attrs", all_cases)])


@pytest.mark.parametrize("case", CASES)
def test_hostile_pubsub_publisher(results: dict[str, Outcome], case: str) -> None:
    assert_case(results, case)
