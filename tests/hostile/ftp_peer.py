"""A hostile FTP server, small enough to misbehave exactly: an asyncio server of the test's own.

It serves a made-up tree (folder → listing lines) over passive data connections (EPSV, or PASV
only), and can: stream a listing or a file forever, send a file longer than it listed, answer a
command with a multi-line reply that never ends, list names no real server would (``a/b``,
``../x``, NUL, CR/LF, 10,000 characters, a symlink to its own folder), and announce a PASV
address other than its own (where a thief listens). Uploads (STOR, RNFR/RNTO) are written into a
real folder, so the suite's checks of a target folder apply to them. Endless streams stop at a
safety cap, which is noted.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import posixpath
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.hostile.loop_thread import LoopThread

USER, PASSWORD = "conveyor", "ftp-s3cret"
STREAM_CAP = 256 << 20
"""Bytes an endless stream (file, listing, reply) sends before the server gives up."""
MTIME = 1_700_000_000


@dataclass
class FEntry:
    """One listed name: a file (its bytes, listed size, endless), a folder or a symlink."""

    name: bytes
    kind: str = "file"
    data: bytes = b""
    listed: int | None = None
    endless: bool = False
    target: bytes = b""
    mtime: int = MTIME

    @property
    def size(self) -> int:
        return len(self.data) if self.listed is None else self.listed


@dataclass
class FtpTree:
    """Folders → entries; what the client did."""

    dirs: dict[str, list[FEntry]] = field(default_factory=lambda: {"/": []})
    endless_listing: set[str] = field(default_factory=set)
    endless_reply: set[str] = field(default_factory=set)
    """Folders whose CWD is answered by a multi-line reply that never ends."""
    mlsd: bool = True
    epsv: bool = True
    pasv_announce: str | None = None
    """The host a PASV reply names instead of the server's own address."""
    upload_root: Path | None = None
    removed: list[str] = field(default_factory=list)
    sent: dict[str, int] = field(default_factory=dict)
    """The most bytes one transfer of a path (RETR, or LIST of a folder) sent."""
    notes: list[str] = field(default_factory=list)

    def folder(self, path: str) -> list[FEntry]:
        """A folder's entries (made with its parents)."""
        path = posixpath.normpath("/" + path.strip("/"))
        if path not in self.dirs:
            parent = posixpath.dirname(path)
            self.folder(parent).append(FEntry(posixpath.basename(path).encode(), "dir"))
            self.dirs[path] = []
        return self.dirs[path]

    def find(self, path: str) -> FEntry | None:
        """The file a RETR/SIZE/MDTM path names, matching names byte for byte (so ``a/b`` is found)."""
        raw = path.encode("utf-8", "surrogateescape")
        for folder, entries in self.dirs.items():
            prefix = folder.rstrip("/").encode() + b"/"
            if raw.startswith(prefix):
                rest = raw[len(prefix) :]
                for e in entries:
                    if e.name == rest and e.kind == "file":
                        return e
        return None

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)


def _stamp(mtime: int) -> str:
    return time.strftime("%Y%m%d%H%M%S", time.gmtime(mtime))


def _line(e: FEntry, mlsd: bool) -> bytes:
    if mlsd:
        kind = {"file": "file", "dir": "dir", "link": "OS.unix=symlink"}[e.kind]
        return b"type=%s;size=%d;modify=%s; %s\r\n" % (kind.encode(), e.size, _stamp(e.mtime).encode(), e.name)
    mode = {"file": b"-rw-r--r--", "dir": b"drwxr-xr-x", "link": b"lrwxrwxrwx"}[e.kind]
    name = e.name + (b" -> " + e.target if e.kind == "link" else b"")
    return b"%s 1 owner group %d Nov 14  2023 %s\r\n" % (mode, e.size, name)


