"""The sftp connector: a :class:`~conveyor.interfaces.FileSystem` over asyncssh.

Paths are relative to the instance's ``root``, which may itself be relative to the folder the
login lands in: absolute paths are built only on a logged-in session (see ``SftpPool.root``).
Every operation runs under ``timeout`` (for transfers: no progress for ``timeout``) and maps
asyncssh errors once, here, onto conveyor's error tree. Transfers keep several SFTP requests
outstanding, as OpenSSH's ``sftp`` does (more the longer the round trip), and write them in
order, so a resumed download continues at ``sink.size``. A large file from a distant server is
read over several sessions at once instead, each part written at its offset, and a resumed
download fetches only the ranges the sink is missing. A large upload to a distant
server is written the same way: parts over several sessions at their offsets into the temp
name, then the rename. A downloaded file's handle is closed without waiting for the answer, so
that many small files cost two round trips each (open, read) rather than three.
"""

from __future__ import annotations

import asyncio
import logging
import math
import posixpath
import stat as stat_mod
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any, NoReturn, TypeVar

import asyncssh

from conveyor._compat.asyncssh import ReadSender, read_sender
from conveyor.errors import ConveyorError, NoSpace, NotFound, Permanent, Rejected, Transient
from conveyor.interfaces import Context, RemoteFile, count_entry
from conveyor.payload.body import Body
from conveyor.payload.spool import SpoolWriter
from conveyor.transfer.remote_root import join_root
from conveyor.transfer.segments import SEGMENT_FROM, auto_streams
from conveyor.transfer.sftp.config import SftpConfig
from conveyor.transfer.sftp.pool import Session, SftpPool, is_connection_error
from conveyor.transfer.tempname import temp_key, temp_name

log = logging.getLogger("conveyor.sftp")

BLOCK = 256 * 1024
"""Bytes per SFTP read/write request (capped by the server's advertised limits)."""
WINDOW = 16
"""SFTP read requests kept outstanding per session on a near server: 4 MiB in flight. More makes
the server spend more CPU per MiB (its buffers grow); 4 MiB per round trip is still twice
OpenSSH's own window. Further away, :func:`read_depth` keeps more in flight."""
DEADLINE_SLACK = 1.0
"""Seconds a transfer's no-progress deadline may lag behind: moved at most this often instead of
at every answer (each move cancels a timer and makes a new one)."""
SEND_BATCH = 4
"""Read requests sent together, once that many answers are in, where the round trip is not known:
one SSH packet and one system call for them instead of one each (docs/performance-notes.md).
:func:`send_batch` chooses from the round trip otherwise."""
MAX_WINDOW = 48
"""The deepest read pipeline: 12 MiB, within the 16 MiB SSH channel window conveyor grants."""
PER_STREAM = 128 * 1024 * 1024
"""Bytes per second one session's pipeline is sized to carry at the measured round trip."""
PART = 8 * 1024 * 1024
"""Bytes of a file one session of a segmented download takes at a time. Parts go out in file
order, so the spool can hash the front of the file while the rest is still arriving."""
WRITE_WINDOW = 16
"""SFTP write requests kept outstanding per upload: 4 MiB already exceeds the SSH window OpenSSH
grants (2 MiB); more would only queue, in memory, in asyncssh's send buffer."""

T = TypeVar("T")


class _Unlistable(Exception):
    """The server refused to list a path (it may be a file, or listing is forbidden)."""

    def __init__(self, error: ConveyorError) -> None:
        super().__init__(str(error))
        self.error = error


_NOTED_MAX = 1000
"""Folder links remembered as logged; past this many the memory starts over (a line again each)."""


class _Walk:
    """The real folders a listing that follows folder links covers: the listed folder, and each
    link target it followed (with everything beneath them)."""

    def __init__(self, start: str) -> None:
        self.roots = [start]

    def covering(self, real: str) -> str | None:
        """The covered folder that ``real`` is or lies inside, or None."""
        for r in self.roots:
            if real == r or real.startswith(r.rstrip("/") + "/"):
                return r
        return None


