"""A flow's steps at run time: :class:`StepsTarget` wraps the flow's target.

The deliverer hands the wrapper one payload (one ledger item) at a time; the wrapper runs it
through the steps and delivers every payload derived from it to the real target before
``deliver`` returns, so the source's item is settled only once all of them are delivered.
Each step is an async iterator of payloads per input: one for ``decompress``, ``compress``,
``decrypt`` and ``encrypt``, one per member for ``unpack``. Members are produced one at a time
and each is delivered (and its spool file released) before the next is read, so an archive of
any size needs room for one member at once. The blocking work (inflating, reading archives,
gpg) runs on a thread of its own per step run, never on the event loop.

A derived payload's id is ``stable_id(parent id, step index, member)``, its name follows the
step (``x.csv.gz`` → ``x.csv``), and its ``lineage`` names the parent: a redo after a crash
derives the same ids and names. A step that cannot do its work raises :class:`Permanent`
naming the step (``steps[1] decrypt: ...``): the item fails, and ``ledger --retry`` runs it
again once the cause is fixed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
from collections.abc import AsyncGenerator, Callable, Iterator, Sequence
from typing import Any, TypeVar

from conveyor import traces
from conveyor.config.steps import Compress, Decompress, StepConfig, Unpack
from conveyor.errors import Permanent, TooLarge
from conveyor.interfaces import Target
from conveyor.payload.payload import Payload, stable_id
from conveyor.payload.spool import Spool
from conveyor.steps.blocking import Gunzip, Gzip, Produced, StepFailed, Unpacker, Work

T = TypeVar("T")


class StepsTarget:
    """The flow's target behind its steps: ``deliver`` returns once every derived payload is delivered."""

    def __init__(self, inner: Target, steps: Sequence[StepConfig], spool: Spool) -> None:
        self.inner = inner
        self._steps = [_Step(i, s, work_for(s, spool)) for i, s in enumerate(steps)]

    def __getattr__(self, name: str) -> Any:
        # probe(), where, and whatever else the daemon asks of the real target
        return getattr(self.inner, name)

    async def deliver(self, payload: Payload) -> None:
        """Run ``payload`` through the steps and deliver what comes out."""
        await self._through(payload, 0)

    async def _through(self, payload: Payload, index: int) -> None:
        if index == len(self._steps):
            await self.inner.deliver(payload)
            return
        step = self._steps[index]
        with traces.span(f"step {step.kind}", payload, "step", f"steps[{index}]") as span:
            async with contextlib.aclosing(step.apply(payload)) as children:
                async for child in children:
                    try:
                        await self._through(child, index + 1)
                    finally:
                        if child.body is not payload.body:  # a pass-through keeps the parent's body
                            child.body.release()
            span.outcome("done")

    async def close(self) -> None:
        """Close the steps (gpg's keyrings), then the target."""
        try:
            for s in self._steps:
                await asyncio.to_thread(s.work.close)
        finally:
            await self.inner.close()


class _Step:
    def __init__(self, index: int, config: StepConfig, work: Work) -> None:
        self.index = index
        self.kind = config.kind
        self.work = work

    async def apply(self, parent: Payload) -> AsyncGenerator[Payload]:
        """The payloads derived from ``parent``, one at a time."""
        stop = threading.Event()
        produced: Iterator[Produced] = iter(())
        try:
            produced = await _in_thread(lambda: self.work.start(parent, stop), stop, _discard)
            while True:
                item = await _in_thread(lambda: next(produced, None), stop, _release)
                if item is None:
                    return
                if item.body is parent.body:
                    yield parent
                    continue
                yield self._derive(parent, item)
        except StepFailed as e:
            raise Permanent(f"steps[{self.index}] {self.kind}: {e}") from None
        except TooLarge as e:
            raise Permanent(f"steps[{self.index}] {self.kind}: {e.message}") from None
        finally:
            stop.set()
            await asyncio.shield(asyncio.to_thread(_discard, produced))

    def _derive(self, parent: Payload, item: Produced) -> Payload:
        entry: dict[str, Any] = {"parent": parent.id, "step": self.index, "kind": self.kind}
        if item.member is not None:
            entry["member"] = item.member
        return dataclasses.replace(
            parent,
            id=stable_id(parent.id, self.index, item.member),
            body=item.body,
            name=item.name,
            folder=parent.folder if item.folder is None else item.folder,
            lineage=(*parent.lineage, entry),
        )


def work_for(config: StepConfig, spool: Spool) -> Work:
    """The work of one configured step."""
    opts = config.options
    if isinstance(opts, Decompress):
        return Gunzip(opts, spool)
    if isinstance(opts, Compress):
        return Gzip(opts, spool)
    if isinstance(opts, Unpack):
        return Unpacker(opts, spool)
    from conveyor.steps.pgp import Decryptor, Encryptor

    return Decryptor(opts, spool) if config.kind == "decrypt" else Encryptor(opts, spool)


def _discard(it: Iterator[Produced]) -> None:
    """End an output iterator early: a generator is closed (its files with it); what a ready
    list still holds is released (its spool files deleted)."""
    close = getattr(it, "close", None)
    if close is not None:
        with contextlib.suppress(ValueError):  # still running on a cancelled step's thread: it ends there
            close()
        return
    for item in it:
        item.body.release()


def _release(item: Produced | None) -> None:
    if item is not None:
        item.body.release()


async def _in_thread(fn: Callable[[], T], stop: threading.Event, orphan: Callable[[T], None]) -> T:
    """``fn()`` on a thread of its own (steps run for minutes: the loop's shared executor stays
    free). When the caller is cancelled, ``stop`` asks the work to end early and ``orphan``
    disposes of whatever it still returns."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if fut.cancelled():
            if error is None:
                orphan(result)  # type: ignore[arg-type]
        elif error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        try:
            result = fn()
        except BaseException as e:
            outcome: tuple[Any, BaseException | None] = (None, e)
        else:
            outcome = (result, None)
        with contextlib.suppress(RuntimeError):  # the loop is gone: the daemon has exited
            loop.call_soon_threadsafe(settle, *outcome)

    threading.Thread(target=run, name="conveyor-step", daemon=True).start()
    try:
        return await fut
    except asyncio.CancelledError:
        stop.set()
        raise
