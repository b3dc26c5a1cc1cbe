"""A minimal asyncio FTP/FTPS client: one control connection and its data channels.

Why not aioftp: with explicit TLS, aioftp 0.28.3 hangs on the first data transfer against vsftpd
(aio-libs/aioftp issue 186; reproduced here: ``download_stream`` times out). It does offer the control
channel's session to the data channel (its ``SSLSessionBoundContext``), but it opens the data channel
with ``open_connection(ssl=...)``, which waits for the TLS handshake to finish *before* RETR/LIST is
sent, while vsftpd only starts the data channel's handshake once it has that command: each side waits
for the other until the timeout. Fixing it means replacing aioftp's data-connection code, and its
stream wrapper (``ThrottleStreamIO`` over ``StreamReader``) adds copies per block on the data path.
The FTP we need — a line protocol with a dozen commands — fits in this module, so conveyor owns it:

* control channel: asyncio streams; explicit TLS via ``StreamWriter.start_tls``, implicit from the first byte;
* data channels of FTPS downloads from :data:`THREAD_FROM` bytes: connected by asyncio (directly or
  through the proxy), then read on a thread of their own (:mod:`conveyor.transfer.ftp.reader`) that
  decrypts into a 1 MiB buffer and hands it to the download's synchronous sink: TLS decryption runs
  beside the event loop, and a download holds at most that buffer in memory;
* TLS on data channels resumes the control session (:mod:`conveyor.transfer.ftp.tls`); a download's
  handshake starts as soon as its data connection is open, *concurrently* with sending the command
  and reading the 1xx reply, whichever order the server does things in;
* other data channels (uploads, listings, small files): an :class:`asyncio.BufferedProtocol` that
  hands each received block to the sink on the event loop, with write flow control for uploads;
* uploads read the file in a thread into two reused buffers, one block ahead of the one being sent
  (why not ``loop.sendfile`` for plain FTP is explained at ``FtpInstance._send_file``).

Replies are returned as :class:`Reply`; a 4xx/5xx is raised as :class:`FtpReplyError` and mapped to
conveyor's error tree by :mod:`conveyor.transfer.ftp.instance`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from conveyor.proxy import connect_first
from conveyor.transfer.ftp.config import FtpConfig
from conveyor.transfer.ftp.data import DataProtocol, abort_transport
from conveyor.transfer.ftp.listing import parse_epsv, parse_pasv
from conveyor.transfer.ftp.reader import DataReader
from conveyor.transfer.ftp.tls import (
    SessionReusingContext,
    check_peer,
    offer_session,
    start_data_tls,
    withdraw_session,
)

log = logging.getLogger("conveyor.ftp")

BUFFER = 1024 * 1024
"""Receive buffer of a data channel: big reads keep the per-block Python overhead negligible."""
WRITE_HIGH = 1024 * 1024
"""Write buffer high-water mark of an FTPS upload's data channel: enough to encrypt the next piece
while the kernel sends the last; a larger one only adds copies of the transport's buffer."""
SNDBUF = 4 * 1024 * 1024
"""SO_SNDBUF of an upload's data channel (capped at net.core.wmem_max, then doubled by the kernel)."""
THREAD_FROM = 4 * 1024 * 1024
"""FTPS downloads of at least this many bytes are read on a thread (:mod:`conveyor.transfer.ftp.reader`);
for smaller ones starting the thread costs more than decrypting on the loop. Plain FTP stays on the
loop: it reads 1 MiB per call there, and a thread made cold runs slower (docs/performance-notes.md)."""
MAX_REPLY_LINES = 1000
"""Most lines of one control-channel reply: the longest a client of ours asks for (FEAT, MLST) has a
few dozen; a server sending more is misbehaving, and its reply is not kept growing in memory."""
MAX_REPLY_BYTES = 64 * 1024
"""Most bytes of one control-channel reply (and of one reply line), for the same reason."""