class HostileFtp:
    """One listening server for a :class:`FtpTree`, run on a :class:`LoopThread`."""

    def __init__(self, tree: FtpTree, loop: LoopThread) -> None:
        self.tree = tree
        self.loop = loop
        self.port = 0
        self._server: asyncio.Server | None = None
        self._extra: list[asyncio.Server] = []
        self._writers: set[asyncio.StreamWriter] = set()
        """Every connection accepted (control, data, thief): closed by :meth:`stop`."""
        self.thief_bytes = 0
        self.thief_port = 0

    def start(self) -> HostileFtp:
        """Listen on a random loopback port (and start the thief when PASV lies)."""
        self.loop.call(self._start())
        return self

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._session, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        """Stop listening and close every connection."""

        async def stop() -> None:
            servers = [s for s in [self._server, *self._extra] if s is not None]
            for s in servers:
                s.close()
            for w in list(self._writers):
                w.close()
            for w in list(self._writers):
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(w.wait_closed(), 2)
            for s in servers:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(s.wait_closed(), 2)

        self.loop.call(stop())

    def instance(self, **over: Any) -> dict[str, Any]:
        """An ftp instance config for this server."""
        return {
            "type": "ftp",
            "host": "127.0.0.1",
            "port": self.port,
            "username": USER,
            "password": PASSWORD,
            "tls": "none",
            "root": "/",
            "timeout": "5s",
            **over,
        }

    # -- a session ----------------------------------------------------------------------------------
    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        t = self.tree
        cwd = "/"
        rest = 0
        rnfr: str | None = None
        data: tuple[asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]], asyncio.Server] | None = None

        def reply(text: str) -> None:
            writer.write(text.encode("utf-8", "surrogateescape") + b"\r\n")

        async def passive(announce: str | None) -> int:
            nonlocal data
            fut: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = (
                asyncio.get_running_loop().create_future()
            )

            async def accept(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
                self._writers.add(w)
                if not fut.done():
                    fut.set_result((r, w))
                else:
                    w.close()

            srv = await asyncio.start_server(accept, "127.0.0.1", 0)
            self._extra.append(srv)  # closed after its one connection, or at the latest by stop()
            port = srv.sockets[0].getsockname()[1]
            if announce is not None:
                await self._thief(announce, port)
            if data is not None:
                data[1].close()
            data = (fut, srv)
            return int(port)

        async def channel() -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
            nonlocal data
            if data is None:
                reply("425 Use PASV or EPSV first")
                return None
            (fut, srv), data = data, None
            try:
                return await asyncio.wait_for(fut, 5)
            except TimeoutError:
                reply("425 Can't open data connection")
                return None
            finally:
                srv.close()

        async def send(chunks: Callable[[], Awaitable[bytes | None]], what: str) -> None:
            ch = await channel()
            if ch is None:
                return
            reply("150 Here it comes")
            _, w = ch
            n = 0
            try:
                while (chunk := await chunks()) is not None:
                    w.write(chunk)
                    await w.drain()
                    n += len(chunk)
                    t.sent[what] = max(t.sent.get(what, 0), n)
                w.close()
                reply("226 Transfer complete")
            except (ConnectionError, OSError):
                reply("426 Connection closed; transfer aborted")
                w.close()

        reply("220 hostile FTP")
        try:
            while True:
                raw = await reader.readline()
                if not raw:
                    return
                line = raw.decode("utf-8", "surrogateescape").rstrip("\r\n")
                cmd, _, arg = line.partition(" ")
                cmd = cmd.upper()
                path = posixpath.normpath(posixpath.join(cwd, arg)) if arg else cwd
                if cmd == "USER":
                    reply("331 Password please")
                elif cmd == "PASS":
                    reply("230 Logged in" if arg == PASSWORD else "530 Login incorrect")
                elif cmd == "FEAT":
                    feats = ["211-Features:", " UTF8", " SIZE", " MDTM", " REST STREAM"]
                    if t.mlsd:
                        feats.append(" MLST type*;size*;modify*;")
                    if t.epsv:
                        feats.append(" EPSV")
                    reply("\r\n".join([*feats, "211 End"]))
                elif cmd in ("OPTS", "TYPE", "NOOP", "MODE", "STRU"):
                    reply("200 OK")
                elif cmd == "SYST":
                    reply("215 UNIX Type: L8")
                elif cmd == "PWD":
                    reply(f'257 "{cwd}"')
                elif cmd == "CWD":
                    if path in t.endless_reply:
                        await self._endless_reply(writer, path)
                        return
                    if path in t.dirs:
                        cwd = path
                        reply("250 OK")
                    else:
                        reply("550 No such folder")
                elif cmd == "EPSV" and t.epsv:
                    reply(f"229 Entering Extended Passive Mode (|||{await passive(None)}|)")
                elif cmd == "PASV":
                    port = await passive(t.pasv_announce)
                    host = (t.pasv_announce or "127.0.0.1").replace(".", ",")
                    reply(f"227 Entering Passive Mode ({host},{port >> 8},{port & 255})")
                elif cmd == "REST":
                    rest = int(arg or 0)
                    reply(f"350 Restarting at {rest}")
                elif cmd in ("MLSD", "LIST", "NLST"):
                    folder = cwd if not arg or arg.startswith("-") else path
                    await send(self._listing(folder, cmd == "MLSD"), f"LIST {folder}")
                elif cmd == "RETR":
                    e = t.find(path)
                    if e is None:
                        reply("550 No such file")
                    else:
                        start, rest = rest, 0
                        await send(self._file(e, start, path), path)
                elif cmd in ("SIZE", "MDTM"):
                    e = t.find(path)
                    if e is None:
                        reply("550 No such file")
                    else:
                        reply(f"213 {e.size}" if cmd == "SIZE" else f"213 {_stamp(e.mtime)}")
                elif cmd == "MLST":
                    e = t.find(path)
                    if e is None:
                        reply("550 No such file")
                    else:
                        reply(f"250-Listing\r\n {_line(e, True).decode('utf-8', 'surrogateescape').strip()}\r\n250 End")
                elif cmd == "DELE":
                    reply(self._dele(path))
                elif cmd == "MKD":
                    t.folder(path)
                    if t.upload_root is not None:
                        (t.upload_root / path.strip("/")).mkdir(parents=True, exist_ok=True)
                    reply(f'257 "{path}" created')
                elif cmd == "STOR":
                    await self._stor(path, channel, reply)
                elif cmd == "RNFR":
                    rnfr = path
                    reply("350 Ready for RNTO")
                elif cmd == "RNTO":
                    reply(self._rename(rnfr, path))
                    rnfr = None
                elif cmd == "QUIT":
                    reply("221 Bye")
                    await writer.drain()
                    return
                else:
                    reply("502 Not implemented")
                await writer.drain()
        except (ConnectionError, OSError):
            return
        finally:
            writer.close()

    def _listing(self, folder: str, mlsd: bool) -> Callable[[], Awaitable[bytes | None]]:
        t = self.tree
        entries = list(t.dirs.get(folder, []))
        endless = folder in t.endless_listing
        state = {"i": 0, "sent": 0}
        pad = b"x" * 180

        async def next_chunk() -> bytes | None:
            if endless:
                if state["sent"] >= STREAM_CAP:
                    t.note(
                        f"the endless listing of {folder} reached the server's safety cap of "
                        f"{STREAM_CAP >> 20} MiB: the daemon never stopped reading it"
                    )
                    return None
                i = state["i"]
                state["i"] += 500
                chunk = b"".join(_line(FEntry(b"e%09d-" % n + pad, listed=10), mlsd) for n in range(i, i + 500))
                state["sent"] += len(chunk)
                return chunk
            if state["i"]:
                return None
            state["i"] = 1
            return b"".join(_line(e, mlsd) for e in entries)

        return next_chunk

    def _file(self, e: FEntry, start: int, path: str) -> Callable[[], Awaitable[bytes | None]]:
        t = self.tree
        state = {"at": start}

        async def next_chunk() -> bytes | None:
            at = state["at"]
            if e.endless:
                if at - start >= STREAM_CAP:
                    t.note(
                        f"the server sent {STREAM_CAP >> 20} MiB of the endless file {path}: the daemon never "
                        "stopped reading it"
                    )
                    return None
                state["at"] += 1 << 16
                return b"e" * (1 << 16)
            if at >= len(e.data):
                return None
            state["at"] += 1 << 16
            return e.data[at : at + (1 << 16)]

        return next_chunk

    async def _endless_reply(self, writer: asyncio.StreamWriter, folder: str) -> None:
        sent = 0
        line = b"250-" + b"r" * 200 + b"\r\n"
        block = line * 500
        try:
            while sent < STREAM_CAP:
                writer.write(block)
                await writer.drain()
                sent += len(block)
            self.tree.note(
                f"the endless reply to CWD {folder} reached the server's safety cap of "
                f"{STREAM_CAP >> 20} MiB: the daemon never stopped reading it"
            )
        except (ConnectionError, OSError):
            pass

    def _dele(self, path: str) -> str:
        t = self.tree
        folder, name = posixpath.split(path)
        entries = t.dirs.get(folder, [])
        for e in entries:
            if e.name == name.encode("utf-8", "surrogateescape"):
                entries.remove(e)
                t.removed.append(path)
                return "250 Deleted"
        if t.upload_root is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._local(path))
                return "250 Deleted"
        return "550 No such file"

    def _local(self, path: str) -> Path:
        assert self.tree.upload_root is not None
        rel = path.strip("/")
        if ".." in rel.split("/"):
            raise PermissionError(path)
        return self.tree.upload_root / rel

    async def _stor(self, path: str, channel: Callable[[], Awaitable[Any]], reply: Callable[[str], None]) -> None:
        if self.tree.upload_root is None:
            reply("550 Read-only")
            return
        # 150 before the data connection is there: a client that followed a lying PASV reply has
        # connected elsewhere, and sends its bytes there once it hears 150.
        reply("150 Send it")
        ch = await channel()
        if ch is None:
            return
        r, w = ch
        body = await r.read()
        w.close()
        dest = self._local(path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(body)
        reply("226 Stored")

    def _rename(self, src: str | None, dst: str) -> str:
        if src is None or self.tree.upload_root is None:
            return "503 RNFR first"
        try:
            os.replace(self._local(src), self._local(dst))
        except OSError:
            return "550 Rename failed"
        return "250 Renamed"

    async def _thief(self, host: str, port: int) -> None:
        """Listen on ``host:port`` (the lie in a PASV reply) and count what arrives there."""

        async def steal(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            self._writers.add(w)
            with contextlib.suppress(ConnectionError, OSError):
                while chunk := await r.read(1 << 16):
                    self.thief_bytes += len(chunk)
            w.close()

        for _ in range(20):
            try:
                srv = await asyncio.start_server(steal, host, port)
                self._extra.append(srv)
                self.thief_port = port
                return
            except OSError:
                await asyncio.sleep(0.01)
