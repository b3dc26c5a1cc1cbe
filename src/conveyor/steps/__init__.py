"""A flow's steps at run time: :class:`StepsTarget` wraps the flow's target.

The deliverer hands the wrapper one payload (one ledger item) at a time; the wrapper runs it
through the steps and delivers every payload derived from it to the real target before
``deliver`` returns, so the source's item is settled only once all of them are delivered.
Each step is an async iterator of payloads per input: one for ``decompress``, ``compress``,
``decrypt`` and ``encrypt``, one per member for ``unpack``. Members are produced one at a time
and each is delivered (and its spool file released) before the next is read, so an archive of
any size needs room for one member at once. The blocking work (inflating, reading archives,
gpg) runs on a thread of its own per step run, never on the event loop.

A derived payload's id is ``stable_id(parent id, step index, member)`` (for ``split``, the
index of its first record), its name follows the step (``x.csv.gz`` → ``x.csv``), and its
``lineage`` names the parent: a redo after a crash derives the same ids and names.

``split`` is the one step that records progress: after its messages are confirmed, how many
records of its input are done goes to the state store (every :data:`PROGRESS_EVERY` messages or
:data:`PROGRESS_SECONDS`, and when the split ends or stops), and a redo of the item (after a crash,
a transient failure, or ``ledger --retry``) goes on from there. A crash re-sends at most the
messages confirmed since the last record, under the same ids, for consumers to drop.

A step that cannot do its work raises :class:`Permanent` naming the step (``steps[1] decrypt:
...``): the item fails, and ``ledger --retry`` runs it again once the cause is fixed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import itertools
import logging
import threading
import time
from collections.abc import AsyncGenerator, Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from conveyor import traces
from conveyor.config.steps import Collect, Compress, Decompress, Split, StepConfig, Unpack
from conveyor.errors import Permanent, TooLarge
from conveyor.interfaces import Target
from conveyor.payload.payload import Payload, stable_id
from conveyor.payload.spool import Spool
from conveyor.state.base import Progress, StateStore
from conveyor.steps.blocking import Gunzip, Gzip, Produced, StepFailed, Unpacker, Work
from conveyor.steps.split import Batch, Splitter

if TYPE_CHECKING:
    from conveyor.steps.collect import Collector

T = TypeVar("T")

log = logging.getLogger("conveyor.steps")

PROGRESS_EVERY = 100
"""A split records its progress after this many confirmed messages..."""
PROGRESS_SECONDS = 1.0
"""... or once this long has passed since the last record, whichever comes first."""
SPLIT_AHEAD = 64
"""Messages a split reads ahead per trip to its thread (held in memory until delivered)."""
SPLIT_WINDOW = 32
"""Messages of a split in delivery at once: a redo after a crash may also re-send these."""

CONTENT_TYPES = {
    "lines": "text/plain",
    "ndjson": "application/x-ndjson",
    "csv": "text/csv",
    "json_array": "application/json",
}


@dataclasses.dataclass(frozen=True)
class ProgressBook:
    """Where a flow's splits record their progress: the state store, under (flow, item id, target)."""

    store: StateStore
    flow: str
    target: str
    """The target's name in the ledger ('' for a flow's one ``target:``)."""


