"""A delivery's slot in its flow, freed as soon as the target confirmed.

The runner bounds the payloads *in delivery* per flow (``max_in_flight``). Once the target
has confirmed one, what is left — the durable ``delivered`` record, the after action or
ack — needs neither the body nor the target, so the slot goes to the next payload and the
completion finishes beside it (the runner bounds those too, at a few times the slots).
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar

_free_slot: ContextVar[Callable[[], None] | None] = ContextVar("conveyor_free_slot", default=None)


def bind(free: Callable[[], None]) -> None:
    """In a delivery task: ``free`` is what :func:`target_done` calls (the task's own context)."""
    _free_slot.set(free)


def target_done() -> None:
    """Within a delivery, once the target confirmed it: free its slot for the next payload."""
    free = _free_slot.get()
    if free is not None:
        free()
