"""The generic file source: list → match → wait for stability → claim → fetch → deliver → after.

It drives any :class:`~conveyor.interfaces.FileSystem` (local, sftp, ftp). Stability is
judged by observation, not by the clock: a file is taken once its size and mtime were
the same in listings ``min_age`` apart — copies keep old mtimes, so comparing mtime to
now would take a file still being written.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import posixpath
import random
import time
from collections.abc import Callable
from typing import Any

from conveyor import companions, traces
from conveyor.clock import Schedule
from conveyor.config.base import FileSourceConfig
from conveyor.config.types import MoveAction, format_size
from conveyor.errors import TooLarge, Transient
from conveyor.flows.delivery import Deliverer
from conveyor.flows.intake import IntakeGate
from conveyor.flows.partnerfiles import NOTHING, Beside, PartnerFiles
from conveyor.globs import PathSelector
from conveyor.interfaces import ChecksListed, FileSystem, ListingCut, OpensInPlace, RemoteFile, Submit
from conveyor.names import listed_path, normal_path, unsafe_path
from conveyor.payload.body import Body
from conveyor.payload.payload import Payload, stable_id
from conveyor.payload.spool import Spool
from conveyor.payload.timestamps import utc_iso
from conveyor.redact import redact
from conveyor.state.base import SharesClaims, StateStore
from conveyor.status import StatusBoard
from conveyor.stopping import StopSignal
from conveyor.supervisor import RESUME_BACKOFF, retrying

log = logging.getLogger("conveyor.files")
_CHUNK = 500
_RESUMES = 5
_RECHECK = 600.0
"""Seconds between full checks of the files remembered as done against the ledger (a forget
made through another replica, or any change not made through this daemon's ledger API)."""
_CHECKS = 3
"""Downloads of a file whose checksum does not match before it is set aside as failed."""
_CHECKSUM_MAX = 64 * 1024
"""The largest checksum file read (one holds a line per file)."""


@dataclasses.dataclass(frozen=True)
class FileSourceDeps:
    """The daemon's services a file source works with."""

    deliverer: Deliverer
    store: StateStore
    spool: Spool
    status: StatusBoard
    submit: Submit
    """The flow's intake: each file is delivered in a slot it grants."""
    gate: IntakeGate | None = None
    """The free-space floor: no listing while it is shut."""


class FileSource:
    """Polls one folder (or one exact file) of a file instance for a flow."""

    def __init__(
        self,
        *,
        flow: str,
        instance: str,
        instance_type: str,
        fs: FileSystem,
        config: FileSourceConfig,
        deps: FileSourceDeps,
        schedule: Schedule | None = None,
    ) -> None:
        """``schedule``: list at its times instead of every ``poll_interval``."""
        self.flow = flow
        self.instance = instance
        self.instance_type = instance_type
        self.fs = fs
        self.config = config
        self.deliverer = deps.deliverer
        self.store = deps.store
        self.spool = deps.spool
        self.status = deps.status
        self.submit = deps.submit
        self.gate = deps.gate
        self._in_place = fs if isinstance(fs, OpensInPlace) else None
        self._checks = fs if isinstance(fs, ChecksListed) else None
        # Replicas on one store list the same files: each takes them in its own order, so
        # their claims rarely collide on the same file.
        self._shuffle = isinstance(deps.store, SharesClaims) and deps.store.shared
        self._seen: dict[str, tuple[int, float, float]] = {}
        """path -> (size, mtime, first time seen with that size and mtime)"""
        self._reported: set[str] = set()
        """Refused paths already logged and counted; kept only while a listing still shows them."""
        self._refused: set[str] = set()
        """Refused paths the listing in progress showed."""
        self._oversize: dict[str, tuple[int, float]] = {}
        """path -> (size, mtime) of files that turned out larger than ``max_file_size`` while read:
        not fetched again while the listing shows them unchanged."""
        self._cut = False
        """The listing in progress reached ``max_listing_entries``."""
        self._active: set[str] = set()
        """ids being fetched or delivered now: the next listing must not take them again."""
        self._done: dict[str, tuple[int, float, str]] = {}
        """path -> (size, mtime, id) of files the ledger says are done (delivered and kept or
        settled): later listings skip them without hashing an id or asking the ledger, which
        with ``after: keep`` would otherwise cost both for every file of the folder every poll."""
        self._done_since = time.monotonic()
        self.root = config.path  # normal: '.', './' and '/' are all ''
        limits = [(config.max_file_size, "max_file_size")]
        if self._in_place is None and deps.spool.max_bytes is not None:
            limits.append((deps.spool.max_bytes, "spool_max"))  # a bigger file could never be spooled
        known = [(n, why) for n, why in limits if n is not None]
        self._size_limit: tuple[int, str] | None = min(known) if known else None
        """The largest file taken, and the setting that says so."""
        skip = [a.move for a in (config.after, config.on_failure) if isinstance(a, MoveAction)]
        self._skip_dirs = [normal_path(s) for s in skip]
        self._select = Selection(config)
        extra = {"flow": flow, "instance": instance}
        self._partner = (
            PartnerFiles(config, self.root, self._skip_dirs, extra)
            if config.done_file is not None or config.checksum is not None
            else None
        )
        """Done files and checksum files, when the source waits for them."""
        self.schedule = schedule
        self._wake = asyncio.Event()
        """Set by a poll on demand (and by the stop): ends the wait for the next listing."""
        self._unstable = 0
        """Files the last listing saw that were not yet stable."""
        self._failed = False
        """The last listing ended in an error (the supervisor runs :meth:`run` again)."""

    async def run(self, stop: StopSignal) -> None:
        """Poll until the flow stops: every ``poll_interval``, or at the schedule's times, and at
        once when asked (:meth:`poll_now`); the waits are here, retries are the supervisor's."""
        withdraw = stop.on_set(self._wake.set)
        try:
            # A listing that failed is tried again as soon as the supervisor restarts this, not
            # left for the next scheduled time (which may be tomorrow's).
            now = time.time()
            due = now if self.schedule is None or self._failed else self._next_time(now)
            while not stop.is_set():
                await self._until(due)
                if stop.is_set():
                    break
                if self.gate is not None and not await self.gate.wait(stop):
                    break  # stopped while intake was paused
                self._failed = True
                await self.poll()
                self._failed = False
                self.status.polled(self.flow)
                fs = self.status.flows.get(self.flow)
                if fs is not None:
                    fs.state = "running"
                now = time.time()
                due = now + self.config.poll_interval if self.schedule is None else self._next_time(now)
                if self._unstable and self.config.min_age > 0:
                    # Files seen for the first time are taken once they kept still for min_age: list
                    # again then, not at the next scheduled time or interval, which may be far away
                    # (a file would otherwise wait a whole extra poll_interval to be taken).
                    due = min(due, now + self.config.min_age)
        finally:
            withdraw()

    def poll_now(self) -> None:
        """List at once (a poll on demand), whatever the interval or schedule says."""
        self._wake.set()

    def _next_time(self, now: float) -> float:
        assert self.schedule is not None
        due = self.schedule.next_after(now)
        fs = self.status.flows.get(self.flow)
        if fs is not None:
            fs.next_poll = due
        return due

    async def _until(self, due: float) -> bool:
        """Wait until the wall clock reaches ``due``; True when a poll on demand (or the stop) came first.

        Waits at most a minute at a time and looks at the clock again, so a scheduled time is kept
        when the system clock is set or the machine sleeps in between."""
        while True:
            if self._wake.is_set():
                self._wake.clear()
                return True
            left = due - time.time()
            if left <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), min(left, 60.0))

    async def run_once(self, stop: StopSignal) -> None:
        """``run --once``: list until every file there was taken, then return (deliveries may
        still be under way). A file seen changing, or first seen under ``min_age``, is listed
        again once it had time to settle; a listing cut short is followed by another."""
        while not stop.is_set():
            if self.gate is not None and not await self.gate.wait(stop):
                break
            more = await self.poll()
            self.status.polled(self.flow)
            if not more:
                break
            await stop.wait(max(self.config.min_age, 0.05) if self._unstable else 0.05)

    async def poll(self) -> bool:
        """One listing: take every stable, matching file not yet delivered. True when files were
        left for a later listing (not yet stable, or past ``max_files_per_poll`` or the listing cap)."""
        now = time.monotonic()
        if now - self._done_since >= _RECHECK:
            self._done.clear()
            self._done_since = now
        present: set[str] = set()
        ready: list[RemoteFile] = []
        taken = 0
        whole = True
        cap = self.config.max_files_per_poll
        key = self._select.key
        self._refused = set()
        self._cut = False
        self._unstable = 0
        self._select.clock = time.time()
        listing = self._entries(present)
        if self._partner is not None:
            listing = self._partner.released(
                listing,
                stable=lambda c: self._stable(c, now),
                whole=lambda: not self._cut,
                stat=self.fs.stat,
                settle_marker=None if self.config.after == "keep" else self._after,
            )
        async with contextlib.aclosing(listing) as entries:
            async for f in entries:
                done = self._done.get(f.path)
                if done is not None and done[0] == f.size and done[1] == f.mtime:
                    continue  # the same file the ledger said was done (a changed one has a new id)
                if not self._stable(f, now):
                    self._unstable += 1
                    continue
                ready.append(f)
                if key is not None:
                    continue  # all of them first: the order is over the whole listing
                if len(ready) >= _CHUNK:
                    taken += await self._take(ready, cap - taken)
                    ready = []
                if taken >= cap:
                    whole = False
                    break
        if key is not None:
            # Sorted before the cap, so the first max_files_per_poll in that order are the ones taken.
            # The ready files are at most max_listing_entries, the bound the tables here already have.
            ready.sort(key=key)
            while ready and taken < cap:
                taken += await self._take(ready[:_CHUNK], cap - taken)
                ready = ready[_CHUNK:]
        elif ready and taken < cap:
            await self._take(ready, cap - taken)
        # Forget files that disappeared (or lie past the listing cap), so these tables stay as big
        # as the folder, and never bigger than max_listing_entries.
        for table in (self._seen, self._done, self._oversize):
            for path in [p for p in table if p not in present]:
                del table[path]
        if whole and not self._cut:
            # A refused file that went away and comes back is reported again; the set stays bounded.
            self._reported &= self._refused
        elif self._cut:
            self._reported &= present  # a listing without end must not grow it either
        return bool(self._unstable) or not whole or self._cut

    def forgotten(self, id: str) -> None:
        """The ledger dropped ``id`` (``forget``): the next listing takes its file again."""
        for path in [p for p, done in self._done.items() if done[2] == id]:
            del self._done[path]

    async def _entries(self, present: set[str]) -> Any:
        """The acceptable files of the listing; every listed path goes into ``present``."""
        single = await self.fs.stat(self.root) if self.root else None
        if single is not None:
            single = _tidy(single)
            present.add(single.path)
            if self._acceptable(single):
                yield single
            return
        cap = self.config.max_listing_entries
        prune = self._select.descend(self.root)
        if prune is None:
            listing = self.fs.list(self.root, self.config.recursive, max_entries=cap)
        else:
            listing = self.fs.list(self.root, self.config.recursive, max_entries=cap, descend=prune)
        try:
            async for f in listing:
                f = _tidy(f)
                present.add(f.path)
                if self._partner is not None:
                    self._partner.listed(f)
                if self._acceptable(f):
                    yield f
        except ListingCut:
            self._listing_cut(cap)  # the listing is closed below: the rest is never read
        finally:
            aclose = getattr(listing, "aclose", None)  # an async generator: end its session now, not at GC
            if aclose is not None:
                await aclose()

    def _listing_cut(self, cap: int) -> None:
        self._cut = True
        folder = self.root or "/"
        msg = (
            f"the listing of '{folder}' has more than max_listing_entries ({cap}) files: only the first {cap} "
            "are taken this poll (the rest wait for a later one). Raise max_listing_entries, narrow the path, "
            "or have the partner clear the folder"
        )
        self.status.flow_error(self.flow, msg)
        log.warning(msg, extra={"flow": self.flow, "instance": self.instance})

    def _acceptable(self, f: RemoteFile) -> bool:
        rel = f.path
        if any(rel == d or rel.startswith(d + "/") for d in self._skip_dirs):
            return False
        name = f.name
        if name.startswith(".") and name.endswith(".tmp"):
            return False  # someone's upload in progress (ours look like this too)
        if not self.config.matches(name) or not self._select.selects(self.root, f):
            return False  # checked first, so a pattern or rule that leaves a bad entry out silences it
        if f.refused:
            self._refuse(
                rel,
                f"it is {f.refused}",
                "it is never read. Put the file itself there, move this out "
                "of the watched folder, or narrow this source's pattern or regex to leave it out",
            )
            return False
        why = unsafe_path(rel)
        if why:
            self._refuse(
                rel,
                why,
                "it is never written anywhere. Rename it on the server, move it out of the "
                "watched folder, or narrow this source's pattern or regex to leave it out",
            )
            return False
        if self._size_limit is not None and f.size > self._size_limit[0]:
            limit, setting = self._size_limit
            self._refuse(
                rel,
                f"{f.size} bytes is over this source's limit of {format_size(limit)} ({setting})",
                f"it is not fetched while it stays that size. Raise {setting}, or narrow this source's "
                "pattern or regex to leave it out",
            )
            return False
        if self._oversize.get(rel) == (f.size, f.mtime):
            self._refuse(rel, "", "")  # reported when it was read
            return False
        return True

    def _refuse(self, rel: str, why: str, advice: str) -> None:
        """Count and log a refused entry once while listings keep showing it."""
        self._refused.add(rel)
        if rel not in self._reported:
            self._reported.add(rel)
            self.status.refused(self.flow)
            log.error("skipping %r: %s; %s", rel, why, advice, extra={"flow": self.flow, "instance": self.instance})

    def _stable(self, f: RemoteFile, now: float) -> bool:
        prev = self._seen.get(f.path)
        if prev is None or prev[0] != f.size or prev[1] != f.mtime:
            self._seen[f.path] = (f.size, f.mtime, now)
            return self.config.min_age <= 0
        return now - prev[2] >= self.config.min_age

    def file_id(self, f: RemoteFile) -> str:
        """Stable id from instance, path, size and mtime."""
        return stable_id(self.instance, f.path, f.size, round(f.mtime, 3))

    async def _take(self, files: list[RemoteFile], limit: int) -> int:
        ids = {self.file_id(f): f for f in files}
        known = await self.store.get_many(self.flow, list(ids))
        order = list(ids.items())
        if self._shuffle and self._select.key is None:
            random.shuffle(order)
        n = 0
        for pid, f in order:
            if n >= limit:
                break
            if pid in self._active:
                continue
            item = known.get(pid)
            if item is not None and item.state == "failed":
                continue  # set aside until someone retries it through the ledger
            if item is not None and item.state == "delivered" and (item.settled or self.config.after == "keep"):
                self._done[f.path] = (f.size, f.mtime, pid)
                continue
            redo_after = item is not None and item.state == "delivered"
            self._active.add(pid)
            accepted = await self.submit(pid, functools.partial(self._handle, f, pid, redo_after))
            if not accepted:
                self._active.discard(pid)
                break  # flow is stopping
            n += 1
        return n

    async def _handle(self, f: RemoteFile, pid: str, redo_after: bool) -> None:
        info = {"name": f.name, "path": f.path, "size": f.size, "mtime": f.mtime}
        body: Body | None = None
        # Taken now: a later listing rebuilds the table, and our own after action empties it.
        beside = self._partner.of(f.path) if self._partner is not None else NOTHING
        try:

            async def complete() -> None:
                for each in (f, *beside.files()):
                    await self._after(each)

            async def give_up(final: bool) -> None:
                if final and self.config.on_failure is not None:
                    for each in (f, *beside.files()):
                        await self._move(each, self.config.on_failure.move)

            if redo_after:
                await complete()  # delivered before a crash; only the after action was missing
                await self._settle(pid)
                return

            # Claim before downloading: with replicas on one store, only the winner fetches the file.
            settle = self.config.after != "keep"
            item = await self.store.claim(self.flow, pid, info, self.deliverer.lease)
            if item is None:
                known = (await self.store.get_many(self.flow, [pid])).get(pid)
                if known is not None and known.state == "delivered" and known.settled:
                    return  # another replica delivered it and did the after action since our listing
                await self.deliverer.unclaimed(
                    pid, complete=complete, give_up=give_up, settle_after_complete=settle, known=known
                )
                return
            with traces.payload_span(pid, self.flow, f.name, f.size) as root:
                try:
                    with traces.fetch(self.flow, pid, f.name, f.size) as fetch:
                        body = await self._fetch_checked(f, beside)
                        fetch.outcome("fetched")
                except BaseException as e:
                    if isinstance(e, ChecksumMismatch):
                        root.outcome("failed", e.message)
                        await self._mismatch(f, pid, e)
                        return
                    with contextlib.suppress(Exception):
                        await asyncio.shield(self.store.release(self.flow, pid))
                    if isinstance(e, TooLarge):
                        root.outcome("failed", e.message)
                        # Longer than listed, and past the limit: set aside like one listed too large.
                        self._oversize[f.path] = (f.size, f.mtime)
                        self._reported.discard(f.path)
                        self._refuse(f.path, e.message, "it is not fetched again while listed unchanged")
                        return
                    raise
                payload = Payload(
                    id=pid,
                    flow=self.flow,
                    source_instance=self.instance,
                    source_type=self.instance_type,
                    body=body,
                    name=f.name,
                    file={"path": f.path, "mtime": utc_iso(f.mtime)},
                    folder=self._folder_of(f.path),
                    mtime=f.mtime,
                )
                outcome = await self.deliverer.process(
                    payload, info, complete=complete, give_up=give_up, settle_after_complete=settle, claimed=item
                )
                root.outcome(outcome)
            if outcome == "delivered":
                log.info(
                    "delivered %s (%d bytes)",
                    f.path,
                    f.size,
                    extra={"flow": self.flow, "instance": self.instance, "payload_id": pid},
                )
        finally:
            self._active.discard(pid)
            if body is not None:
                body.release()

    async def _settle(self, pid: str) -> None:
        if self.config.after != "keep":
            await self.store.settled(self.flow, pid)

    async def _fetch_checked(self, f: RemoteFile, beside: Beside) -> Body:
        """The file's body, checked against its checksum file when the source asks for one: a
        mismatch is downloaded again (a transfer may have gone wrong, or the partner may still be
        writing the checksum file) before :class:`ChecksumMismatch` ends it."""
        check = self.config.checksum
        if check is None:
            return await self._fetch(f)
        # Where the listing saw it; else (released by an older listing) where it should be.
        path = beside.checksum.path if beside.checksum is not None else companions.beside(f.path, check.template)

        async def once() -> Body:
            body = await self._fetch(f)
            try:
                problem = await self._verify(f, body, path, check.algorithm)
            except BaseException:
                body.release()
                raise
            if problem is not None:
                body.release()
                raise ChecksumMismatch(problem, instance=self.instance, path=f.path)
            return body

        def again(e: Exception, attempt: int, delay: float) -> None:
            log.warning(
                "%s; downloading it again (try %d of %d)",
                e,
                attempt + 1,
                _CHECKS,
                extra={"flow": self.flow, "instance": self.instance},
            )

        return await retrying(
            once,
            RESUME_BACKOFF,
            attempts=_CHECKS,
            what="checksum check",
            retry_if=lambda e: isinstance(e, ChecksumMismatch),
            on_retry=again,
        )

    async def _verify(self, f: RemoteFile, body: Body, path: str, algorithm: companions.Algorithm) -> str | None:
        """Why ``body`` does not match the checksum file at ``path``, or None when it does."""
        listed = await self.fs.stat(path)  # afresh: the partner may have corrected it since the listing
        if listed is None:
            return f"the checksum file {path} of {f.path} is gone"
        if listed.size > _CHECKSUM_MAX:
            return f"{path} is {listed.size} bytes: too large for a checksum file"
        sink = self.spool.writer(limit=_CHECKSUM_MAX, what="the checksum file limit")
        try:
            await self.fs.download(listed, sink)
            text = sink.finish()
        except BaseException:
            sink.abort()
            raise
        try:
            data = text.data() if text.in_memory else await asyncio.to_thread(_read, text)
        finally:
            text.release()
        want = companions.expected_digest(data.decode("utf-8", "replace"), f.name, algorithm)
        if want is None:
            return f"{path} holds no {algorithm} checksum of {f.name}"
        got = await companions.digest(body, algorithm)
        if got != want:
            return f"the {algorithm} of {f.path} is {got}, but {path} says {want}"
        return None

    async def _mismatch(self, f: RemoteFile, pid: str, e: ChecksumMismatch) -> None:
        """Set a file whose checksum never matched aside as failed; it stays where it is (and so
        do its companions) for the partner to send again."""
        msg = (
            f"{e.message} after {_CHECKS} downloads; the file is left in place and set aside as failed. "
            "A corrected file (another size or mtime) is taken anew; to take this one again, correct "
            "its checksum file and retry it (conveyor ledger FLOW --retry ID)"
        )
        await self.store.failed(self.flow, pid, msg, final=True)
        self.status.delivery_started(self.flow, pid)
        self.status.delivery_ended(self.flow, pid, "failed", f.size)
        self.status.flow_error(self.flow, msg)
        log.error(msg, extra={"flow": self.flow, "instance": self.instance, "payload_id": pid})

    async def _fetch(self, f: RemoteFile) -> Body:
        limit = self.config.max_file_size
        if self._in_place is not None:
            body = await self._in_place.open_in_place(f, self.spool.threshold)
            if limit is not None and body.size > limit:
                body.release()
                raise TooLarge(
                    f"{body.size} bytes when opened, over max_file_size ({format_size(limit)})",
                    instance=self.instance,
                    path=f.path,
                )
            return body
        # The writer stops at the limit, whatever the listing said: a server may send more than it listed.
        sink = self.spool.writer(limit=limit, what="max_file_size")

        def resumable(e: Exception) -> bool:
            # A dropped connection mid-file: resume at the offset we have, not from zero
            # (unless the spool itself failed: then what we have is not on disk).
            return isinstance(e, Transient) and not sink.failed

        def resume(e: Exception, attempt: int, delay: float) -> None:
            log.warning(
                "download of %s interrupted at %d bytes: %s; resuming",
                f.path,
                sink.size,
                redact(str(e)),
                extra={"flow": self.flow, "instance": self.instance},
            )

        try:
            await retrying(
                lambda: self.fs.download(f, sink),
                RESUME_BACKOFF,
                attempts=_RESUMES,
                what="download",
                retry_if=resumable,
                on_retry=resume,
            )
            if sink.size != f.size:
                raise Transient(
                    f"{f.path} changed while downloading ({sink.size} bytes, listed {f.size})",
                    instance=self.instance,
                    path=f.path,
                )
            return sink.finish()
        except BaseException:
            sink.abort()
            raise

    def _folder_of(self, path: str) -> str:
        """The folder of a listed file below the source's path: a target's ``{path}``."""
        under = path[len(self.root) + 1 :] if self.root and path.startswith(self.root + "/") else path
        return posixpath.dirname(under) if under != self.root else ""

    def _moved(self, folder: str, path: str) -> str:
        rel = path[len(self.root) + 1 :] if self.root and path.startswith(self.root + "/") else posixpath.basename(path)
        return posixpath.join(normal_path(folder), rel)

    async def _after(self, f: RemoteFile) -> None:
        after = self.config.after
        if after == "delete":
            if self._checks is None:
                await self.fs.remove(f.path)
            elif not await self._checks.remove_listed(f):
                self._left(f, "deleted")
        elif isinstance(after, MoveAction):
            await self._move(f, after.move)
        self._seen.pop(f.path, None)

    async def _move(self, f: RemoteFile, folder: str) -> None:
        dst = self._moved(folder, f.path)
        if self._checks is None:
            await self.fs.rename(f.path, dst)
        elif not await self._checks.rename_listed(f, dst):
            self._left(f, "moved")

    def _left(self, f: RemoteFile, done: str) -> None:
        # What the name holds now was never read: it is not ours to delete or move. A new file or
        # version there has its own id and is taken by a later listing.
        log.warning(
            "%s was not %s: its name no longer holds the file that was read (replaced, changed or "
            "removed since the listing)",
            f.path,
            done,
            extra={"flow": self.flow, "instance": self.instance},
        )


