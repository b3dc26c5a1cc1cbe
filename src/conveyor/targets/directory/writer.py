"""Writer threads, shared by every directory target, that stage, sync and publish small bodies
in batches.

Messages arrive by the thousand per second; giving each its own thread hop, its own fsync
and its own wake-up of the event loop would cost more than the write. A writer thread takes
every job queued since its last round, writes each body and sidecar under a temporary
name, makes them durable with one ``syncfs`` per folder, renames them all into place, syncs
once more (that sync shared with the next round's bytes), and resolves the whole batch with
one call into the event loop.

The threads are a fixed pool (:data:`THREADS` per event loop), not one per folder: a daemon
with a thousand target folders would otherwise hold a thousand threads. Each folder's writer
keeps to one thread of the pool, so its jobs are staged and published in the order they came.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import Callable
from typing import Protocol

from conveyor.batched import Handoff, Worker, resolve_all


class Staged(Protocol):
    """A job whose temporary files are written: renamed into place, or removed."""

    def publish(self) -> None:
        """Rename the temporary files into place."""

    def discard(self) -> None:
        """Remove the temporary files (the job will not be published)."""


Stage = Callable[[], Staged | None]
"""Writes temporaries; returns what to publish, or None when nothing is to publish."""

_Job = tuple["BatchWriter", Stage, asyncio.Future[None]]
_Staged = tuple[asyncio.Future[None], Staged]
_Result = tuple[asyncio.Future[None], None, BaseException | None]

THREADS = 8
"""Writer threads per event loop, whatever the number of directory targets."""


class _Slot:
    """One thread of the pool and how many writers are placed on it."""

    def __init__(self, name: str) -> None:
        self.worker: Worker[_Job] = Worker(name, _work)
        self.writers = 0


_POOLS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, list[_Slot]] = weakref.WeakKeyDictionary()


def _place() -> _Slot:
    """The running loop's thread with the fewest writers on it."""
    loop = asyncio.get_running_loop()
    pool = _POOLS.get(loop)
    if pool is None:
        pool = _POOLS[loop] = [_Slot(f"conveyor-dir-{i}") for i in range(THREADS)]
    slot = min(pool, key=lambda s: s.writers)
    slot.writers += 1
    return slot


class BatchWriter:
    """Runs stage/publish jobs for one folder, in order, on one thread of the shared pool."""

    def __init__(self, name: str, sync: Callable[[], None] | None) -> None:
        """``name`` names the folder; ``sync`` makes the folder's writes durable (None: no syncs)."""
        self.name = name
        self.sync = sync
        self._slot: _Slot | None = None

    async def run(self, stage: Stage) -> None:
        """Stage, sync, publish, sync; returns once this job's files are durable in place."""
        if self._slot is None:
            self._slot = _place()
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._slot.worker.submit((self, stage, fut))
        await fut

    def close(self) -> None:
        """Leave the pool: what is queued is still done; a thread left with no writer ends."""
        slot, self._slot = self._slot, None
        if slot is not None:
            slot.writers -= 1
            if slot.writers == 0:
                slot.worker.close()

    def _round(
        self, batch: list[tuple[Stage, asyncio.Future[None]]], carry: list[_Staged]
    ) -> tuple[list[_Result], list[_Staged]]:
        """One round for this folder: stage ``batch``, rename ``carry`` (staged and synced last
        round), one sync; the jobs resolved and those to rename next round."""
        results: list[_Result] = []
        staged: list[_Staged] = []
        for stage, fut in batch:
            try:
                step = stage()
                if step is None:
                    results.append((fut, None, None))
                else:
                    staged.append((fut, step))
            except BaseException as e:
                results.append((fut, None, e))
        if self.sync is None:
            carry, staged = carry + staged, []  # nothing to wait for: publish at once
        renamed: list[asyncio.Future[None]] = []
        for fut, step in carry:
            try:
                step.publish()
                renamed.append(fut)
            except BaseException as e:
                results.append((fut, None, e))
        try:
            if self.sync is not None and (renamed or staged):
                self.sync()
            results.extend((f, None, None) for f in renamed)
            return results, staged
        except BaseException as e:
            results.extend((f, None, e) for f in renamed)
            results.extend((f, None, e) for f, _ in staged)
            for _, step in staged:
                with contextlib.suppress(Exception):  # the sync's error is the one to report
                    step.discard()
            return results, []


def _work(handoff: Handoff[_Job], loop: asyncio.AbstractEventLoop) -> None:
    """Rounds of: per folder, stage the new jobs, rename the previous round's, one sync; then
    resolve every folder's jobs of the round at once.

    Pipelining the two syncs a delivery needs (bytes before names, names before "delivered")
    across consecutive rounds halves the syncs under load: one ``syncfs`` makes the previous
    round's renames durable *and* this round's bytes. A lone job still waits for two syncs.
    """
    carry: dict[BatchWriter, list[_Staged]] = {}  # per folder, staged and synced last round
    stop = False
    while not stop or carry:
        batch: list[_Job] = []
        if not stop:
            batch, stop = handoff.take(block=not carry)
        jobs: dict[BatchWriter, list[tuple[Stage, asyncio.Future[None]]]] = {w: [] for w in carry}
        for writer, stage, fut in batch:
            jobs.setdefault(writer, []).append((stage, fut))
        results: list[_Result] = []
        carried = carry
        carry = {}
        for writer, todo in jobs.items():
            done, staged = writer._round(todo, carried.get(writer, []))
            results.extend(done)
            if staged:
                carry[writer] = staged
        if results:
            with contextlib.suppress(RuntimeError):  # the loop closed under us: nobody waits
                loop.call_soon_threadsafe(resolve_all, results)
