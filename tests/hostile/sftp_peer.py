"""A hostile SFTP server: asyncssh with a made-up file system that says whatever a test wants.

Folders list names OpenSSH would never send (``a/b``, ``../x``, NUL, CR/LF, 10,000 characters),
or never stop listing; files are longer than listed or never end; symlinks loop. Paths are
bytes, looked up exactly as the client sends them first (so a listed ``a/b`` can be opened as
``folder/a/b``), then resolved through symlinks with Linux's limit of 40 hops (ELOOP past it).
Endless streams stop at a safety cap, which is noted: a daemon that reads that far was not
stopped by a limit of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import posixpath
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import asyncssh

from tests.hostile.loop_thread import LoopThread
from tests.servers.asyncssh_server import PASSWORD, USERNAME, host_keys

STREAM_CAP = 256 << 20
"""Bytes an endless file serves before the server gives up (a daemon with a limit stops far sooner)."""
LISTING_CAP = 3_000_000
"""Entries an endless listing sends before it ends."""
MTIME = 1_700_000_000


@dataclass
class VFile:
    """A file: ``data``, listed as ``listed`` bytes (default its length), or endless."""

    data: bytes = b""
    listed: int | None = None
    endless: bool = False
    mtime: int = MTIME

    @property
    def size(self) -> int:
        return len(self.data) if self.listed is None else self.listed


@dataclass
class VirtualSftp:
    """The made-up file system and what the client did to it."""

    files: dict[bytes, VFile] = field(default_factory=dict)
    dirs: dict[bytes, list[bytes]] = field(default_factory=lambda: {b"/": []})
    """Folder → names listed in it, in order."""
    links: dict[bytes, bytes] = field(default_factory=dict)
    """Link path → absolute target path."""
    endless: set[bytes] = field(default_factory=set)
    """Folders whose listing never ends."""
    removed: list[bytes] = field(default_factory=list)
    peak: dict[bytes, int] = field(default_factory=dict)
    """The most bytes one open of a path was served."""
    notes: list[str] = field(default_factory=list)
    listed_entries: int = 0

    def mkdir(self, path: bytes) -> None:
        """A folder (its parents too)."""
        parent = posixpath.dirname(path)
        if path not in self.dirs:
            if parent != path:
                self.mkdir(parent)
                self.dirs[parent].append(posixpath.basename(path))
            self.dirs[path] = []

    def add(self, folder: bytes, name: bytes, f: VFile) -> None:
        """List ``name`` in ``folder``, served from ``folder/name``."""
        self.mkdir(folder)
        self.dirs[folder].append(name)
        self.files[folder + b"/" + name] = f

    def link(self, folder: bytes, name: bytes, target: bytes) -> None:
        """A symlink ``folder/name`` → absolute ``target``."""
        self.mkdir(folder)
        self.dirs[folder].append(name)
        self.links[folder + b"/" + name] = target

    # -- lookups ------------------------------------------------------------------------------------
    def resolve(self, path: bytes, follow_last: bool = True) -> bytes:
        """The path with every symlink resolved; SFTPFailure past 40 hops, SFTPNoSuchFile if missing."""
        path = posixpath.normpath(path) if path else b"/"
        if path in self.files or path in self.dirs:
            return path
        hops = 0
        cur = b"/"
        parts = [p for p in path.split(b"/") if p]
        for i, part in enumerate(parts):
            cand = posixpath.join(cur, part)
            last = i == len(parts) - 1
            while cand in self.links and (follow_last or not last):
                hops += 1
                if hops > 40:
                    raise asyncssh.SFTPFailure("Too many levels of symbolic links")
                cand = self.links[cand]
            if not last and cand not in self.dirs:
                raise asyncssh.SFTPNoSuchFile("No such file")
            cur = cand
        if cur in self.files or cur in self.dirs or (not follow_last and cur in self.links):
            return cur
        raise asyncssh.SFTPNoSuchFile("No such file")

    def attrs(self, path: bytes, follow: bool = True) -> asyncssh.SFTPAttrs:
        """Attributes of ``path``."""
        p = self.resolve(path, follow)
        if p in self.links:
            return asyncssh.SFTPAttrs(
                type=asyncssh.FILEXFER_TYPE_SYMLINK, permissions=stat.S_IFLNK | 0o777, size=1, mtime=MTIME, atime=MTIME
            )
        if p in self.dirs:
            return asyncssh.SFTPAttrs(
                type=asyncssh.FILEXFER_TYPE_DIRECTORY,
                permissions=stat.S_IFDIR | 0o755,
                size=4096,
                mtime=MTIME,
                atime=MTIME,
            )
        f = self.files[p]
        return asyncssh.SFTPAttrs(
            type=asyncssh.FILEXFER_TYPE_REGULAR,
            permissions=stat.S_IFREG | 0o644,
            size=f.size,
            mtime=f.mtime,
            atime=f.mtime,
        )

    async def names(self, path: bytes) -> AsyncIterator[asyncssh.SFTPName]:
        """A folder's entries (endless for the folders in :attr:`endless`)."""
        folder = self.resolve(path)
        if folder not in self.dirs:
            raise asyncssh.SFTPNoSuchFile("Not a folder")
        if folder in self.endless:
            attrs = asyncssh.SFTPAttrs(
                type=asyncssh.FILEXFER_TYPE_REGULAR, permissions=stat.S_IFREG | 0o644, size=10, mtime=MTIME, atime=MTIME
            )
            pad = b"x" * 180
            for i in range(LISTING_CAP):
                self.listed_entries += 1
                yield asyncssh.SFTPName(b"e%09d-" % i + pad, b"-rw-r--r-- 1 u g 10 Nov 26 22:39 e", attrs)
            self.notes.append(
                f"the endless listing of {folder.decode(errors='replace')} reached its safety cap "
                f"of {LISTING_CAP} entries: the daemon never stopped reading it"
            )
            return
        for name in list(self.dirs[folder]):
            full = folder.rstrip(b"/") + b"/" + name
            try:
                a = self.attrs(full, follow=False) if full in self.links else self.attrs(full)
            except asyncssh.SFTPError:
                continue
            yield asyncssh.SFTPName(name, b"?--------- 1 u g 0 Nov 26 22:39 " + name, a)

    def read(self, h: _Handle, offset: int, size: int) -> bytes:
        """Bytes of ``h``'s file at ``offset``; an endless file has bytes everywhere (until the cap)."""
        f, path = h.f, h.path
        out = self._read(f, offset, size, path, h.served)
        h.served += len(out)
        self.peak[path] = max(self.peak.get(path, 0), h.served)
        return out

    def _read(self, f: VFile, offset: int, size: int, path: bytes, served: int) -> bytes:
        if f.endless:
            if served >= STREAM_CAP:
                note = (
                    f"the server sent {STREAM_CAP >> 20} MiB of the endless file {path.decode(errors='replace')}"
                    ": the daemon never stopped reading it"
                )
                if note not in self.notes:
                    self.notes.append(note)
                raise asyncssh.SFTPFailure("safety cap reached")
            return b"e" * size
        return f.data[offset : offset + size]