class SftpInstance:
    """A live sftp instance: pooled sessions plus the FileSystem operations."""

    def __init__(self, name: str, config: SftpConfig, ctx: Context | None) -> None:
        self.name = name
        self.config = config
        self.pool = SftpPool(name, config, ctx.status if ctx is not None else None)
        self._noted: set[str] = set()
        """Folder links already logged about (one line per link, not one per poll)."""
        self._closing: dict[str, asyncio.Task[None]] = {}
        """Closes of downloaded files still awaiting the server's answer, by path."""

    # -- Instance ---------------------------------------------------
    async def check(self) -> str:
        """Connect and log in now: ``user@host:port (key type, fingerprint), root /abs/folder``."""
        async with self._op("") as s:
            await s.sftp.stat(self._abs(""))
            return f"{self.config.describe()} ({s.keytype}, {s.fingerprint}), root {self._abs('')}"

    def hop_report(self) -> list[str]:
        """What the last connect verified at each hop; empty for a server reached directly."""
        if self.config.proxy is None and not self.config.jump:
            return []
        return list(self.pool.hop_lines)

    async def resolve(self, path: str) -> str:
        """The absolute server path that ``path`` (relative to the root) stands for.

        Logs in first when the root is relative to the folder the login lands in.
        """
        if self.pool.root is None:
            async with self._op(path):
                pass
        return self._abs(path)

    async def close(self) -> None:
        """Close every session."""
        await asyncio.gather(*self._closing.values(), return_exceptions=True)
        await self.pool.close()

    def _close_later(self, path: str, fh: asyncssh.SFTPClientFile) -> None:
        """Close a downloaded file's handle without waiting for the answer: with many small files,
        the next one need not wait a round trip for it. A remove or rename of ``path`` waits first."""
        t = asyncio.ensure_future(_close_quietly(fh))
        self._closing[path] = t
        t.add_done_callback(lambda _: self._closing.get(path) is t and self._closing.pop(path))

    async def _closed(self, path: str) -> None:
        """Wait until no handle of ``path`` is open any more (servers that refuse to remove open files)."""
        t = self._closing.get(path)
        if t is not None:
            await asyncio.shield(t)

    # -- paths and errors --------------------------------------------------
    def _abs(self, path: str) -> str:
        return join_root(self.pool.root, path)

    def _map(self, e: BaseException, path: str) -> ConveyorError:
        """One place where asyncssh and OS errors become conveyor errors."""
        if isinstance(e, ConveyorError):
            return e
        kw: dict[str, Any] = {"instance": self.name, "path": path or "/"}
        reason = getattr(e, "reason", None) or str(e) or type(e).__name__
        if isinstance(e, (asyncssh.SFTPNoSuchFile, asyncssh.SFTPNoSuchPath)):
            return NotFound(f"no such file or folder: {reason}", **kw)
        if isinstance(e, asyncssh.SFTPPermissionDenied):
            return Permanent(f"permission denied: {reason}", **kw)
        if isinstance(e, (asyncssh.SFTPNoSpaceOnFilesystem, asyncssh.SFTPQuotaExceeded)):
            return NoSpace(f"server out of space: {reason}", **kw)
        if isinstance(e, asyncssh.SFTPOpUnsupported):
            return Permanent(f"server does not support this: {reason}", **kw)
        if isinstance(e, TimeoutError):
            return Transient(f"no answer within {self.config.timeout:g}s", **kw)
        if isinstance(e, asyncssh.SFTPError) and not isinstance(e, asyncssh.SFTPConnectionLost):
            return Transient(f"server error: {reason}", **kw)
        return Transient(f"connection lost: {reason}", **kw)

    @asynccontextmanager
    async def _op(self, path: str, share: bool = False) -> AsyncIterator[Session]:
        """A pooled session for one operation under ``timeout``, with errors mapped (``share``:
        a short one, see :meth:`SftpPool.session`)."""
        try:
            async with self.pool.session(share) as s:
                async with asyncio.timeout(self.config.timeout):
                    yield s
        except (asyncssh.Error, OSError, TimeoutError, EOFError) as e:
            raise self._map(e, path) from None

    async def _call(self, path: str, fn: Callable[[asyncssh.SFTPClient], Awaitable[T]], share: bool = False) -> T:
        async with self._op(path, share) as s:
            return await fn(s.sftp)

    # -- FileSystem: reading -----------------------------------------------
    async def stat(self, path: str) -> RemoteFile | None:
        """The regular file at ``path``, or None (missing, or a folder)."""
        try:
            attrs = await self._call(path, lambda sftp: sftp.stat(self._abs(path)), share=True)
        except NotFound:
            return None
        if attrs.type != asyncssh.FILEXFER_TYPE_REGULAR and not stat_mod.S_ISREG(attrs.permissions or 0):
            return None
        return RemoteFile(path.strip("/"), attrs.size or 0, float(attrs.mtime or 0))

    async def is_dir(self, path: str) -> bool:
        """Whether ``path`` is an existing folder."""
        try:
            return await self._call(path, lambda sftp: sftp.isdir(self._abs(path)), share=True)
        except NotFound:
            return False

    async def list(
        self,
        path: str,
        recursive: bool,
        max_entries: int | None = None,
        descend: Callable[[str], bool] | None = None,
    ) -> AsyncIterator[RemoteFile]:
        """Regular files under ``path``, streamed from readdir. When the server refuses to list
        ``path`` but it is a file (servers with "private visibility"), yield just that file.

        A link to a file is taken as that file. A link to a folder is not descended into unless
        ``follow_symlinked_folders`` is on; then each real folder (by the server's realpath) is
        listed once, under the first path that reaches it, so a link back up the tree (``loop ->
        .``) neither repeats files under ever longer names nor ends the listing with ELOOP.
        """
        start = path.strip("/")
        follow = recursive and self.config.follow_symlinked_folders
        walk = _Walk(await self._realpath(start)) if follow else None
        folders: deque[tuple[str, str | None]] = deque([(start, walk.roots[0] if walk else None)])
        first = True
        n = 0
        while folders:
            folder, real = folders.popleft()
            try:
                async for f, sub in self._scan(folder):
                    n = count_entry(n, max_entries)  # folders count too: a server may list them without end
                    if f is not None:
                        yield f
                    elif sub is not None and recursive and (descend is None or descend(sub[0])):
                        rel, linked = sub
                        nxt = await self._descend(walk, rel, linked, real)
                        if nxt is not None:
                            folders.append(nxt)
            except _Unlistable as e:
                one = await self.stat(path) if first else None  # maybe one exact file
                if one is None:
                    raise e.error from None
                yield one
            first = False

    async def _descend(
        self, walk: _Walk | None, rel: str, linked: bool, parent_real: str | None
    ) -> tuple[str, str | None] | None:
        """The sub-folder ``rel`` to list next as (path, real path), or None to leave it out."""
        if walk is None:
            if not linked:
                return rel, None
            self._note(
                rel,
                logging.INFO,
                "not descending into symlinked folder %s (follow_symlinked_folders "
                "is off): files under it are not listed",
            )
            return None
        if not linked:
            assert parent_real is not None
            real = posixpath.join(parent_real, posixpath.basename(rel))
            # A real folder that a link already led to is listed under that link's path.
            return None if real in walk.roots else (rel, real)
        try:
            real = await self._realpath(rel)
        except ConveyorError as e:
            self._note(rel, logging.WARNING, "symlinked folder %s not followed: the server did not resolve it (%s)", e)
            return None
        seen = walk.covering(real)
        if seen is not None:
            self._note(
                rel,
                logging.WARNING,
                "symlinked folder %s not followed: it leads to %s, inside %s, which "
                "this listing already covers (a link loop or a second way in)",
                real,
                seen,
            )
            return None
        walk.roots.append(real)
        return rel, real

    async def _realpath(self, rel: str) -> str:
        """The server's canonical absolute path of ``rel`` (links resolved)."""
        real = await self._call(rel, lambda sftp: sftp.realpath(self._abs(rel)))
        return str(real)

    def _note(self, rel: str, level: int, msg: str, *args: object) -> None:
        """Log ``msg`` about the folder link ``rel`` once per instance (links stay from poll to poll)."""
        if rel in self._noted:
            return
        if len(self._noted) >= _NOTED_MAX:
            self._noted.clear()
        self._noted.add(rel)
        log.log(level, "sftp %s: " + msg, self.name, rel, *args, extra={"instance": self.name})

    async def _scan(self, rel: str) -> AsyncIterator[tuple[RemoteFile | None, tuple[str, bool] | None]]:
        """The entries of folder ``rel``: (file, None), (None, (relative sub-folder, reached by a link)),
        or (None, None) for anything else (a device, a dangling link)."""
        started = False
        try:
            async with self.pool.session(share=True) as s:
                folder = self._abs(rel)
                it = s.sftp.scandir(folder).__aiter__()
                while True:
                    async with asyncio.timeout(self.config.timeout):
                        try:
                            entry = await it.__anext__()
                        except StopAsyncIteration:
                            return
                    started = True
                    name = entry.filename
                    if name in (".", ".."):
                        continue
                    assert isinstance(name, str)
                    full = posixpath.join(folder, name)
                    # Joined as listed, not normalised: a name like '../x' stays one the source
                    # refuses by name, instead of turning into a file beside the watched folder.
                    child = f"{rel}/{name}" if rel else name
                    attrs = entry.attrs
                    linked = attrs.type == asyncssh.FILEXFER_TYPE_SYMLINK
                    if linked:
                        async with asyncio.timeout(self.config.timeout):
                            try:
                                attrs = await s.sftp.stat(full)
                            except asyncssh.SFTPError:
                                yield None, None  # a dangling link is not a file to take
                                continue
                    if attrs.type == asyncssh.FILEXFER_TYPE_DIRECTORY:
                        if "/" in name:  # a folder is never called 'a/b' or '../x'
                            yield None, None
                        else:
                            yield None, (child, linked)
                    elif attrs.type == asyncssh.FILEXFER_TYPE_REGULAR:
                        yield RemoteFile(child, attrs.size or 0, float(attrs.mtime or 0)), None
                    else:
                        yield None, None  # counted by list(), like every entry read
        except asyncssh.SFTPError as e:
            if not started and not isinstance(e, asyncssh.SFTPConnectionLost):
                # The server answered but will not list this: not a folder, or listing forbidden.
                raise _Unlistable(self._map(e, rel)) from None
            raise self._map(e, rel) from None
        except (asyncssh.Error, OSError, TimeoutError, EOFError) as e:
            raise self._map(e, rel) from None

    async def download(self, f: RemoteFile, sink: SpoolWriter) -> None:
        """Stream the file from ``sink.size`` to its listed size with pipelined reads.

        A large file is read over several sessions at once (``streams``), each taking parts
        in file order and writing them at their offsets; after a cut, only the missing ranges
        are fetched again. A size different from the listing means the file changed:
        Transient, so it is listed and checked for stability again.
        """
        if sink.segmented or (sink.size == 0 and f.size >= 2 * PART and await self._streams(f.size) > 1):
            await self._download_parts(f, sink)
            return
        offset = sink.size
        try:
            async with self.pool.session() as s, asyncio.timeout(self.config.timeout) as deadline:
                fh = await s.sftp.open(self._abs(f.path), "rb", block_size=0)
                try:
                    block = min(BLOCK, s.sftp.limits.max_read_len or BLOCK)
                    depth = read_depth(s.rtt)
                    await self._read_into(fh, f, offset, block, sink, deadline, depth, send_batch(s.rtt, depth))
                finally:
                    self._close_later(f.path, fh)
        except (asyncssh.Error, OSError, TimeoutError, EOFError) as e:
            raise self._map(e, f.path) from None

    async def _streams(self, size: int, rtt: float | None = None) -> int:
        """How many sessions move a file of ``size`` bytes: ``streams``, or chosen by size and
        by the round trip ``rtt`` or that of a pooled session (logging in first if there is none)."""
        cap = self.config.max_connections
        if self.config.streams is not None:
            return min(self.config.streams, cap)
        if size < SEGMENT_FROM:
            return 1
        if rtt is None:
            async with self._op("") as s:
                rtt = s.rtt
        return auto_streams(size, rtt, cap)

    async def _download_parts(self, f: RemoteFile, sink: SpoolWriter) -> None:
        """The missing ranges of ``f`` over up to ``streams`` sessions, parts in file order."""
        sink.positional(f.size)
        todo: deque[tuple[int, int]] = deque()
        for start, end in sink.missing(f.size):
            todo.extend((p, min(p + PART, end)) for p in range(start, end, PART))
        n = max(1, min(await self._streams(f.size), len(todo)))
        probe = _Probe()
        # Sessions for all n streams, counting the idle one the first stream starts on at once.
        grown = asyncio.ensure_future(self.pool.grow(n))

        async def later() -> None:
            await asyncio.shield(grown)  # the others start once their sessions are open
            await self._stream(f, sink, todo, probe)

        tasks = [asyncio.ensure_future(self._stream(f, sink, todo, probe))]
        tasks += [asyncio.ensure_future(later()) for _ in range(n - 1)]
        try:
            await asyncio.gather(*tasks)
            if not probe.sent:  # the end was fetched before a cut: ask once more whether it grew
                await self._stream(f, sink, deque([(f.size, f.size)]), probe)
        finally:
            for t in [*tasks, grown]:
                t.cancel()
            await asyncio.gather(*tasks, grown, return_exceptions=True)

    async def _stream(self, f: RemoteFile, sink: SpoolWriter, todo: deque[tuple[int, int]], probe: _Probe) -> None:
        """One session of a segmented download: takes parts from ``todo`` until none are left."""
        try:
            async with self.pool.session() as s, asyncio.timeout(self.config.timeout) as deadline:
                fh = await s.sftp.open(self._abs(f.path), "rb", block_size=0)
                try:
                    block = min(BLOCK, s.sftp.limits.max_read_len or BLOCK)
                    depth = read_depth(s.rtt)
                    batch = send_batch(s.rtt, depth)
                    await self._read_parts(fh, f, block, sink, deadline, depth, batch, todo, probe)
                finally:
                    await _close_quietly(fh)
        except (asyncssh.Error, OSError, TimeoutError, EOFError) as e:
            raise self._map(e, f.path) from None

    async def _read_parts(
        self,
        fh: asyncssh.SFTPClientFile,
        f: RemoteFile,
        block: int,
        sink: SpoolWriter,
        deadline: asyncio.Timeout,
        depth: int,
        batch: int,
        todo: deque[tuple[int, int]],
        probe: _Probe,
    ) -> None:
        send = read_sender(fh)
        pending: deque[tuple[int, int, asyncio.Future[bytes | memoryview]]] = deque()
        pos = end = 0
        try:
            while True:
                if len(pending) <= depth - batch or not pending:
                    # Requests run on across parts: taking the next one costs no round trip.
                    reqs: list[tuple[int, int]] = []
                    while len(pending) + len(reqs) < depth:
                        if pos >= end:
                            if not todo:
                                break
                            pos, end = todo.popleft()
                        n = min(block, end - pos)
                        if n:
                            reqs.append((pos, n))
                            pos += n
                        if pos == f.size and not probe.sent:
                            # One byte past the listed size must be EOF, else the file grew.
                            probe.sent = True
                            reqs.append((pos, 1))
                    if reqs:
                        _queue(send, reqs, f.size, pending)
                if not pending:
                    return
                off, n, task = pending.popleft()
                data = await task
                if n == 0:
                    if data:
                        self._grew(f)
                    continue
                sink.write_at(off, await self._whole(fh, f, off, n, data))
                self._progress(deadline)
        finally:
            await _drop(pending)

    async def _read_into(
        self,
        fh: asyncssh.SFTPClientFile,
        f: RemoteFile,
        offset: int,
        block: int,
        sink: SpoolWriter,
        deadline: asyncio.Timeout,
        depth: int,
        batch: int,
    ) -> None:
        send = read_sender(fh)
        pending: deque[tuple[int, int, asyncio.Future[bytes | memoryview]]] = deque()
        nxt = offset
        if offset > f.size:
            self._changed(f, offset)
        try:
            while True:
                if nxt <= f.size and (len(pending) <= depth - batch or not pending):
                    reqs: list[tuple[int, int]] = []
                    while len(pending) + len(reqs) < depth and nxt < f.size:
                        n = min(block, f.size - nxt)
                        reqs.append((nxt, n))
                        nxt += n
                    if nxt == f.size:
                        # One byte past the listed size must be EOF, else the file grew. Sent with the
                        # last blocks, it costs no extra round trip (an fstat first would).
                        reqs.append((nxt, 1))
                        nxt += 1
                    _queue(send, reqs, f.size, pending)
                off, n, task = pending.popleft()
                if n == 0:
                    if await task:
                        self._grew(f)
                    return
                sink.write(await self._whole(fh, f, off, n, await task))
                self._progress(deadline)
        finally:
            await _drop(pending)

    def _progress(self, deadline: asyncio.Timeout) -> None:
        """Data arrived: the no-progress ``deadline`` is ``timeout`` from now, within DEADLINE_SLACK."""
        due = asyncio.get_running_loop().time() + self.config.timeout
        when = deadline.when()
        if when is None or due - when >= DEADLINE_SLACK:
            deadline.reschedule(due)

    async def _whole(
        self, fh: asyncssh.SFTPClientFile, f: RemoteFile, off: int, n: int, data: bytes | memoryview
    ) -> bytes | memoryview:
        """The ``n`` bytes at ``off``: ``data`` as read, completed when the server answered short."""
        while len(data) < n:
            more: bytes = await fh.read(n - len(data), off + len(data))
            if not more:
                self._changed(f, off + len(data))
            data = bytes(data) + more
        return data

    def _grew(self, f: RemoteFile) -> NoReturn:
        raise Transient(
            f"file changed while being read: it has more than the listed {f.size} bytes",
            instance=self.name,
            path=f.path,
        )

    def _changed(self, f: RemoteFile, size: int) -> NoReturn:
        raise Transient(
            f"file changed while being read (size {size}, listed {f.size})", instance=self.name, path=f.path
        )

    # -- FileSystem: writing -----------------------------------------------
    async def upload(
        self, body: Body, path: str, *, exists: str, chmod: int | None, mtime: float | None = None
    ) -> bool:
        """Upload under a hidden temp name in the same folder, then rename into place.

        A large body for a distant server is written over several sessions at once
        (``streams``, as for downloads), each part at its offset in the temp file."""
        key = await temp_key(body)
        try:
            async with self.pool.session() as s, asyncio.timeout(self.config.timeout) as deadline:
                dst = self._abs(path)
                folder, name = posixpath.split(dst)
                tmp = posixpath.join(folder, temp_name(name, key))
                sftp = s.sftp
                if exists != "replace" and await sftp.exists(dst):
                    if exists == "skip":
                        return False
                    raise Rejected("file already exists (exists: fail)", instance=self.name, path=path)
                await sftp.makedirs(folder, exist_ok=True)
                try:
                    fh = await sftp.open(tmp, "wb", block_size=0)
                    try:
                        block = min(BLOCK, sftp.limits.max_write_len or BLOCK)
                        n = await self._streams(body.size, s.rtt) if body.size >= 2 * PART else 1
                        await self._write_parts(fh, tmp, body, block, deadline, n)
                    finally:
                        await _close_quietly(fh)
                    if chmod is not None:
                        await sftp.chmod(tmp, chmod)
                    if mtime is not None:
                        # SFTP carries whole seconds: the source's fraction is dropped.
                        await sftp.setstat(tmp, asyncssh.SFTPAttrs(atime=int(mtime), mtime=int(mtime)))
                    try:
                        await self._put_in_place(s, tmp, dst, exists, path)
                    except asyncssh.SFTPNoSuchFile:
                        # Our temp file vanished: another writer of the same bytes renamed it first.
                        raise Transient(
                            "temporary file was moved by another upload before the rename",
                            instance=self.name,
                            path=path,
                        ) from None
                except BaseException:
                    await _remove_quietly(sftp, tmp)
                    raise
                return True
        except (asyncssh.Error, OSError, TimeoutError, EOFError) as e:
            raise self._map(e, path) from None

    async def _write_parts(
        self, fh: asyncssh.SFTPClientFile, tmp: str, body: Body, block: int, deadline: asyncio.Timeout, n: int
    ) -> None:
        """Write ``body`` into the open temp file ``fh`` with pipelined requests, over ``n``
        sessions at once when ``n`` > 1: each writes whole parts at their offsets (the first on
        ``fh``, the others on handles of their own), so that one SSH channel window per session
        is in flight instead of one in all. Parts are read once, in order, and at most one per
        session waits in memory."""
        parts: asyncio.Queue[tuple[int, bytes] | None] = asyncio.Queue(maxsize=n)

        async def feed() -> None:
            offset = 0
            async for chunk in body.chunks(PART if n > 1 else block * 8):
                await parts.put((offset, chunk))
                offset += len(chunk)
            for _ in range(n):
                await parts.put(None)

        async def extra() -> None:
            async with self.pool.session() as s, asyncio.timeout(self.config.timeout) as mine:
                try:
                    other = await s.sftp.open(tmp, asyncssh.FXF_WRITE, encoding=None, block_size=0)
                except asyncssh.SFTPError as e:
                    if isinstance(e, asyncssh.SFTPConnectionLost):
                        raise
                    # A server that lets one writer at a time have the file: the others write it all.
                    log.info("sftp %s: a second writer was refused (%s); fewer streams", self.name, e.reason)
                    return
                try:
                    await self._write_queued(other, parts, block, mine)
                finally:
                    await _close_quietly(other)

        grown = asyncio.ensure_future(self.pool.grow(n - 1) if n > 1 else asyncio.sleep(0))

        async def later() -> None:
            await asyncio.shield(grown)  # each extra writer starts once its session is open
            await extra()

        tasks = [asyncio.ensure_future(feed()), asyncio.ensure_future(self._write_queued(fh, parts, block, deadline))]
        tasks += [asyncio.ensure_future(later()) for _ in range(n - 1)]
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in [*tasks, grown]:
                t.cancel()
            await asyncio.gather(*tasks, grown, return_exceptions=True)

    async def _write_queued(
        self,
        fh: asyncssh.SFTPClientFile,
        parts: asyncio.Queue[tuple[int, bytes] | None],
        block: int,
        deadline: asyncio.Timeout,
    ) -> None:
        """One writer of :meth:`_write_parts`: parts from the queue until its end mark, pipelined."""
        loop = asyncio.get_running_loop()
        pending: deque[asyncio.Task[int]] = deque()
        try:
            while (part := await parts.get()) is not None:
                offset, chunk = part
                view = memoryview(chunk)
                for i in range(0, len(view), block):
                    pending.append(asyncio.ensure_future(fh.write(bytes(view[i : i + block]), offset + i)))
                    while len(pending) >= WRITE_WINDOW:
                        await pending.popleft()
                        deadline.reschedule(loop.time() + self.config.timeout)
            while pending:
                await pending.popleft()
        finally:
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)

    async def _put_in_place(self, s: Session, tmp: str, dst: str, exists: str, path: str) -> None:
        sftp = s.sftp
        if exists == "fail":
            # Plain SFTPv3 rename refuses to overwrite: no window where another writer is clobbered.
            try:
                await sftp.rename(tmp, dst)
            except asyncssh.SFTPFailure:
                if await sftp.exists(dst):
                    raise Rejected("file already exists (exists: fail)", instance=self.name, path=path) from None
                raise
            return
        await self._replace(s, tmp, dst)

    async def _replace(self, s: Session, src: str, dst: str) -> None:
        """Rename replacing ``dst``: atomic posix-rename when the server has it, else remove + rename."""
        if s.posix_rename:
            try:
                await s.sftp.posix_rename(src, dst)
                return
            except asyncssh.SFTPOpUnsupported:
                s.posix_rename = False
        with suppress(asyncssh.SFTPNoSuchFile):
            await s.sftp.remove(dst)
        await s.sftp.rename(src, dst)

    async def remove(self, path: str) -> None:
        """Delete a file; one already gone is fine."""
        await self._closed(path)
        with suppress(NotFound):
            await self._call(path, lambda sftp: sftp.remove(self._abs(path)))

    async def rename(self, src: str, dst: str) -> None:
        """Move a file, creating the destination folder and replacing what is there."""
        await self._closed(src)
        async with self._op(src) as s:
            await s.sftp.makedirs(posixpath.dirname(self._abs(dst)), exist_ok=True)
            await self._replace(s, self._abs(src), self._abs(dst))