class StepsTarget:
    """The flow's target behind its steps: ``deliver`` returns once every derived payload is delivered."""

    def __init__(
        self,
        inner: Target,
        steps: Sequence[StepConfig],
        spool: Spool,
        book: ProgressBook | None = None,
        timezone: str | None = None,
    ) -> None:
        """``timezone``: the flow's zone, in which a collect step's ``{batch_start}`` is written."""
        self.inner = inner
        self._book = book
        self._collector: Collector | None = None
        first = steps[0].options if steps else None
        if isinstance(first, Collect):
            from conveyor.steps.collect import TARGET_KEY, Collector, Manifests

            manifests = None if book is None else Manifests(book.store, book.flow, TARGET_KEY + book.target)
            self._collector = Collector(first, 0, spool, manifests, self.after_collect, timezone)
        self._steps = [_Step(i, s, work_for(s, spool)) for i, s in enumerate(steps)]

    def __getattr__(self, name: str) -> Any:
        # probe(), where, and whatever else the daemon asks of the real target
        return getattr(self.inner, name)

    async def deliver(self, payload: Payload) -> None:
        """Run ``payload`` through the steps and deliver what comes out (a collect step: once the
        file of the batch it joined is delivered)."""
        if self._collector is not None:
            await self._collector.add(payload)
            return
        await self._through(payload, 0, payload.id)

    @property
    def collector(self) -> Collector | None:
        """The collect step that gathers the flow's messages, if its first step is one."""
        return self._collector

    async def after_collect(self, payload: Payload) -> None:
        """Deliver a collect step's file through the steps after it."""
        await self._through(payload, 1, payload.id)

    def stopping(self) -> None:
        """The flow takes no more work: a collect step writes its partial batches now."""
        if self._collector is not None:
            self._collector.stopping()

    async def _through(self, payload: Payload, index: int, item: str) -> None:
        if index == len(self._steps):
            await self.inner.deliver(payload)
            return
        step = self._steps[index]
        with traces.span(f"step {step.kind}", payload, "step", f"steps[{index}]") as span:
            if step.kind == "split":
                await self._split(payload, index, item)
            else:
                async with contextlib.aclosing(step.apply(payload)) as children:
                    async for child in children:
                        try:
                            await self._through(child, index + 1, item)
                        finally:
                            if child.body is not payload.body:  # a pass-through keeps the parent's body
                                child.body.release()
            span.outcome("done")

    async def _split(self, parent: Payload, index: int, item: str) -> None:
        """Deliver ``parent``'s messages from the last recorded position on, recording progress."""
        book = self._book
        done = 0
        if book is not None:
            p = await book.store.progress(book.flow, item, book.target)
            if p is not None and p.mark == parent.id:  # else: progress through another input of the item
                done = p.position
        recorder = _Recorder(book, item, parent.id, done)
        # Up to SPLIT_WINDOW messages are in delivery at once (their confirms pipelined, as the
        # target allows for its max_in_flight); they are counted done in order, so the recorded
        # position only ever covers messages that are all confirmed.
        sending: collections.deque[tuple[asyncio.Task[None], int]] = collections.deque()
        try:
            async with contextlib.aclosing(self._steps[index].apply(parent, skip=done)) as children:
                async for child in children:
                    entry = child.lineage[-1]
                    task = asyncio.create_task(self._through(child, index + 1, item))
                    sending.append((task, entry["record"] + entry["records"]))
                    while sending and (len(sending) >= SPLIT_WINDOW or sending[0][0].done()):
                        await self._confirmed(sending, recorder)
            while sending:
                await self._confirmed(sending, recorder)
        finally:
            for task, _ in sending:
                task.cancel()
            await asyncio.gather(*(t for t, _ in sending), return_exceptions=True)
            await asyncio.shield(recorder.flush())

    @staticmethod
    async def _confirmed(sending: collections.deque[tuple[asyncio.Task[None], int]], recorder: _Recorder) -> None:
        """Wait for the oldest message in delivery and count it done."""
        task, end = sending[0]
        await task
        sending.popleft()
        await recorder.advance(end)

    async def close(self) -> None:
        """Close the steps (gpg's keyrings), then the target."""
        try:
            if self._collector is not None:
                await self._collector.close()
            for s in self._steps:
                await asyncio.to_thread(s.work.close)
        finally:
            await self.inner.close()


