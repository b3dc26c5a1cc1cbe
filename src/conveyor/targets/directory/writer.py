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

_Job = tuple[Stage, asyncio.Future[None]]
_Staged = tuple[asyncio.Future[None], Staged]


class BatchWriter:
    """Runs stage/publish jobs for one folder on a dedicated thread, in batches."""

    def __init__(self, name: str, sync: Callable[[], None] | None) -> None:
        """``name`` names the thread; ``sync`` makes the folder's writes durable (None: no syncs)."""
        self.sync = sync
        self._worker: Worker[_Job] = Worker(f"conveyor-dir:{name}", self._work)

    async def run(self, stage: Stage) -> None:
        """Stage, sync, publish, sync; returns once this job's files are durable in place."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._worker.submit((stage, fut))
        await fut

    def close(self) -> None:
        """Let the thread finish what is queued and end."""
        self._worker.close()

    def _work(self, handoff: Handoff[_Job], loop: asyncio.AbstractEventLoop) -> None:
        """Rounds of: stage the new jobs, rename the previous round's, one sync, resolve.

        Pipelining the two syncs a delivery needs (bytes before names, names before
        "delivered") across consecutive rounds halves the syncs under load: one ``syncfs``
        makes the previous round's renames durable *and* this round's bytes. A lone job
        still waits for two syncs, as before.
        """
        carry: list[_Staged] = []  # staged and synced last round: to rename this round
        stop = False
        while not stop or carry:
            batch: list[_Job] = []
            if not stop:
                batch, stop = handoff.take(block=not carry)
            results: list[tuple[asyncio.Future[None], None, BaseException | None]] = []
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
                carry = staged
            except BaseException as e:
                results.extend((f, None, e) for f in renamed)
                results.extend((f, None, e) for f, _ in staged)
                for _, step in staged:
                    with contextlib.suppress(Exception):  # the sync's error is the one to report
                        step.discard()
                carry = []
            if results:
                with contextlib.suppress(RuntimeError):  # the loop closed under us: nobody waits
                    loop.call_soon_threadsafe(resolve_all, results)
