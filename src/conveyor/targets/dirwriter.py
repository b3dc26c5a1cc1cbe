"""A writer thread per target folder that stages, syncs and publishes small bodies in batches.

Messages arrive by the thousand per second; giving each its own thread hop, its own fsync
and its own wake-up of the event loop would cost more than the write. The writer takes
every job queued since its last round, writes each body and sidecar under a temporary
name, makes them durable with one ``syncfs``, renames them all into place, syncs once
more (that sync shared with the next round's bytes), and resolves the whole batch with one
call into the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from pathlib import Path

from conveyor.targets.fsync import sync_folder

Stage = Callable[[], Callable[[], None] | None]
"""Writes temporaries; returns the publish step (renames), or None when nothing is to publish."""

_Job = tuple[Stage, asyncio.Future[None]]
_Staged = tuple[asyncio.Future[None], Callable[[], None]]


class BatchWriter:
    """Runs stage/publish jobs for one folder on a dedicated thread, in batches."""

    def __init__(self, folder: Path, fsync: bool) -> None:
        self.folder = folder
        self.fsync = fsync
        self._jobs: queue.SimpleQueue[list[_Job] | None] = queue.SimpleQueue()
        self._tick: list[_Job] = []
        """Jobs of this event-loop turn, handed to the thread in one put (one wake-up) at its end."""
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def run(self, stage: Stage) -> None:
        """Stage, sync, publish, sync; returns once this job's files are durable in place."""
        loop = asyncio.get_running_loop()
        if self._thread is None or self._loop is not loop or not self._thread.is_alive():
            self._loop = loop
            self._thread = threading.Thread(target=self._work, name=f"conveyor-dir:{self.folder.name}", daemon=True)
            self._thread.start()
        fut: asyncio.Future[None] = loop.create_future()
        if not self._tick:
            loop.call_soon(self._hand_over)
        self._tick.append((stage, fut))
        await fut

    def _hand_over(self) -> None:
        jobs, self._tick = self._tick, []
        if jobs:
            self._jobs.put(jobs)

    def close(self) -> None:
        """Let the thread finish what is queued and end."""
        if self._thread is not None:
            self._hand_over()
            self._jobs.put(None)
            self._thread = None

    def _work(self) -> None:
        """Rounds of: stage the new jobs, rename the previous round's, one sync, resolve.

        Pipelining the two syncs a delivery needs (bytes before names, names before
        "delivered") across consecutive rounds halves the syncs under load: one ``syncfs``
        makes the previous round's renames durable *and* this round's bytes. A lone job
        still waits for two syncs, as before.
        """
        loop = self._loop
        assert loop is not None
        carry: list[_Staged] = []  # staged and synced last round: to rename this round
        stop = False
        while not stop or carry:
            batch: list[_Job] = []
            if not stop:
                stop = self._gather(batch, block=not carry)
            results: list[tuple[asyncio.Future[None], BaseException | None]] = []
            staged: list[_Staged] = []
            for stage, fut in batch:
                try:
                    step = stage()
                    if step is None:
                        results.append((fut, None))
                    else:
                        staged.append((fut, step))
                except BaseException as e:
                    results.append((fut, e))
            if not self.fsync:
                carry, staged = carry + staged, []  # nothing to wait for: publish at once
            renamed: list[asyncio.Future[None]] = []
            for fut, step in carry:
                try:
                    step()
                    renamed.append(fut)
                except BaseException as e:
                    results.append((fut, e))
            try:
                if self.fsync and (renamed or staged):
                    sync_folder(self.folder)
                results.extend((f, None) for f in renamed)
                carry = staged
            except BaseException as e:
                results.extend((f, e) for f in renamed)
                results.extend((f, e) for f, _ in staged)
                carry = []
            if results:
                with contextlib.suppress(RuntimeError):  # the loop closed under us: nobody waits
                    loop.call_soon_threadsafe(_resolve, results)

    def _gather(self, batch: list[_Job], *, block: bool) -> bool:
        """Take every job queued (waiting for one when ``block``); True once asked to stop."""
        if block:
            first = self._jobs.get()
            if first is None:
                return True
            batch.extend(first)
        while True:
            try:
                jobs = self._jobs.get_nowait()
            except queue.Empty:
                return False
            if jobs is None:
                return True
            batch.extend(jobs)


def _resolve(results: list[tuple[asyncio.Future[None], BaseException | None]]) -> None:
    for fut, exc in results:
        if fut.done():
            continue
        if exc is None:
            fut.set_result(None)
        else:
            fut.set_exception(exc)