def read_depth(rtt: float | None) -> int:
    """SFTP read requests to keep outstanding on a session whose round trip is ``rtt`` seconds:
    enough for :data:`PER_STREAM` bytes/s, never fewer than :data:`WINDOW` nor more than
    :data:`MAX_WINDOW` (unknown: :data:`WINDOW`)."""
    if rtt is None:
        return WINDOW
    return max(WINDOW, min(MAX_WINDOW, math.ceil(rtt * PER_STREAM / BLOCK)))


def send_batch(rtt: float | None, depth: int) -> int:
    """Read requests to send together on a session whose round trip is ``rtt`` seconds, with
    ``depth`` outstanding: as many as leave enough in flight for :data:`PER_STREAM` bytes/s, at
    most half of ``depth`` (unknown: :data:`SEND_BATCH`). Larger batches cost less CPU per MiB
    near the server; far from it, every request is sent as soon as an answer is in."""
    if rtt is None:
        return SEND_BATCH
    return max(1, min(depth // 2, depth - math.ceil(rtt * PER_STREAM / BLOCK)))


def _queue(
    send: ReadSender,
    reqs: list[tuple[int, int]],
    size: int,
    pending: deque[tuple[int, int, asyncio.Future[bytes | memoryview]]],
) -> None:
    """Send the reads ``reqs`` and queue each with its future; the probe one byte past the
    listed ``size`` is queued with length 0 (its answer must be the end of the file)."""
    futs = send(reqs)
    pending.extend((o, 0 if o == size else n, t) for (o, n), t in zip(reqs, futs, strict=True))


async def _drop(pending: deque[tuple[int, int, asyncio.Future[bytes | memoryview]]]) -> None:
    """Cancel the reads still outstanding and wait for them (their answers are not wanted)."""
    for _, _, t in pending:
        t.cancel()
    if pending:
        await asyncio.gather(*(t for _, _, t in pending), return_exceptions=True)


class _Probe:
    """Whether a segmented download has sent its read past the listed end (sent once)."""

    sent = False


async def _close_quietly(fh: asyncssh.SFTPClientFile) -> None:
    try:
        async with asyncio.timeout(5):
            await fh.close()
    except (asyncssh.Error, OSError, TimeoutError):
        pass


async def _remove_quietly(sftp: asyncssh.SFTPClient, path: str) -> None:
    try:
        async with asyncio.timeout(5):
            await sftp.remove(path)
    except (asyncssh.Error, OSError, TimeoutError):
        pass


__all__ = ["SftpInstance", "is_connection_error"]
