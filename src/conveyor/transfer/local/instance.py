"""The ``local`` instance: a folder on this machine, as a FileSystem."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from conveyor.batched import BatchedThread, ThreadCalls
from conveyor.errors import NoSpace, NotFound, Permanent, Rejected, Transient
from conveyor.interfaces import Context, RemoteFile
from conveyor.payload.body import Body
from conveyor.payload.spool import SpoolWriter, disk_full, remove_files
from conveyor.transfer.local.config import LocalConfig

_BATCH = 1000


class LocalInstance:
    """A local folder. Reads hand the file over in place (no spool copy)."""

    def __init__(self, name: str, config: LocalConfig, ctx: Context) -> None:
        self.name = name
        self.config = config
        self.root = Path(config.root)
        self._root = str(self.root)
        ctx.status.add_instance(name, "local", config.root)
        self._status = ctx.status
        self._io = BatchedThread(f"conveyor-io:{name}")
        """Small reads, deletes and moves: one thread hop per event-loop turn, not one per file."""

    def _abs(self, path: str) -> str:
        # A string, not a Path: this runs on the event loop twice per file (read, after action),
        # where pathlib's parsing would be the largest part of the source's per-file work.
        # Config paths are trusted, remote names are checked by the core; this is the last guard.
        if ".." in path.split("/"):
            raise Permanent(f"path {path!r} leaves the instance root", instance=self.name, path=path)
        return f"{self._root}/{path}" if path else self._root

    def _error(self, e: OSError, path: str) -> Exception:
        if isinstance(e, FileNotFoundError):
            return NotFound(f"no such file or folder: {self._abs(path)}", instance=self.name, path=path)
        if isinstance(e, PermissionError):
            return Permanent(f"permission denied: {self._abs(path)}", instance=self.name, path=path)
        if disk_full(e):
            return NoSpace(f"disk full under {self.root}", instance=self.name, path=path)
        return Transient(f"{e.strerror or e}", instance=self.name, path=path)

    async def check(self) -> str:
        """The root folder must exist (or is created when ``create`` is set)."""
        if self.config.create:
            await asyncio.to_thread(self.root.mkdir, parents=True, exist_ok=True)
        if not await asyncio.to_thread(self.root.is_dir):
            self._status.instance_state(self.name, "down", f"folder {self.root} does not exist", permanent=True)
            raise NotFound(f"folder {self.root} does not exist", instance=self.name)
        self._status.instance_state(self.name, "up")
        return f"local folder {self.root}"

    async def close(self) -> None:
        """Stop the I/O thread (after what is queued)."""
        self._io.close()

    async def stat(self, path: str) -> RemoteFile | None:
        """The file at ``path`` or None."""
        try:
            st = await asyncio.to_thread(os.stat, self._abs(path))
        except FileNotFoundError:
            return None
        except OSError as e:
            raise self._error(e, path) from None
        if not _is_file(st.st_mode):
            return None
        return RemoteFile(path, st.st_size, st.st_mtime)

    async def is_dir(self, path: str) -> bool:
        """Whether ``path`` is a folder."""
        return await asyncio.to_thread(os.path.isdir, self._abs(path))

    async def list(self, path: str, recursive: bool) -> AsyncIterator[RemoteFile]:
        """Regular files under ``path`` in batches read on a thread (symlinks are not followed)."""
        if self._status.instances[self.name].state != "up":
            await self.check()
        pending = [path]
        while pending:
            folder = pending.pop()
            if self.config.create and folder == path:
                await asyncio.to_thread(os.makedirs, self._abs(folder), exist_ok=True)
            try:
                it = await asyncio.to_thread(os.scandir, self._abs(folder))
            except OSError as e:
                raise self._error(e, folder) from None
            # Closed only once no thread reads it: a stop cancels this mid-batch.
            calls = ThreadCalls()
            try:
                while batch := await calls.run(_take, it, _BATCH):
                    for name, is_dir, size, mtime in batch:
                        rel = f"{folder}/{name}" if folder else name
                        if is_dir:
                            if recursive:
                                pending.append(rel)
                        elif size >= 0:
                            yield RemoteFile(rel, size, mtime)
            finally:
                calls.after(it.close)

    async def open_in_place(self, f: RemoteFile, threshold: int) -> Body:
        """The file as a body with no copy into the spool: read into memory when small,
        else handed over by path."""
        path = self._abs(f.path)
        try:
            if f.size <= min(threshold, 1 << 20):
                data, sha256 = await self._io.run(functools.partial(_read_hashed, path))
                return Body.from_bytes(data, sha256)
            # Its stat() on the I/O thread too: a slow disk must not hold up the event loop.
            return await self._io.run(functools.partial(Body.from_file, Path(path), owned=False))
        except OSError as e:
            raise self._error(e, f.path) from None

    async def download(self, f: RemoteFile, sink: SpoolWriter) -> None:
        """Copy the file into a spool writer (used when in-place reading is not wanted)."""
        try:
            fh = open(self._abs(f.path), "rb")  # noqa: ASYNC230, SIM115 (reads go through a thread; closed below)
            calls = ThreadCalls()
            try:
                fh.seek(sink.size)
                while chunk := await calls.run(fh.read, 1 << 20):
                    sink.write(chunk)
            finally:
                calls.after(fh.close)  # not under a read a cancelled download left running
        except OSError as e:
            raise self._error(e, f.path) from None

    async def upload(self, body: Body, path: str, *, exists: str, chmod: int | None) -> bool:
        """Write under a temp name, fsync, rename."""
        try:
            return await asyncio.to_thread(self._upload, body, path, exists, chmod)
        except OSError as e:
            raise self._error(e, path) from None

    def _upload(self, body: Body, path: str, exists: str, chmod: int | None) -> bool:
        dest = Path(self._abs(path))
        if exists != "replace" and dest.exists():
            if exists == "fail":
                raise Rejected(f"{dest} already exists", instance=self.name, path=path)
            return False
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.parent / f".{dest.name[:200]}.{uuid.uuid4().hex[:12]}.tmp"
        try:
            if body.in_memory:
                with open(tmp, "wb") as out:
                    out.write(body.data())
                    out.flush()
                    os.fsync(out.fileno())
            else:
                assert body.path is not None
                shutil.copyfile(body.path, tmp)
                with open(tmp, "rb") as fh:
                    os.fsync(fh.fileno())
            if chmod is not None:
                os.chmod(tmp, chmod)
            os.replace(tmp, dest)
            _fsync_dir(dest.parent)
        finally:
            tmp.unlink(missing_ok=True)
        return True

    async def remove(self, path: str) -> None:
        """Delete; already gone is fine."""
        try:
            await self._io.run(functools.partial(remove_files, self._abs(path)))
        except OSError as e:
            raise self._error(e, path) from None

    async def rename(self, src: str, dst: str) -> None:
        """Move, creating the destination folder."""
        def mv() -> None:
            target = Path(self._abs(dst))
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self._abs(src), target)
            _fsync_dir(target.parent)
        try:
            await self._io.run(mv)
        except OSError as e:
            raise self._error(e, src) from None


def _take(it: Iterator[os.DirEntry[str]], n: int) -> list[tuple[str, bool, int, float]]:
    out: list[tuple[str, bool, int, float]] = []
    for entry in it:
        try:
            if entry.is_dir(follow_symlinks=False):
                out.append((entry.name, True, 0, 0.0))
            elif entry.is_file(follow_symlinks=False):
                st = entry.stat(follow_symlinks=False)
                out.append((entry.name, False, st.st_size, st.st_mtime))
        except FileNotFoundError:
            continue  # removed while listing
        if len(out) >= n:
            break
    return out


def _read_hashed(path: str) -> tuple[bytes, str]:
    """The file and its SHA-256, both on the I/O thread: every delivery needs the digest
    (metadata), and computed here it runs beside the event loop instead of on it."""
    with open(path, "rb") as f:
        data = f.read()
    return data, hashlib.sha256(data).hexdigest()


def _is_file(mode: int) -> bool:
    import stat

    return stat.S_ISREG(mode)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