class _Handle:
    def __init__(self, f: VFile, path: bytes) -> None:
        self.f = f
        self.path = path
        self.served = 0


class HostileSftp:
    """An asyncssh server on 127.0.0.1 serving a :class:`VirtualSftp`, on a :class:`LoopThread`."""

    def __init__(self, fs: VirtualSftp, loop: LoopThread) -> None:
        self.fs = fs
        self.loop = loop
        self.port = 0
        self._server: Any = None
        self._conns: list[asyncssh.SSHServerConnection] = []

    async def _start(self) -> None:
        fs = self.fs
        conns = self._conns

        class Server(asyncssh.SSHServer):
            def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
                conns.append(conn)

            def begin_auth(self, username: str) -> bool:
                return True

            def password_auth_supported(self) -> bool:
                return True

            def validate_password(self, username: str, password: str) -> bool:
                return username == USERNAME and password == PASSWORD

        class Sftp(asyncssh.SFTPServer):
            def realpath(self, path: bytes) -> bytes:
                return posixpath.normpath(b"/" + path) if not path.startswith(b"/") else posixpath.normpath(path)

            def stat(self, path: bytes) -> asyncssh.SFTPAttrs:
                return fs.attrs(path)

            def lstat(self, path: bytes) -> asyncssh.SFTPAttrs:
                return fs.attrs(path, follow=False)

            def scandir(self, path: bytes) -> AsyncIterator[asyncssh.SFTPName]:
                return fs.names(path)

            def open(self, path: bytes, pflags: int, attrs: asyncssh.SFTPAttrs) -> _Handle:
                p = fs.resolve(path)
                if p not in fs.files:
                    raise asyncssh.SFTPFailure("Not a file")
                if pflags & asyncssh.FXF_WRITE:
                    raise asyncssh.SFTPPermissionDenied("read-only")
                return _Handle(fs.files[p], p)

            def read(self, file_obj: object, offset: int, size: int) -> bytes:
                assert isinstance(file_obj, _Handle)
                return fs.read(file_obj, offset, size)

            def fstat(self, file_obj: object) -> asyncssh.SFTPAttrs:
                assert isinstance(file_obj, _Handle)
                return fs.attrs(file_obj.path)

            def close(self, file_obj: object) -> None:
                return None

            def remove(self, path: bytes) -> None:
                p = posixpath.normpath(path)
                if p not in fs.files:
                    raise asyncssh.SFTPNoSuchFile("No such file")
                fs.removed.append(p)
                del fs.files[p]
                folder, name = p.rsplit(b"/", 1)
                names = fs.dirs.get(folder or b"/", [])
                if name in names:
                    names.remove(name)

        self._server = await asyncssh.listen(
            "127.0.0.1",
            0,
            server_host_keys=host_keys(),
            server_factory=Server,
            sftp_factory=Sftp,
            allow_scp=False,
            config=None,
        )
        self.port = self._server.sockets[0].getsockname()[1]

    def start(self) -> HostileSftp:
        """Listen on a random loopback port."""
        self.loop.call(self._start())
        return self

    async def _stop(self) -> None:
        self._server.close()
        await self._server.wait_closed()
        for c in self._conns:
            c.close()
        for c in self._conns:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(c.wait_closed(), 2)

    def stop(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self.loop.call(self._stop())

    def instance(self) -> dict[str, Any]:
        """An sftp instance config for this server (root ``/``)."""
        from conveyor.transfer.sftp.hostkeys import sha256_fp

        key = next(k for k in host_keys() if k.get_algorithm() == "ssh-ed25519")
        return {
            "type": "sftp",
            "host": "127.0.0.1",
            "port": self.port,
            "username": USERNAME,
            "password": PASSWORD,
            "host_fingerprint": sha256_fp(key.public_data),
            "root": "/",
            "timeout": "5s",
            "max_connection_attempts": 1,
        }