def certificate_identity(ssl_object: ssl.SSLObject | None) -> str | None:
    """``TLSv1.3, certificate sha256:<hex>``: the SHA-256 of the server certificate (DER), in the
    form ``tls_fingerprint`` takes, so a certificate seen on the status page can be pinned."""
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if not der or ssl_object is None:
        return None
    return f"{ssl_object.version()}, certificate sha256:{hashlib.sha256(der).hexdigest()}"


@dataclass(frozen=True)
class Reply:
    """A complete server reply: its code and text (all lines joined by newlines)."""

    code: int
    text: str


class FtpReplyError(Exception):
    """The server answered a command with a 4xx/5xx (or an unexpected) reply."""

    def __init__(self, command: str, reply: Reply) -> None:
        super().__init__(f"{command} -> {reply.code} {reply.text}")
        self.command = command
        self.reply = reply


class FtpProtocolError(Exception):
    """The server broke the protocol (a reply past the size caps): the connection is dropped."""


def _too_long(command: str | None) -> FtpProtocolError:
    to = f" to {command}" if command else ""
    return FtpProtocolError(
        f"the server's reply{to} is longer than {MAX_REPLY_LINES} lines or "
        f"{MAX_REPLY_BYTES // 1024} KiB; connection dropped"
    )


class ClosedAfterHandshake(ConnectionError):
    """The server closed the connection right after the TLS handshake, before its first reply.

    With TLS 1.3 the client's handshake ends before the server has checked the client's
    certificate: a server that refuses it (or its absence) sends an alert, which a reset of the
    connection can overtake. That close is the only sign, so it gets its own class."""


class EnoughData(Exception):
    """Raised by a download's ``on_data`` once it holds the bytes it wanted (a segment of the file):
    the data channel is closed and the transfer's final reply read (426 for the cut transfer, or
    226 had it ended), so the control connection stays usable for the next command."""


class Stale(Exception):
    """A pooled connection turned out to have been closed by the server while idle (421 or EOF)."""