class Selection:
    """A source's include / exclude, size, age and depth limits and order, compiled once."""

    def __init__(self, config: FileSourceConfig) -> None:
        self.paths = PathSelector(config.include, config.exclude)
        self.by_path = bool(self.paths) or config.max_depth is not None
        """Whether the relative path is checked at all (not when it is only ``pattern`` or ``regex``)."""
        self._match = self.paths.matches if self.paths else None
        self.min_size = config.min_size
        self.max_size = config.max_size
        self.max_age = config.max_age
        self.max_depth = config.max_depth
        self.clock = 0.0
        """Wall-clock time of the poll in progress, for ``max_age`` (file mtimes are wall-clock too)."""
        self.key: Callable[[RemoteFile], Any] | None = _ORDERS[config.order] if config.order else None
        """Sort key of the files taken in one poll, or None to take them as listed."""

    def selects(self, root: str, f: RemoteFile) -> bool:
        """Whether a file listed under the source folder ``root`` passes every rule here (the
        name's ``pattern`` / ``regex`` are the config's own)."""
        if self.by_path:
            if not root:
                rel = f.path
            elif f.path.startswith(root + "/"):
                rel = f.path[len(root) + 1 :]
            else:
                rel = posixpath.basename(f.path)  # the source is this one exact file
            if not self.path_matches(rel):
                return False
        return self.file_matches(f)

    def path_matches(self, rel: str) -> bool:
        """Whether the path relative to the source folder passes include, exclude and max_depth."""
        if self.max_depth is not None and rel.count("/") > self.max_depth:
            return False
        return self._match is None or self._match(rel)

    def file_matches(self, f: RemoteFile) -> bool:
        """Whether a listed file passes the size and age limits (left alone quietly otherwise)."""
        if self.min_size is not None and f.size < self.min_size:
            return False
        if self.max_size is not None and f.size > self.max_size:
            return False
        return self.max_age is None or self.clock - f.mtime <= self.max_age

    def descend(self, root: str) -> Callable[[str], bool] | None:
        """Which sub-folders (paths relative to the instance root) a listing of ``root`` goes into;
        None when it goes into all of them."""
        if self.max_depth is None and not self.paths:
            return None
        skip = len(root) + 1 if root else 0

        def into(folder: str) -> bool:
            rel = folder[skip:]
            if self.max_depth is not None and rel.count("/") + 1 > self.max_depth:
                return False  # its files would be deeper than max_depth
            return self.paths.may_hold(rel)

        return into


_ORDERS: dict[str, Callable[[RemoteFile], Any]] = {
    "oldest": lambda f: (f.mtime, f.path),
    "newest": lambda f: (-f.mtime, f.path),
    "name": lambda f: f.path,
    "size": lambda f: (f.size, f.path),
}


class ChecksumMismatch(Transient):
    """A downloaded file does not match its checksum file: worth another download or two (a
    transfer gone wrong, a partner still writing); then the file fails for good."""


def _read(body: Body) -> bytes:
    assert body.path is not None
    return body.path.read_bytes()


def _tidy(f: RemoteFile) -> RemoteFile:
    """``f`` with its path in the one spelling ids and names are checked on (``./a.txt`` → ``a.txt``)."""
    path = listed_path(f.path)
    return f if path == f.path else dataclasses.replace(f, path=path)
