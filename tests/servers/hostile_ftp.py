"""A small FTP server that misbehaves on purpose: the hostile peer that vsftpd and pyftpdlib will
not imitate. It runs an asyncio loop in a thread of the test process, on a random loopback port.

It speaks enough FTP for conveyor's client (login, FEAT, MLSD/LIST, MLST, SIZE, REST, RETR,
STOR, renames) over one flat folder held in memory, and can, per server:

* ``listing="endless"``: send MLSD/LIST lines without end (``"trickle"``: one line per 0.2 s);
* ``endless_reply="greeting"`` or a command (``"FEAT"``): a multi-line reply without end;
* list a file with one size and send another (``files={"a": (10, b"30 bytes...")}``; content
  ``None`` is an endless file);
* refuse EPSV and announce another address in PASV (``pasv_to=("127.0.0.2", port)``);
* speak explicit FTPS (``tls=``, a server :class:`ssl.SSLContext`) and misbehave on its data
  channels: ``data_tls="reply_after_handshake"`` sends the 1xx reply only once the data channel's
  TLS handshake is done, ``"no_handshake"`` sends it and never answers the handshake,
  ``"silent"`` does neither; ``stall_after=N`` sends N bytes of a file, then nothing with the
  connection open; ``cut_after=N`` sends N bytes, then drops the connection without TLS's
  close_notify and replies 226 all the same.

Counters (``listing_bytes``, ``reply_bytes``, ``file_bytes``) show how much was sent before the
client hung up; an endless stream gives up after :data:`GIVE_UP` bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

MODIFY = "20260101000000"
GIVE_UP = 48 * 1024 * 1024
"""An endless stream ends after this many bytes, so a client without limits fails its test
(the reply or listing ends wrongly) instead of filling the machine's memory."""
Channel = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@dataclass
class HostileFtp:
    """The server's behaviour, its files and what it saw; ``port`` is set once it listens."""

    files: dict[str, tuple[int, bytes | None]] = field(default_factory=dict)
    """name -> (size the listing announces, bytes RETR sends; None: bytes without end)."""
    listing: str = "normal"
    endless_reply: str | None = None
    epsv: bool = True
    mlsd: bool = True
    pasv_to: tuple[str, int] | None = None
    uploads: dict[str, bytes] = field(default_factory=dict)
    long_line: bool = False
    """An endless reply is one line without end rather than lines without end."""
    tls: ssl.SSLContext | None = None
    data_tls: str = "normal"
    stall_after: int | None = None
    cut_after: int | None = None
    listing_bytes: int = 0
    reply_bytes: int = 0
    file_bytes: int = 0
    sessions: int = 0
    port: int = 0
    host: str = "127.0.0.1"
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None

    def config(self, **overrides: Any) -> dict[str, Any]:
        """An ``instances.<name>`` mapping for conveyor."""
        cfg: dict[str, Any] = {
            "type": "ftp",
            "host": self.host,
            "port": self.port,
            "username": "partner",
            "password": "hostile-secret",
            "root": "/",
            "timeout": "5s",
        }
        if self.tls is not None:
            cfg["tls"] = "explicit"
        cfg.update(overrides)
        return cfg

    # -- lifecycle -------------------------------------------------------
    def start(self) -> HostileFtp:
        """Listen and serve in a thread."""
        ready = threading.Event()
        loop = asyncio.new_event_loop()
        self._loop = loop

        def run() -> None:
            asyncio.set_event_loop(loop)
            server = loop.run_until_complete(asyncio.start_server(self._session, self.host, 0))
            self.port = server.sockets[0].getsockname()[1]
            ready.set()
            try:
                loop.run_forever()
            finally:
                server.close()
                tasks = asyncio.all_tasks(loop)
                for task in tasks:
                    task.cancel()
                loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
                # One more turn: transports closed just now finish closing (their connection_lost).
                loop.run_until_complete(asyncio.sleep(0))
                loop.close()

        self._thread = threading.Thread(target=run, name="hostile-ftp", daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        """Stop serving; open sessions are cancelled."""
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    # -- control channel -------------------------------------------------
    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.sessions += 1
        data: asyncio.Future[Channel] | None = None
        data_server: asyncio.Server | None = None
        rest = 0
        rnfr = ""

        async def say(text: str) -> None:
            writer.write(text.encode() + b"\r\n")
            await writer.drain()

        try:
            if self.endless_reply == "greeting":
                await self._endless_reply(writer, "220")
                return
            await say("220 hostile test server")
            while True:
                raw = await reader.readline()
                if not raw:
                    return
                cmd, _, arg = raw.decode("utf-8", "surrogateescape").rstrip("\r\n").partition(" ")
                cmd = cmd.upper()
                name = arg.rsplit("/", 1)[-1]
                if cmd == self.endless_reply:
                    await self._endless_reply(writer, "211")
                    return
                if cmd == "USER":
                    await say("331 password please")
                elif cmd == "PASS":
                    await say("230 logged in")
                elif cmd == "FEAT":
                    feats = (["MLST type*;size*;modify*;"] if self.mlsd else []) + (["EPSV"] if self.epsv else [])
                    await say("\r\n".join(["211-Features:", *(" " + f for f in feats), "211 End"]))
                elif cmd == "AUTH" and self.tls is not None:
                    await say("234 go ahead")
                    await writer.start_tls(self.tls)
                elif cmd in ("OPTS", "TYPE", "NOOP", "PBSZ", "PROT"):
                    await say("200 ok")
                elif cmd == "SYST":
                    await say("215 UNIX Type: L8")
                elif cmd == "PWD":
                    await say('257 "/" is the current directory')
                elif cmd in ("CWD", "DELE", "RNTO"):
                    if cmd == "RNTO" and rnfr in self.uploads:
                        self.uploads[name] = self.uploads.pop(rnfr)
                    await say("250 ok")
                elif cmd == "MKD":
                    await say(f'257 "{arg}" created')
                elif cmd == "RNFR":
                    rnfr = name
                    await say("350 go on")
                elif cmd == "REST":
                    rest = int(arg)
                    await say("350 restarting")
                elif cmd in ("MLST", "SIZE", "MDTM"):
                    if name not in self.files:
                        await say("550 no such file")
                    elif cmd == "MLST":
                        facts = f"type=file;size={self.files[name][0]};modify={MODIFY};"
                        await say(f"250-Listing\r\n {facts} {arg}\r\n250 End")
                    else:
                        await say(f"213 {self.files[name][0] if cmd == 'SIZE' else MODIFY}")
                elif cmd in ("EPSV", "PASV"):
                    if cmd == "EPSV" and not self.epsv:
                        await say("500 EPSV not understood")
                        continue
                    if data_server is not None:
                        data_server.close()
                    data = asyncio.get_running_loop().create_future()
                    data_server = await asyncio.start_server(
                        _first_connection(data), self.host, 0, ssl=self._data_tls()
                    )
                    port = data_server.sockets[0].getsockname()[1]
                    if cmd == "EPSV":
                        await say(f"229 Entering Extended Passive Mode (|||{port}|)")
                    else:
                        host, port = self.pasv_to or (self.host, port)
                        await say(f"227 Entering Passive Mode ({host.replace('.', ',')},{port >> 8},{port & 255})")
                elif cmd in ("MLSD", "LIST", "RETR", "STOR"):
                    if cmd == "RETR" and name not in self.files:
                        await say("550 no such file")
                        continue
                    early = self.tls is None or self.data_tls in ("normal", "no_handshake")
                    if early:
                        await say("150 here it comes")
                    channel = None
                    if data is not None:
                        with contextlib.suppress(TimeoutError):
                            channel = await asyncio.wait_for(asyncio.shield(data), 1)
                    if data_server is not None:
                        data_server.close()
                        data_server = None
                    data = None
                    if channel is None:
                        # Nobody came (the client went where PASV pointed): claim success all the same.
                        await say("226 done" if cmd == "STOR" else "425 no data connection")
                        continue
                    if self.tls is not None and self._data_tls() is None:
                        await self._hold(*channel)
                        return
                    if not early:
                        await say("150 here it comes")
                    await self._transfer(cmd, name, rest, *channel)
                    rest = 0
                    await say("226 done")
                elif cmd == "QUIT":
                    await say("221 bye")
                    return
                else:
                    await say("502 not implemented")
        except (OSError, asyncio.IncompleteReadError):
            return
        finally:
            if data_server is not None:
                data_server.close()
            writer.close()

    async def _endless_reply(self, writer: asyncio.StreamWriter, code: str) -> None:
        if self.long_line:
            writer.write(f"{code}-".encode())
            block = b"and more " * 1000
        else:
            block = f"{code}-and there is more to say, and more, and more\r\n".encode() * 100
        while self.reply_bytes < GIVE_UP:
            writer.write(block)
            self.reply_bytes += len(block)
            await writer.drain()

    # -- data channel ----------------------------------------------------
    def _data_tls(self) -> ssl.SSLContext | None:
        """The data listener's TLS: its handshake runs on accept, before the connection is handed
        on (a ``start_tls`` later could miss a ClientHello the stream had already buffered)."""
        return None if self.data_tls in ("no_handshake", "silent") else self.tls

    @staticmethod
    async def _hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Keep a data connection open, its handshake unanswered, until the client drops it."""
        try:
            await reader.read()
        except OSError:
            pass
        finally:  # also when the server stops first
            writer.close()

    async def _transfer(
        self, cmd: str, name: str, rest: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            if cmd == "STOR":
                self.uploads[name] = await reader.read()
            elif cmd == "RETR":
                content = self.files[name][1]
                if content is None:
                    while self.file_bytes < GIVE_UP:
                        writer.write(b"\0" * 65536)
                        self.file_bytes += 65536
                        await writer.drain()
                elif self.stall_after is not None or self.cut_after is not None:
                    part = content[rest : rest + (self.stall_after or self.cut_after or 0)]
                    writer.write(part)
                    self.file_bytes += len(part)
                    await writer.drain()
                    if self.cut_after is not None:
                        # abort(): no close_notify, as a server (or a middlebox) that cuts the connection.
                        writer.transport.abort()
                        return
                    await reader.read()  # nothing more, the connection open until the client drops it
                else:
                    writer.write(content[rest:])
                    self.file_bytes += len(content) - rest
            else:
                await self._listing(cmd, writer)
            await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    def _line(self, cmd: str, name: str, size: int) -> bytes:
        if cmd == "MLSD":
            return f"type=file;size={size};modify={MODIFY}; {name}\r\n".encode()
        return f"-rw-r--r--   1 u g {size:>10} Jan  1  2026 {name}\r\n".encode()

    async def _listing(self, cmd: str, writer: asyncio.StreamWriter) -> None:
        if self.listing == "normal":
            for name, (size, _) in self.files.items():
                writer.write(self._line(cmd, name, size))
            return
        n = 0
        while self.listing_bytes < GIVE_UP:
            if self.listing == "trickle":
                block = self._line(cmd, f"slow{n:09d}.csv", 1)
                n += 1
                await asyncio.sleep(0.2)
            else:
                block = b"".join(self._line(cmd, f"f{n + i:09d}.csv", 1) for i in range(1000))
                n += 1000
            writer.write(block)
            self.listing_bytes += len(block)
            await writer.drain()


def _first_connection(into: asyncio.Future[Channel]) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], None]:
    """A data listener's callback: the first connection resolves ``into``, later ones are closed."""

    def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if into.done():
            writer.close()
        else:
            into.set_result((reader, writer))

    return accept


@pytest.fixture
def hostile_ftp() -> Iterator[Any]:
    """``make(**behaviour)`` starts a :class:`HostileFtp`; all stop at teardown."""
    servers: list[HostileFtp] = []

    def make(**kw: Any) -> HostileFtp:
        srv = HostileFtp(**kw).start()
        servers.append(srv)
        return srv

    yield make
    for s in servers:
        s.stop()