class FtpConnection:
    """One logged-in control connection, with the server's features."""

    def __init__(self, cfg: FtpConfig, tls: SessionReusingContext | None) -> None:
        self.cfg = cfg
        self._tls = tls
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self.features: set[str] = set()
        self.home = "/"
        self.broken = False
        """The control channel may be out of step (timeout, network error): do not reuse it."""
        self.reused = False
        """Taken from the pool: a 421/EOF on its first reply means the server closed it while idle."""
        self.last_used = 0.0
        self.tls_version: str | None = None
        self.client_certificate = tls.client_certificate if tls is not None else None
        """Subject of the client certificate this connection presents, if any."""
        self.certificate: str | None = None
        """The server certificate of the control connection, as the status page shows it."""
        self.unix = False
        """SYST says UNIX: LIST takes ``-a``."""
        self._epsv = True
        self.rtt: float | None = None
        """Seconds of one command's round trip during login (``TYPE I``): how far the server is."""
        self._rx: memoryview | None = None
        """The receive buffer, reused by every transfer of this connection: allocating 1 MiB per
        transfer fragments the heap, and the process's memory grows with each small download."""

    # -- control channel -----------------------------------------------------
    async def connect(self, password: str) -> Reply:
        """Open, secure and log in; returns the server's welcome reply."""
        cfg, t = self.cfg, self.cfg.timeout
        implicit = cfg.tls == "implicit"
        async with asyncio.timeout(t):
            proxy = cfg.proxy_url
            # Through a proxy, asyncio gets the tunnel's socket: TLS then runs inside the tunnel.
            where: dict[str, Any] = (
                {"sock": await proxy.connect(cfg.host, cfg.effective_port, t)}
                if proxy is not None
                else {"host": cfg.host, "port": cfg.effective_port}
            )
            self._reader, self._writer = await asyncio.open_connection(
                **where,
                limit=MAX_REPLY_BYTES,
                ssl=self._tls if implicit else None,
                server_hostname=cfg.host if implicit else None,
                ssl_handshake_timeout=t if implicit else None,
            )
            sock = self._writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            welcome = (
                await self._first_tls_reply(self._expect(None, (2,))) if implicit else await self._expect(None, (2,))
            )
            if cfg.tls == "explicit":
                await self.command("AUTH TLS", (2,))
                assert self._tls is not None
                await self._writer.start_tls(self._tls, server_hostname=cfg.host, ssl_handshake_timeout=t)
            if cfg.tls != "none":
                ssl_object = self._writer.get_extra_info("ssl_object")
                check_peer(ssl_object, cfg, "")
                self.tls_version = ssl_object.version() if ssl_object is not None else None
                self.certificate = certificate_identity(ssl_object)
            user = self.command(f"USER {cfg.username}", (2, 3))
            reply = await (self._first_tls_reply(user) if cfg.tls == "explicit" else user)
            if reply.code // 100 == 3:
                await self._send("PASS " + password, shown="PASS ***")
                await self._expect("PASS", (2,))
            if cfg.tls != "none":
                await self.command("PBSZ 0", (2,))
                await self.command("PROT P", (2,))
            feat = await self.command("FEAT")
            if feat.code // 100 == 2:
                self.features = {ln.strip().split(" ")[0].upper() for ln in feat.text.splitlines()[1:-1]}
            if "UTF8" in self.features:
                await self.command("OPTS UTF8 ON")
            t0 = asyncio.get_running_loop().time()
            await self.command("TYPE I", (2,))
            self.rtt = asyncio.get_running_loop().time() - t0
            self.unix = "UNIX" in (await self.command("SYST")).text.upper()
            pwd = await self.command("PWD")
            if pwd.code == 257 and pwd.text.count('"') >= 2:
                self.home = pwd.text.split('"', 1)[1].rsplit('"', 1)[0].replace('""', '"') or "/"
        return welcome

    @staticmethod
    async def _first_tls_reply(read: Awaitable[Reply]) -> Reply:
        """The first reply over a new TLS session; a close instead is :class:`ClosedAfterHandshake`."""
        try:
            return await read
        except (ConnectionError, ssl.SSLEOFError) as e:
            raise ClosedAfterHandshake(f"connection closed right after the TLS handshake ({e})") from e

    async def _send(self, line: str, shown: str | None = None) -> None:
        assert self._writer is not None
        if "\r" in line or "\n" in line:
            raise ValueError("a path or name with a line break cannot be sent over FTP")
        log.debug("%s> %s", self.cfg.host, shown or line)
        self._writer.write(line.encode("utf-8", "surrogateescape") + b"\r\n")

    async def _read_reply(self, command: str | None = None) -> Reply:
        assert self._reader is not None
        lines: list[str] = []
        code = ""
        size = 0
        async with asyncio.timeout(self.cfg.timeout):
            while True:
                try:
                    raw = await self._reader.readline()
                except ValueError:  # one line longer than the stream's limit, MAX_REPLY_BYTES
                    raise _too_long(command) from None
                if not raw:
                    raise ConnectionResetError("the server closed the control connection")
                size += len(raw)
                if size > MAX_REPLY_BYTES or len(lines) >= MAX_REPLY_LINES:
                    raise _too_long(command)
                text = raw.decode("utf-8", "surrogateescape").rstrip("\r\n")
                lines.append(text)
                if not code:
                    if len(text) < 3 or not text[:3].isdigit():
                        raise ConnectionError(f"not an FTP reply: {text[:80]!r}")
                    code = text[:3]
                    if text[3:4] != "-":
                        break
                elif text.startswith(code + " ") or text == code:
                    break
        reply = Reply(int(code), "\n".join([lines[0][4:], *lines[1:]]) if len(lines) > 1 else lines[0][4:])
        log.debug("%s< %d %s", self.cfg.host, reply.code, reply.text.splitlines()[0] if reply.text else "")
        return reply

    async def _expect(self, command: str | None, ok: tuple[int, ...] | None) -> Reply:
        try:
            reply = await self._read_reply(command)
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as e:
            if self.reused:
                raise Stale(str(e)) from e
            self.broken = True
            raise
        except BaseException:
            self.broken = True
            raise
        if self.reused:
            self.reused = False
            if reply.code == 421:
                raise Stale(reply.text)
        if reply.code == 421:
            self.broken = True
        if ok is not None and reply.code // 100 not in ok:
            raise FtpReplyError(command or "connect", reply)
        return reply

    async def command(self, line: str, ok: tuple[int, ...] | None = None) -> Reply:
        """Send one command and read its reply; raise FtpReplyError unless its class is in ``ok``."""
        await self._send(line)
        return await self._expect(line.split(" ", 1)[0], ok)

    @property
    def session(self) -> Any:
        """The control channel's TLS session, resumed by every data channel."""
        assert self._writer is not None
        ssl_object = self._writer.get_extra_info("ssl_object")
        return ssl_object.session if ssl_object is not None else None

    async def quit(self) -> None:
        """Say goodbye (briefly) and close; never raises."""
        with contextlib.suppress(Exception):
            if not self.broken and self._writer is not None and not self._writer.is_closing():
                async with asyncio.timeout(min(self.cfg.timeout, 2.0)):
                    await self._send("QUIT")
                    await self._read_reply()
        self.abort()

    def abort(self) -> None:
        """Close the control connection at once."""
        self.broken = True
        if self._writer is not None:
            abort_transport(self._writer.transport)

    @property
    def closed(self) -> bool:
        """Whether the connection is known to be gone."""
        return self._writer is None or self._writer.is_closing() or (self._reader is not None and self._reader.at_eof())

    # -- data channels -------------------------------------------------------
    async def _passive_address(self) -> tuple[str, int]:
        """EPSV (or PASV): where to open the data connection."""
        cfg = self.cfg
        assert self._writer is not None
        peer = self._writer.get_extra_info("peername")[0]
        host, port = peer, 0
        if self._epsv:
            reply = await self.command("EPSV")
            if reply.code == 229:
                port = parse_epsv(reply.text)
            else:
                self._epsv = False  # remembered for this connection; PASV from now on
        if not port:
            reply = await self.command("PASV", (2,))
            announced, port = parse_pasv(reply.text)
            if cfg.pasv_trust_address:
                host = announced
            elif announced != peer:
                # A NAT's private address, or a hostile server aiming the data channel elsewhere.
                log.debug(
                    "%s: PASV announced %s; connecting to the control connection's address %s",
                    cfg.host,
                    announced,
                    peer,
                )
        if cfg.proxy_url is not None and not cfg.pasv_trust_address:
            host = cfg.host  # every data channel goes through the proxy, to the server's name as the control did
        return host, port

    async def _open_passive(self, proto: DataProtocol) -> asyncio.Transport:
        """A passive data connection as an asyncio transport (uploads)."""
        host, port = await self._passive_address()
        async with asyncio.timeout(self.cfg.timeout):
            sock = await self._connect_data(host, port)
            transport, _ = await asyncio.get_running_loop().create_connection(lambda: proto, sock=sock)
        return transport

    async def _connect_data(self, host: str, port: int) -> socket.socket:
        """A connected non-blocking socket to a passive data port, through the proxy if there is one."""
        proxy = self.cfg.proxy_url
        if proxy is not None:
            return await proxy.connect(host, port, self.cfg.timeout)
        loop = asyncio.get_running_loop()
        try:
            # An address (the control connection's peer, as a rule) needs no lookup: uvloop's
            # getaddrinfo would still go through its thread pool, a wake-up per data channel.
            addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
        except socket.gaierror:
            addresses = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        return await connect_first(addresses)

    async def _open_active(self) -> socket.socket:
        assert self._writer is not None
        local = self._writer.get_extra_info("sockname")[0]
        family = socket.AF_INET6 if ":" in local else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            listener.bind((local, 0))
            listener.listen(1)
            listener.setblocking(False)
            port = listener.getsockname()[1]
            if family == socket.AF_INET:
                await self.command(f"PORT {local.replace('.', ',')},{port >> 8},{port & 255}", (2,))
            else:
                await self.command(f"EPRT |2|{local}|{port}|", (2,))
        except BaseException:
            listener.close()
            raise
        return listener

    async def transfer(
        self,
        command: str,
        *,
        on_data: Callable[[memoryview], None] | None = None,
        send: Callable[[DataProtocol], Awaitable[None]] | None = None,
        rest: int = 0,
        size: int | None = None,
    ) -> Reply:
        """Run ``command`` (RETR, STOR, MLSD, LIST) over a new data channel; returns the final reply.

        Received bytes go to ``on_data``, from offset ``rest`` (REST) of a download; ``send`` writes
        the upload and closes the channel. An FTPS RETR is read on a thread of its own, which also
        calls ``on_data``, unless ``size`` says it brings fewer than :data:`THREAD_FROM` bytes;
        everything else is read on the event loop.
        """
        if self._rx is None:
            self._rx = memoryview(bytearray(BUFFER))
        threaded = (
            self._tls is not None
            and send is None
            and command.startswith("RETR ")
            and (size is None or size >= THREAD_FROM)
        )
        try:
            if threaded:
                return await self._receive(command, on_data, rest)
            return await self._on_loop(command, on_data, send, rest)
        except FtpReplyError as e:
            if e.reply.code // 100 != 4 and e.reply.code // 100 != 5:
                self.broken = True
            raise
        except BaseException:
            self.broken = True
            raise

    async def _command(self, command: str, rest: int, listener: socket.socket | None) -> socket.socket | None:
        """REST (when ``rest``), then ``command`` and its 1xx reply; in active mode (``listener``),
        the data connection the server opened, once it came from the server's address."""
        loop = asyncio.get_running_loop()
        if rest:
            await self.command(f"REST {rest}", (3,))
        await self._send(command)
        if listener is None:
            await self._expect(command.split(" ", 1)[0], (1,))
            return None
        accept = loop.create_task(loop.sock_accept(listener))
        try:
            await self._expect(command.split(" ", 1)[0], (1,))
            async with asyncio.timeout(self.cfg.timeout):
                conn, addr = await accept
        finally:
            if not accept.done():
                accept.cancel()
        assert self._writer is not None
        if addr[0] != self._writer.get_extra_info("peername")[0]:  # port theft (RFC 2577)
            conn.close()
            raise ConnectionError(f"active data connection came from {addr[0]}, not the server")
        return conn

    async def _receive(self, command: str, on_data: Callable[[memoryview], None] | None, rest: int) -> Reply:
        """A large FTPS download, its data channel read on a thread (:mod:`conveyor.transfer.ftp.reader`)."""
        t = self.cfg.timeout
        name = command.split(" ", 1)[0]
        assert self._rx is not None
        reader = DataReader(on_data, self._rx, t)
        listener: socket.socket | None = None
        start = functools.partial(
            reader.start,
            self._tls,
            self.session if self._tls is not None else None,
            self.cfg.host,
            functools.partial(check_peer, cfg=self.cfg, instance=""),
        )
        try:
            if self.cfg.passive:
                host, port = await self._passive_address()
                async with asyncio.timeout(t):
                    reader.attach(await self._connect_data(host, port))
                # TLS's first flight leaves now and waits for the server, which answers it once it
                # has the command, in whichever order it sends its 1xx reply: one round trip less.
                start()
            else:
                listener = await self._open_active()
            accepted = await self._command(command, rest, listener)
            if accepted is not None:
                reader.attach(accepted)
                start()
            if self._tls is not None:
                try:
                    async with asyncio.timeout(t):
                        await reader.ready
                except (OSError, ssl.SSLError) as e:
                    # The server usually says why on the control channel (522 session reuse required).
                    why = await self._reply_if_any(1.0)
                    if why is not None and why.code >= 400:
                        raise FtpReplyError(name, why) from e
                    raise
            try:
                await self._wait_done(reader)
            except EnoughData:
                reader.abort()
                return await self._expect(name, (2, 4))
            final = await self._expect(name, (2,))
            reader.done.result()  # a reset data channel is an error even after a 226
            return final
        finally:
            if listener is not None:
                listener.close()
            reader.abort()

    async def _on_loop(
        self,
        command: str,
        on_data: Callable[[memoryview], None] | None,
        send: Callable[[DataProtocol], Awaitable[None]] | None,
        rest: int,
    ) -> Reply:
        """A transfer whose data channel is an asyncio transport: uploads, listings, small downloads."""
        loop = asyncio.get_running_loop()
        t = self.cfg.timeout
        assert self._rx is not None
        proto = DataProtocol(on_data, self._rx)
        transport: Any = None
        listener: socket.socket | None = None
        tls_task: asyncio.Task[asyncio.Transport] | None = None
        name = command.split(" ", 1)[0]
        # Before the data connection opens: uvloop starts its TLS in the context it was opened in.
        offered = offer_session(self.session) if self._tls is not None else None
        try:
            if self.cfg.passive:
                transport = await self._open_passive(proto)
            else:
                listener = await self._open_active()
            accepted = await self._command(command, rest, listener)
            if accepted is not None:
                transport, _ = await loop.connect_accepted_socket(lambda: proto, accepted)
            if self._tls is not None:
                # No isinstance check: uvloop's transports do not derive from asyncio.Transport.
                tls_task = loop.create_task(start_data_tls(transport, proto, self._tls, self.session, self.cfg.host, t))
                try:
                    transport = proto.transport = await tls_task
                except (OSError, ssl.SSLError) as e:
                    # The server usually says why on the control channel (522 session reuse required).
                    why = await self._reply_if_any(1.0)
                    if why is not None and why.code >= 400:
                        raise FtpReplyError(name, why) from e
                    raise
                check_peer(transport.get_extra_info("ssl_object"), self.cfg, "")
            if send is not None:
                raw = transport.get_extra_info("socket")
                if self._tls is not None:
                    # Some buffering: the next piece is encrypted while the kernel still sends the last.
                    transport.set_write_buffer_limits(high=WRITE_HIGH, low=WRITE_HIGH // 4)
                else:
                    # Plain: the sender waits until all it wrote has reached the socket, so the
                    # transport copies only what the socket could not take at once.
                    transport.set_write_buffer_limits(high=0)
                if raw is not None:
                    raw.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SNDBUF)
                await send(proto)
            else:
                try:
                    await self._wait_done(proto)
                except EnoughData:
                    abort_transport(proto.transport or transport)
                    return await self._expect(name, (2, 4))
            final = await self._expect(name, (2,))
            if send is None:
                proto.done.result()  # a reset data channel is an error even after a 226
            return final
        finally:
            if tls_task is not None and not tls_task.done():
                tls_task.cancel()
            if listener is not None:
                listener.close()
            abort_transport(proto.transport or transport)
            if offered is not None:
                withdraw_session(offered)

    async def _reply_if_any(self, wait: float) -> Reply | None:
        """A reply that arrives within ``wait`` seconds, or None."""
        try:
            async with asyncio.timeout(wait):
                return await self._read_reply()
        except (OSError, TimeoutError, ConnectionError):
            return None

    async def _wait_done(self, reader: DataReader | DataProtocol) -> None:
        """Wait for the end of a download; fail after ``timeout`` seconds without a byte."""
        t = self.cfg.timeout
        while not reader.done.done():
            await asyncio.wait({reader.done}, timeout=t)
            if not reader.done.done() and reader.idle() >= t:
                raise TimeoutError(f"no data for {t:g}s")
        reader.done.result()
