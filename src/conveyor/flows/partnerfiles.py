"""A file source's done files and checksum files: which data files a listing releases, and
which listed files are companions (never payloads).

A file is released once its done file is listed, no older than the file itself (so a marker
left from an earlier file of the same name releases nothing), and its checksum file (when one
is asked for) has kept its size and mtime for ``min_age``. A fixed-name done file releases the
files of its own folder not newer than itself; once a whole listing shows none of them left,
it gets the after action itself.
"""

from __future__ import annotations

import contextlib
import logging
import posixpath
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from conveyor import companions
from conveyor.config.base import FileSourceConfig
from conveyor.errors import ConveyorError
from conveyor.interfaces import RemoteFile
from conveyor.redact import redact

log = logging.getLogger("conveyor.files")


@dataclass(frozen=True)
class Beside:
    """A data file's own companions, as listed when it was released."""

    checksum: RemoteFile | None = None
    marker: RemoteFile | None = None
    """Its per-file done file (a per-folder one is settled on its own)."""

    def files(self) -> list[RemoteFile]:
        """In after-action order: the checksum file, then the done file (the partner's signal, last)."""
        return [c for c in (self.checksum, self.marker) if c is not None]


NOTHING = Beside()


class PartnerFiles:
    """What a source's ``done_file`` and ``checksum`` say about one listing."""

    def __init__(self, config: FileSourceConfig, root: str, skip_dirs: list[str], extra: dict[str, str]) -> None:
        self.root = root
        self._extra = extra
        self.done = config.done_file
        self.per_file = self.done is not None and companions.per_file(self.done)
        self.checksum = config.checksum.template if config.checksum is not None else None
        self._shapes = [companions.shape(t) for t in (self.done, self.checksum) if t is not None]
        self._skip_dirs = skip_dirs
        self._listing: dict[str, RemoteFile] = {}
        self._beside: dict[str, Beside] = {}
        """Data path -> its companions, from the last listing that released it."""

    def is_companion(self, name: str) -> bool:
        """Whether a file of this name is a done or checksum file, never a payload."""
        return any(s.fullmatch(name) for s in self._shapes)

    def listed(self, f: RemoteFile) -> None:
        """A file the listing in progress shows (any name: done files need not match the pattern)."""
        if not any(f.path == d or f.path.startswith(d + "/") for d in self._skip_dirs):
            self._listing[f.path] = f

    def of(self, path: str) -> Beside:
        """The companions of the data file at ``path`` as last released."""
        return self._beside.get(path, NOTHING)

    async def released(
        self,
        entries: AsyncGenerator[RemoteFile, None],
        *,
        stable: Callable[[RemoteFile], bool],
        whole: Callable[[], bool],
        stat: Callable[[str], Awaitable[RemoteFile | None]],
        settle_marker: Callable[[RemoteFile], Awaitable[None]] | None,
    ) -> AsyncIterator[RemoteFile]:
        """The data files of ``entries`` whose companions are there. The whole listing is read
        first: a done file may be listed after its file. ``settle_marker`` (None with ``after:
        keep``) is given each folder done file whose files are all gone."""
        listing: dict[str, RemoteFile] = {}
        self._listing = listing
        candidates: list[RemoteFile] = []
        async with contextlib.aclosing(entries) as it:
            async for f in it:
                if not self.is_companion(f.name):
                    candidates.append(f)
        single = len(candidates) == 1 and candidates[0].path == self.root and self.root != ""
        if single:
            await self._stat_beside(candidates[0], listing, stat)  # one exact file: nothing else was listed
        out: list[RemoteFile] = []
        beside: dict[str, Beside] = {}
        for f in candidates:
            marker = None
            if self.done is not None:
                marker = listing.get(companions.beside(f.path, self.done))
                if marker is None or marker.mtime < f.mtime:
                    continue  # not done yet (or the marker is an older file's)
            checksum = None
            if self.checksum is not None:
                checksum = listing.get(companions.beside(f.path, self.checksum))
                if checksum is None or not (single or stable(checksum)):
                    continue
            beside[f.path] = Beside(checksum, marker if self.per_file else None)
            out.append(f)
        self._beside = beside
        if settle_marker is not None and self.done is not None and not self.per_file and whole():
            await self._settle_folder_markers(candidates, listing, settle_marker)
        for f in out:
            yield f

    async def _stat_beside(
        self, f: RemoteFile, listing: dict[str, RemoteFile], stat: Callable[[str], Awaitable[RemoteFile | None]]
    ) -> None:
        for template in (self.done, self.checksum):
            if template is not None:
                found = await stat(companions.beside(f.path, template))
                if found is not None:
                    listing[found.path] = found

    async def _settle_folder_markers(
        self,
        candidates: list[RemoteFile],
        listing: dict[str, RemoteFile],
        settle: Callable[[RemoteFile], Awaitable[None]],
    ) -> None:
        """A folder's done file follows its files once none it released is left in the folder
        (delivered and settled; a failed one keeps it there, beside it)."""
        assert self.done is not None
        oldest_left: dict[str, float] = {}
        for f in candidates:
            folder = posixpath.dirname(f.path)
            oldest_left[folder] = min(oldest_left.get(folder, f.mtime), f.mtime)
        for marker in [m for m in listing.values() if posixpath.basename(m.path) == self.done]:
            left = oldest_left.get(posixpath.dirname(marker.path))
            if left is not None and left <= marker.mtime:
                continue
            try:
                await settle(marker)
            except ConveyorError as e:
                # Tried again at the next listing; the flow's files go on meanwhile.
                log.warning("done file %s: after action failed: %s", marker.path, redact(str(e)), extra=self._extra)
