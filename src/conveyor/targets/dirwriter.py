"""A writer thread per target folder that stages, syncs and publishes small bodies in batches.

Messages arrive by the thousand per second; giving each its own thread hop, its own fsync
and its own wake-up of the event loop would cost more than the write. The writer takes
every job queued since its last round, writes each body and sidecar under a temporary
name, makes them durable with one ``syncfs``, renames them all into place, syncs once
more, and resolves the whole batch with one call into the event loop.
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


class BatchWriter:
    """Runs stage/publish jobs for one folder on a dedicated thread, in batches."""

    def __init__(self, folder: Path, fsync: bool) -> None:
        self.folder = folder
        self.fsync = fsync
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
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
        self._jobs.put((stage, fut))
        await fut

    def close(self) -> None:
        """Let the thread finish what is queued and end."""
        if self._thread is not None:
            self._jobs.put(None)
            self._thread = None

    def _work(self) -> None:
        loop = self._loop
        assert loop is not None
        while True:
            first = self._jobs.get()
            if first is None:
                return
            batch = [first]
            while True:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    self._jobs.put(None)  # finish this batch, then stop
                    break
                batch.append(job)
            results: list[tuple[asyncio.Future[None], BaseException | None]] = []
            publish: list[tuple[asyncio.Future[None], Callable[[], None]]] = []
            for stage, fut in batch:
                try:
                    step = stage()
                    if step is None:
                        results.append((fut, None))
                    else:
                        publish.append((fut, step))
                except BaseException as e:
                    results.append((fut, e))
            if publish:
                try:
                    if self.fsync:
                        sync_folder(self.folder)
                    done = []
                    for fut, step in publish:
                        try:
                            step()
                            done.append(fut)
                        except BaseException as e:
                            results.append((fut, e))
                    if self.fsync:
                        sync_folder(self.folder)
                    results.extend((f, None) for f in done)
                except BaseException as e:
                    results.extend((f, e) for f, _ in publish)
            with contextlib.suppress(RuntimeError):  # the loop closed under us: nobody waits
                loop.call_soon_threadsafe(_resolve, results)


def _resolve(results: list[tuple[asyncio.Future[None], BaseException | None]]) -> None:
    for fut, exc in results:
        if fut.done():
            continue
        if exc is None:
            fut.set_result(None)
        else:
            fut.set_exception(exc)