class _Step:
    def __init__(self, index: int, config: StepConfig, work: Work) -> None:
        self.index = index
        self.kind = config.kind
        self.work = work

    async def apply(self, parent: Payload, skip: int = 0) -> AsyncGenerator[Payload]:
        """The payloads derived from ``parent``, one at a time (a split's from record ``skip`` on)."""
        stop = threading.Event()
        produced: Iterator[Produced] = iter(())
        # A split's messages are small and in memory: fetched several per thread trip. Other
        # steps' outputs are spool files, taken one at a time so the spool holds one of them.
        ahead = SPLIT_AHEAD if isinstance(self.work, Splitter) else 1
        try:
            produced = await _in_thread(lambda: self._start(parent, stop, skip), stop, _discard)
            while True:
                items = await _in_thread(lambda: list(itertools.islice(produced, ahead)), stop, _release)
                if not items:
                    return
                for item in items:
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

    def _start(self, parent: Payload, stop: threading.Event, skip: int) -> Iterator[Produced]:
        if isinstance(self.work, Splitter):
            return self.work.batches(parent, stop, skip)
        return self.work.start(parent, stop)

    def _derive(self, parent: Payload, item: Produced) -> Payload:
        entry: dict[str, Any] = {"parent": parent.id, "step": self.index, "kind": self.kind}
        position: object = item.member
        content_type = parent.content_type
        if item.member is not None:
            entry["member"] = item.member
        if isinstance(item, Batch):
            entry["record"] = item.first
            entry["records"] = item.count
            position = ("record", item.first)
            assert isinstance(self.work, Splitter)
            content_type = CONTENT_TYPES[self.work.config.format]
        return dataclasses.replace(
            parent,
            id=stable_id(parent.id, self.index, position),
            body=item.body,
            name=item.name,
            content_type=content_type,
            folder=parent.folder if item.folder is None else item.folder,
            lineage=(*parent.lineage, entry),
        )


class _Recorder:
    """A split's progress, written to the state store every so many confirmed messages."""

    def __init__(self, book: ProgressBook | None, item: str, mark: str, done: int) -> None:
        self.book = book
        self.item = item
        self.mark = mark
        self.recorded = self.position = done
        self.unrecorded = 0
        self.since = time.monotonic()

    async def advance(self, position: int) -> None:
        """Records up to ``position`` are confirmed."""
        self.position = position
        self.unrecorded += 1
        if self.unrecorded >= PROGRESS_EVERY or time.monotonic() - self.since >= PROGRESS_SECONDS:
            await self._write()

    async def flush(self) -> None:
        """Record what is confirmed and not recorded yet (the split ended or stopped)."""
        if self.position == self.recorded:
            return
        try:
            await self._write()
        except Exception as e:  # the split's own outcome matters more; a redo re-sends a little more
            log.warning("recording split progress of %s failed: %s", self.item, e)

    async def _write(self) -> None:
        if self.book is not None:
            b = self.book
            await b.store.set_progress(b.flow, self.item, b.target, Progress(self.mark, self.position))
        self.recorded = self.position
        self.unrecorded = 0
        self.since = time.monotonic()


def work_for(config: StepConfig, spool: Spool) -> Work:
    """The work of one configured step."""
    opts = config.options
    if isinstance(opts, Decompress):
        return Gunzip(opts, spool)
    if isinstance(opts, Compress):
        return Gzip(opts, spool)
    if isinstance(opts, Unpack):
        return Unpacker(opts, spool)
    if isinstance(opts, Split):
        return Splitter(opts)
    if isinstance(opts, Collect):
        return _Passing()
    from conveyor.steps.pgp import Decryptor, Encryptor

    return Decryptor(opts, spool) if config.kind == "decrypt" else Encryptor(opts, spool)


class _Passing:
    """The work of a collect step in the list of steps: the collector does it, before them."""

    def start(self, parent: Payload, stop: threading.Event) -> Iterator[Produced]:
        return iter([Produced(parent.body, parent.name)])

    def close(self) -> None:
        pass


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


def _release(items: list[Produced]) -> None:
    for item in items:
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
