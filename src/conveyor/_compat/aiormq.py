"""aiormq's private parts: every use of them, checked at import, with the public fallback.

Why: aiormq gathers a delivered message's body frames into one ``bytes`` before any callback
sees it, so a message of the broker's maximum (128 MiB by default) is in memory whole before
conveyor can refuse it. A consumer channel's ``_read_content`` is wrapped so that a delivery
whose content header announces more than the flow's ``max_message_size`` has its body frames
read and dropped as they arrive: the consumer gets the message with an empty body, and its
header's ``body_size`` still says how large it was.
Fallback: the body arrives whole, as aiormq made it, and is refused the same way after that:
correct, with a peak of one oversize body per prefetched message.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

import aiormq
from aiormq.abc import DeliveredMessage
from pamqp import commands as spec
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

from conveyor._compat import Choice, choose, installed_version

log = logging.getLogger("conveyor.rabbitmq")

TESTED = ((7, 2), (7, 3))
"""aiormq versions the private path was tested with: [low, high)."""

_HOOKED = "self._read_content(frame, header)"
"""How a delivery's body is read in ``Channel._on_deliver_frame``: through ``self``, so an
instance attribute in front of it sees it."""


def feature_problem(channel_class: type = aiormq.Channel) -> str | None:
    """What no longer fits the wrapper in ``channel_class``; None when all does."""
    name = channel_class.__name__
    read = getattr(channel_class, "_read_content", None)
    if not inspect.isfunction(read) or list(inspect.signature(read).parameters) != ["self", "frame", "header"]:
        return f"{name}._read_content(self, frame, header) is missing"
    get = getattr(channel_class, "_get_frame", None)
    if not inspect.iscoroutinefunction(get) or list(inspect.signature(get).parameters) != ["self"]:
        return f"{name}._get_frame(self) is missing"
    deliver = getattr(channel_class, "_on_deliver_frame", None)
    try:
        source = inspect.getsource(deliver) if deliver is not None else ""
    except (OSError, TypeError):
        return f"the source of {name}._on_deliver_frame is not readable, so how it reads a body cannot be checked"
    if _HOOKED not in source:
        return f"{name}._on_deliver_frame no longer reads the body through self._read_content"
    fields = [f.name for f in getattr(DeliveredMessage, "__dataclass_fields__", {}).values()]
    if fields != ["delivery", "header", "body", "channel"]:
        return "DeliveredMessage(delivery, header, body, channel) has other fields"
    return None


def select(channel_class: type = aiormq.Channel, version: str | None = None) -> Choice:
    """The path for channels of ``channel_class`` under aiormq ``version`` (the installed one by default)."""
    return choose(
        "aiormq",
        version or installed_version("aiormq"),
        TESTED,
        feature_problem(channel_class),
        "a delivery over max_message_size has its body dropped frame by frame, never held whole",
    )


CHOICE = select()


def cap_bodies(channel: Any, limit: int) -> None:
    """Make ``channel`` (aiormq's, under a consumer) drop the body of any delivery announced as
    larger than ``limit`` bytes as it arrives; on the public path, leave the channel as it is."""
    CHOICE.announce(log)
    if not CHOICE.private:
        return
    original = channel._read_content

    async def read_content(frame: Any, header: ContentHeader) -> DeliveredMessage:
        if header.body_size <= limit or not isinstance(frame, spec.Basic.Deliver):
            return await original(frame, header)  # type: ignore[no-any-return]
        left = header.body_size
        while left > 0:
            content = await channel._get_frame()
            if not isinstance(content, ContentBody):
                raise ValueError(f"Unexpected frame {content!r}", content)
            left -= len(content.value)
        return DeliveredMessage(delivery=frame, header=header, body=b"", channel=channel)

    channel._read_content = read_content
