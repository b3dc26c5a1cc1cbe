"""Soft stop and hard stop are different signals: a flow's stop signal, the intake that refuses
once it is set, work that another party may abort, and no cancellation withdrawn in src/."""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path

import pytest

from conveyor.flows.runner import Capacity
from conveyor.stopping import Abortable, Aborted, StopSignal

SRC = Path(__file__).resolve().parents[1] / "src" / "conveyor"

UNCANCEL_ALLOWED: dict[str, str] = {}
"""Modules (relative to src/) allowed to call ``Task.uncancel()``, and why. None is: a cancellation
is the hard stop; whatever must end work early aborts a task of its own (conveyor.stopping)."""


def _uncancels(tree: ast.Module) -> list[int]:
    """Lines that call ``uncancel`` (as a method or a plain name)."""
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and (
            (isinstance(node.func, ast.Attribute) and node.func.attr == "uncancel")
            or (isinstance(node.func, ast.Name) and node.func.id == "uncancel")
        )
    ]


def test_no_cancellation_is_withdrawn_in_src() -> None:
    found = {}
    for path in sorted(SRC.rglob("*.py")):
        rel = str(path.relative_to(SRC.parent))
        lines = _uncancels(ast.parse(path.read_text(), rel))
        if lines and rel not in UNCANCEL_ALLOWED:
            found[rel] = lines
    assert not found, f"uncancel() used as a signal (use a StopSignal or conveyor.stopping.Abortable): {found}"


def test_the_uncancel_check_sees_every_spelling() -> None:
    code = "t.uncancel()\nasyncio.current_task().uncancel()\nuncancel()\nx = 'uncancel()'\n"
    assert _uncancels(ast.parse(code)) == [1, 2, 3]


async def test_stop_signal_wakes_waiters_and_runs_callbacks_once() -> None:
    stop = StopSignal()
    calls: list[str] = []
    stop.on_set(lambda: calls.append("a"))
    withdraw = stop.on_set(lambda: calls.append("withdrawn"))
    withdraw()
    assert await stop.wait(0.05) is False  # the poll cadence: the timeout passes
    waiter = asyncio.create_task(stop.wait(30))
    await asyncio.sleep(0)
    stop.set()
    stop.set()
    assert await asyncio.wait_for(waiter, 1) is True
    assert calls == ["a"]
    stop.on_set(lambda: calls.append("late"))  # already set: called at once
    assert calls == ["a", "late"]


async def test_a_closed_capacity_refuses_and_wakes_its_waiters() -> None:
    """A source blocked on a full flow learns of the stop from the acquire it waits in, without
    being cancelled."""
    cap = Capacity(1)
    assert await cap.acquire() is True
    waiting = [asyncio.create_task(cap.acquire()) for _ in range(3)]
    await asyncio.sleep(0)
    assert not any(t.done() for t in waiting)
    cap.release()  # the first waiter gets it
    await asyncio.sleep(0)
    assert waiting[0].result() is True and not waiting[1].done()
    cap.close()
    assert [await t for t in waiting[1:]] == [False, False]
    assert await cap.acquire() is False
    assert not any(t.cancelled() for t in waiting)


async def test_a_cancelled_waiter_does_not_lose_a_unit() -> None:
    cap = Capacity(1)
    assert await cap.acquire()
    waiter = asyncio.create_task(cap.acquire())
    await asyncio.sleep(0)
    cap.release()  # granted to the waiter...
    waiter.cancel()  # ...which is cancelled before it runs: the unit is passed on
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert await asyncio.wait_for(cap.acquire(), 1) is True


async def test_abort_ends_the_work_and_leaves_the_caller_uncancelled() -> None:
    work = Abortable[None]()
    started = asyncio.Event()

    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    async def caller() -> str:
        try:
            await work.run(forever())
        except Aborted:
            task = asyncio.current_task()
            assert task is not None and task.cancelling() == 0
            return "aborted"
        return "done"

    task = asyncio.create_task(caller())
    await started.wait()
    work.abort()
    assert await asyncio.wait_for(task, 1) == "aborted"


async def test_a_cancel_of_the_caller_stays_a_cancel_even_beside_an_abort() -> None:
    async def forever(started: asyncio.Event) -> None:
        started.set()
        await asyncio.Event().wait()

    for abort_too in (False, True):
        work = Abortable[None]()
        started = asyncio.Event()
        task = asyncio.create_task(work.run(forever(started)))
        await started.wait()
        if abort_too:
            work.abort()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
