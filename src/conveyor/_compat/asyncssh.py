"""asyncssh's private parts: every use of them, checked at import, with the public fallback.

Why: once encrypted, asyncssh sends an empty SSH_MSG_IGNORE ahead of every packet (the RFC 4251
9.3.1 countermeasure for CBC ciphers); with the AEAD/CTR ciphers conveyor offers it protects nothing
and doubles the packets an upload encrypts and writes. Nothing public turns it off, so the
connection's undocumented ``send_packet`` is wrapped to drop exactly those.
Second: asyncssh formats a log line for every SSH packet it sends or receives (the packet type's
name, a byte count) before its logger finds packet logging off, about 8 % of the event loop's time
in a download. Where asyncssh's logger is not at DEBUG (packet logs need DEBUG and a debug level
of 3), the connection's ``log_received_packet`` / ``log_sent_packet`` are replaced by no-ops.
Third: asyncssh keeps what it received in one bytes buffer and slices it twice per SSH packet,
copying all that follows each time. A 256 KiB read from the socket holds eight 32 KiB packets
(OpenSSH's size), so every byte was copied about eight times before decryption, some 10 % of
the event loop's CPU in a download. With AES-GCM the packet length travels in clear, so the
received data is handed to asyncssh one packet at a time, cut at the packet boundaries
(the wrapped ``data_received``), and the buffer it slices never holds more than one packet.
Fourth: a download is almost all SSH_MSG_CHANNEL_DATA packets (32 KiB each from OpenSSH), and
asyncssh's way through its layers for each costs about as much CPU as the rest of the download.
A whole AES-GCM packet of channel data for an open channel is therefore decrypted (the same
AES-GCM, the same nonce sequence, its tag checked) and handed to the channel's ``_accept_data``
here, as asyncssh's ``_recv_packet`` and ``_process_data`` would do; any other packet, and any
packet that does not check out (a bad tag, a wrong length, a closed channel, an exceeded window),
goes to asyncssh untouched, which then decides as it always does.
A packet that a socket read ends inside is kept (its start) until the next read completes it,
and then takes the same way, where asyncssh used to get it cut in two; for an SFTP channel
whose reads :func:`read_sender` sends, the data goes to the SFTP stream as a view of the
decrypted packet rather than a copy (that stream joins whole SFTP packets into new bytes).
Fifth: :func:`read_sender` writes a download's SFTP read requests several to one channel write
(one SSH packet and one system call instead of one each) and parses each answer when it
arrives, in the waiter asyncssh resolves, instead of in the task it would wake; the data is a
view of the answer, which the spool keeps as it is. From then on that session's SFTP answers are
cut from the channel's data and handed to their waiters directly (:func:`_frame_answers`), without
asyncssh's SFTP stream, its reader task and its ``readexactly`` (a lock, a wake-up and a buffer
of pieces per answer): only from a moment when no request is outstanding and the stream holds
nothing, so that no answer is split between the two ways.
Fallback: the connection is left as asyncssh made it: correct, with more CPU per MiB uploaded
and downloaded (docs/performance-notes.md).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, cast

import asyncssh

from conveyor._compat import Choice, choose

log = logging.getLogger("conveyor.sftp")

TESTED = ((2, 23, 1), (2, 25))
"""asyncssh versions the private path was tested with: [low, high), as pyproject.toml bounds them."""

_PADDING_CALL = "self.send_packet(MSG_IGNORE, String(b''))"
"""How asyncssh sends the padding: through ``self``, so an instance attribute in front of it sees it."""


def feature_problem(conn_class: type = asyncssh.SSHClientConnection) -> str | None:
    """What no longer fits the wrapper in ``conn_class`` and asyncssh's private modules; None when all does."""
    try:
        from asyncssh.constants import MSG_IGNORE
        from asyncssh.packet import String
    except ImportError as e:
        return f"cannot import its packet helpers ({e})"
    if MSG_IGNORE != 2 or String(b"") != b"\0\0\0\0":
        return "its SSH_MSG_IGNORE constant or string encoding changed"
    send = getattr(conn_class, "send_packet", None)
    if not inspect.isfunction(send):
        return f"{conn_class.__name__}.send_packet is missing"
    params = list(inspect.signature(send).parameters.values())
    shape = [(p.name, p.kind) for p in params]
    expected = [
        ("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        ("pkttype", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        ("args", inspect.Parameter.VAR_POSITIONAL),
        ("handler", inspect.Parameter.KEYWORD_ONLY),
    ]
    if shape != expected or params[3].default is not None:
        return f"{conn_class.__name__}.send_packet{inspect.signature(send)} has an unknown signature"
    try:
        source = inspect.getsource(send)
    except (OSError, TypeError):
        return "the source of send_packet is not readable, so how it pads cannot be checked"
    if _PADDING_CALL not in source:
        return "send_packet no longer sends its padding through self.send_packet"
    try:
        from asyncssh.channel import SSHClientChannel
        from asyncssh.packet import SSHPacketHandler
    except ImportError as e:
        return f"cannot import its packet handler ({e})"
    for name in ("log_received_packet", "log_sent_packet"):
        method = getattr(SSHPacketHandler, name, None)
        if not inspect.isfunction(method):
            return f"SSHPacketHandler.{name} is missing"
        names = list(inspect.signature(method).parameters)
        if names != ["self", "pkttype", "pktid", "packet", "note"]:
            return f"SSHPacketHandler.{name}{inspect.signature(method)} has an unknown signature"
        for cls in (conn_class, SSHClientChannel):
            if getattr(cls, name, None) is not method:
                return f"{cls.__name__}.{name} is no longer SSHPacketHandler's"
    return _split_problem(conn_class) or _read_problem()


_SPLIT_SOURCES = {
    "data_received": ("self._inpbuf += data", "self._recv_data()"),
    "_recv_data": ("self._reset_keepalive_timer()",),
    "_recv_pkthdr": (
        "self._packet = self._inpbuf[:self._recv_blocksize]",
        "self._pktlen = int.from_bytes(pktlen, 'big')",
        "self._recv_handler = self._recv_packet",
        "if self._pktlen > self._max_recv_pktlen:",
    ),
    "_recv_packet": (
        "rem = 4 + self._pktlen + self._recv_macsize - self._recv_blocksize",
        "self._inpbuf = self._inpbuf[rem:]",
        "orig_payload = packet_data[1:-packet_data[0]]",
        "handler = self._channels[recv_chan]",
        "result = handler.process_packet(pkttype, seq, packet)",
        "self._finish_recv_packet(pkttype, seq)",
    ),
    "_finish_recv_packet": ("self._recv_handler = self._recv_pkthdr", "self._recv_seq = (seq + 1) & 0xffffffff"),
}
"""What :func:`_split_packets` relies on in the connection's receive path: the buffer it appends
to, how a packet's length is read and how much of the buffer the packet then takes."""


def _split_problem(conn_class: type) -> str | None:
    """What no longer fits :func:`_split_packets` in ``conn_class`` and asyncssh's GCM shim and channels."""
    try:
        from asyncssh.channel import SSHChannel, SSHClientChannel
        from asyncssh.constants import MSG_CHANNEL_DATA
        from asyncssh.crypto.cipher import GCMCipher
        from asyncssh.encryption import GCMEncryption
        from asyncssh.misc import DisconnectError  # noqa: F401  (what a packet's handler may raise)
        from asyncssh.packet import SSHPacketHandler
        from cryptography.exceptions import InvalidTag  # noqa: F401
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: F401
    except ImportError as e:
        return f"cannot import its GCM shim or channels ({e})"
    if MSG_CHANNEL_DATA != 94:
        return "its SSH_MSG_CHANNEL_DATA constant changed"
    handlers = getattr(SSHClientChannel, "_packet_handlers", {})
    if handlers.get(MSG_CHANNEL_DATA) is not getattr(SSHChannel, "_process_data", None):
        return "its channels no longer take channel data in SSHChannel._process_data"
    if SSHClientChannel.process_packet is not SSHPacketHandler.process_packet:
        return "its channels dispatch packets some other way"
    checks = [(conn_class, name, calls) for name, calls in _SPLIT_SOURCES.items()]
    checks.append((GCMEncryption, "decrypt_header", ("return first_block, first_block[:header_len]",)))
    checks.append((GCMEncryption, "decrypt_packet", ("return self._cipher.verify_and_decrypt(first[:header_len],",)))
    checks.append(
        (
            GCMCipher,
            "verify_and_decrypt",
            ("AESGCM(self._key).decrypt(self._iv, data + mac, header)", "self._update_iv()"),
        )
    )
    checks.append((GCMCipher, "_update_iv", ("self._iv = self._iv[:4] + invocation.to_bytes(8, 'big')",)))
    checks.append(
        (
            SSHChannel,
            "_process_data",
            (
                "if self._recv_state != 'open':",
                "data = packet.get_string()",
                "packet.check_end()",
                "if datalen > self._recv_window:",
                "self._accept_data(data)",
            ),
        )
    )
    for cls, name, calls in checks:
        problem = _source_problem(cls, name, calls, "parses packets as expected")
        if problem:
            return problem
    return None


def _source_problem(cls: type, name: str, calls: tuple[str, ...], does: str) -> str | None:
    """What is wrong with method ``name`` of ``cls``: missing, unreadable, or without one of ``calls``."""
    method = getattr(cls, name, None)
    if not inspect.isfunction(method):
        return f"{cls.__name__}.{name} is missing"
    try:
        source = inspect.getsource(method)
    except (OSError, TypeError):
        return f"the source of {cls.__name__}.{name} is not readable"
    if any(call not in source for call in calls):
        return f"{cls.__name__}.{name} no longer {does}"
    return None


# -- SFTP read requests --------------------------------------------------------------------------
_READ_SOURCES = {
    "_send_request": (
        "pktid = self._next_pktid",
        "self._next_pktid = (self._next_pktid + 1) & 0xffffffff",
        "self._requests[pktid] = waiter",
        "self.send_packet(pkttype, pktid, hdr, *args)",
    ),
    "send_packet": (
        "if not self._writer:",
        "elif self._writer.channel.is_closing():",
        "payload = Byte(pkttype) + b''.join(args)",
        "self._writer.write(UInt32(len(payload)) + payload)",
    ),
    "_process_packet": ("waiter = self._requests.pop(pktid)", "waiter.set_result((pkttype, packet))"),
    "_cleanup": ("if not waiter.cancelled():", "waiter.set_exception(req_exc)"),
    "read": ("FXP_READ, String(handle), UInt64(offset), UInt32(length)))",),
    "_process_data": ("data = packet.get_string()", "packet.check_end()"),
    "_process_status": ("exc = SFTPError.construct(packet, self._utf8_decode_errors)",),
}
"""What :func:`read_sender` relies on in asyncssh's SFTP client: how a request gets its id and
its waiter, how the answer reaches the waiter, and how a read's answer is parsed."""


def _read_problem() -> str | None:
    """What no longer fits :func:`read_sender` in asyncssh's SFTP client; None when all does."""
    try:
        from asyncssh.constants import FXP_DATA, FXP_READ, FXP_STATUS
        from asyncssh.sftp import SFTPClientFile, SFTPClientHandler, SFTPEOFError
    except ImportError as e:
        return f"cannot import its SFTP client ({e})"
    if (FXP_READ, FXP_DATA, FXP_STATUS) != (5, 103, 101) or not issubclass(SFTPEOFError, asyncssh.SFTPError):
        return "its SFTP constants changed"
    try:
        init = inspect.getsource(SFTPClientFile.__init__)
    except (OSError, TypeError):
        return "the source of SFTPClientFile.__init__ is not readable"
    if "self._handler = handler" not in init or "self._handle: Optional[bytes] = handle" not in init:
        return "SFTPClientFile no longer keeps its _handler and _handle"
    for name, calls in _READ_SOURCES.items():
        problem = _source_problem(SFTPClientHandler, name, calls, "works as expected")
        if problem:
            return problem
    return None


def select(conn_class: type = asyncssh.SSHClientConnection, version: str = asyncssh.__version__) -> Choice:
    """The path for connections of ``conn_class`` under asyncssh ``version``."""
    return choose(
        "asyncssh",
        version,
        TESTED,
        feature_problem(conn_class),
        "its connection's send_packet is wrapped to drop the empty SSH_MSG_IGNORE before each packet, "
        "its per-packet log calls skipped while packet logging is off, received data handed to it "
        "one AES-GCM packet at a time, and SFTP read requests sent several to a channel write",
    )


CHOICE = select()


def lighten(conn: asyncssh.SSHClientConnection) -> None:
    """Stop ``conn`` from sending an empty SSH_MSG_IGNORE ahead of every packet, and from formatting
    a log line per packet that nothing logs.

    Dropping an empty ignore message is always safe: the peer must discard it anyway.
    """
    CHOICE.announce(log)
    if not CHOICE.private:
        return
    from asyncssh.constants import MSG_IGNORE
    from asyncssh.packet import String

    empty = String(b"")
    send = conn.send_packet

    def send_packet(pkttype: int, *args: bytes, handler: Any = None) -> None:
        if pkttype == MSG_IGNORE and args == (empty,):
            return
        send(pkttype, *args, handler=handler)

    conn.send_packet = send_packet  # type: ignore[method-assign]
    _split_packets(conn)
    _quiet_packet_logs()


_VIEW_CHANNELS: weakref.WeakSet[Any] = weakref.WeakSet()
"""SFTP channels whose reader takes channel data as memoryviews: only :func:`read_sender`'s,
whose stream reads whole SFTP packets (joined into new bytes), never lines."""
KEEPALIVE_RESET_EVERY = 1.0
"""Seconds between restarts of the keepalive timer while data flows. asyncssh restarts it on every
socket read (a cancelled and a new timer each); restarted at most this often, a keepalive that is
due can only come this much early."""


def _split_packets(conn: asyncssh.SSHClientConnection) -> None:
    """Hand what ``conn`` receives to asyncssh one packet at a time while the cipher is AES-GCM
    (the packet length in clear); any other cipher, and anything unexpected, gets it whole."""
    from asyncssh.encryption import GCMEncryption

    c: Any = conn
    received = c.data_received
    pkthdr, packet = c._recv_pkthdr, c._recv_packet
    channel_data = _channel_data(c)

    def rest_of_packet(buf: bytes, more: memoryview) -> int:
        """Bytes of ``more`` that complete the packet asyncssh is parsing (0: not known)."""
        handler, have = c._recv_handler, len(buf)
        if handler == pkthdr:  # nothing of the packet taken yet: its length is in the first 4 bytes
            head = buf[:4] if have >= 4 else buf + more[: 4 - have]
            if len(head) < 4:
                return 0
            return 4 + int.from_bytes(head, "big") + int(c._recv_macsize) - have
        if handler == packet:  # the first block taken: buf holds the part of the rest that came
            return 4 + int(c._pktlen) + int(c._recv_macsize) - int(c._recv_blocksize) - have
        return 0  # a packet handled asynchronously holds the buffer: asyncssh queues the rest

    held = bytearray()
    """The start of a packet whose rest is still to come, kept here between socket reads (only at
    a packet boundary, asyncssh's buffer empty) so that the whole packet can take the fast way."""

    def clean() -> bool:
        """Whether asyncssh holds nothing of a packet: the next bytes start one."""
        return not c._inpbuf and c._recv_handler == pkthdr and type(c._recv_encryption) is GCMEncryption

    last_reset = [0.0]

    def one(pkt: memoryview, datatype: Any) -> None:
        """A whole packet, asyncssh's state clean: the fast way if it is channel data, else asyncssh's."""
        if "_reset_keepalive_timer" not in c.__dict__:
            # The keepalive timer is restarted once per socket read at most (asyncssh's own parser
            # then finds it done), and no more than once per KEEPALIVE_RESET_EVERY.
            now = c._loop.time()
            if now - last_reset[0] >= KEEPALIVE_RESET_EVERY:
                last_reset[0] = now
                c._reset_keepalive_timer()
            c._reset_keepalive_timer = _nothing
        if not channel_data(pkt):
            received(bytes(pkt), datatype)

    def data_received(data: bytes, datatype: Any = None) -> None:
        view, pos, end = memoryview(data), 0, len(data)
        try:
            if held:
                if not clean():  # not expected: asyncssh gets everything, in order
                    whole = bytes(held) + data
                    held.clear()
                    received(whole, datatype)
                    return
                if len(held) < 4:  # not even its length yet
                    pos = min(4 - len(held), end)
                    held.extend(view[:pos])
                    if len(held) < 4:
                        return
                need = 4 + int.from_bytes(held[:4], "big") + int(c._recv_macsize) - len(held)
                if need > end - pos:
                    held.extend(view[pos:])
                    return
                held.extend(view[pos : pos + need])
                pos += need
                pkt = memoryview(bytes(held))
                held.clear()
                one(pkt, datatype)
                if c._transport is None:
                    return
            if type(c._recv_encryption) is not GCMEncryption:
                received(data if pos == 0 else bytes(view[pos:]), datatype)
                return
            while pos < end:
                n = rest_of_packet(c._inpbuf, view[pos:])
                state_clean = not c._inpbuf and c._recv_handler == pkthdr
                if 0 < n <= end - pos and state_clean:
                    one(view[pos : pos + n], datatype)
                    pos += n
                    if c._transport is None:  # closed by what it just parsed: the rest is not for anyone
                        return
                    continue
                if (
                    state_clean
                    and (n > end - pos or (n <= 0 and end - pos < 4))
                    and n <= 4 + c._max_recv_pktlen + 64
                    and type(c._recv_encryption) is GCMEncryption
                ):
                    held.extend(view[pos:])  # the rest of this packet comes with the next read
                    return
                if n <= 0 or pos + n >= end:
                    received(data if pos == 0 else bytes(view[pos:]), datatype)
                    return
                received(bytes(view[pos : pos + n]), datatype)
                pos += n
                if c._transport is None:
                    return
                # The keepalive timer is restarted once per socket read, as asyncssh does (a
                # cancelled and a new timer each time: a twentieth of the loop's CPU per packet).
                c._reset_keepalive_timer = _nothing
        finally:
            c.__dict__.pop("_reset_keepalive_timer", None)

    c.data_received = data_received
    transport = c._transport
    get_protocol = getattr(transport, "get_protocol", None)  # a jump host's tunnel has none
    if get_protocol is not None and get_protocol() is c and hasattr(transport, "set_protocol"):
        # uvloop's transports keep the protocol's data_received they were given at connect time:
        # setting the protocol again has them take the wrapper (asyncio's look it up each read).
        transport.set_protocol(c)


def _channel_data(c: Any) -> Callable[[memoryview], bool]:
    """For connection ``c``: a function that takes one whole AES-GCM packet and, when it is
    channel data for an open channel within its window, decrypts it and delivers the data as
    asyncssh would (True); otherwise it changes nothing and returns False."""
    from asyncssh.channel import SSHChannel
    from asyncssh.constants import MSG_CHANNEL_DATA
    from asyncssh.encryption import GCMEncryption
    from asyncssh.misc import DisconnectError
    from asyncssh.packet import SSHPacketHandler
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    logger = logging.getLogger("asyncssh")
    aead: list[Any] = [None, None]  # the key and its AESGCM, built once per key rather than per packet
    plain_kinds: dict[type, bool] = {}
    """Channel classes, and whether they take channel data as SSHChannel does."""

    def plain_kind(kind: type) -> bool:
        ok = plain_kinds.get(kind)
        if ok is None:
            handlers = getattr(kind, "_packet_handlers", {})
            ok = handlers.get(MSG_CHANNEL_DATA) is SSHChannel._process_data
            ok = plain_kinds[kind] = ok and getattr(kind, "process_packet", None) is SSHPacketHandler.process_packet
        return ok

    def channel_data(pkt: memoryview) -> bool:
        if c._decompressor is not None or not c._auth_complete or logger.isEnabledFor(logging.DEBUG):
            return False
        if type(c._recv_encryption) is not GCMEncryption:  # new keys within the same read
            return False
        if int.from_bytes(pkt[:4], "big") > c._max_recv_pktlen:
            return False
        cipher = c._recv_encryption._cipher
        if aead[0] is not cipher._key:
            aead[0], aead[1] = cipher._key, AESGCM(cipher._key)
        try:
            plain = aead[1].decrypt(cipher._iv, pkt[4:], pkt[:4])
        except InvalidTag:
            return False  # asyncssh decrypts it again with the same nonce and refuses it
        end = len(plain) - plain[0]  # what the padding leaves
        if plain[0] < 4 or end < 10 or plain[1] != MSG_CHANNEL_DATA:
            return False
        chan = c._channels.get(int.from_bytes(plain[2:6], "big"))
        n = int.from_bytes(plain[6:10], "big")
        if chan is None or chan._recv_state != "open" or 10 + n != end or n > chan._recv_window:
            return False
        if not plain_kind(type(chan)):
            return False
        cipher._update_iv()
        seq = c._recv_seq
        try:
            chan._accept_data(memoryview(plain)[10:end] if chan in _VIEW_CHANNELS else plain[10:end])
        except DisconnectError as exc:  # as asyncssh's _recv_data handles what a packet raised
            c._send_disconnect(exc.code, exc.reason, exc.lang)
            c._force_close(exc)
            return True
        except Exception:
            c.internal_error()
            return True
        c._auth_final = True  # channel data comes after authentication
        if c._transport:
            c._recv_seq = (seq + 1) & 0xFFFFFFFF
        return True

    return channel_data


def _nothing() -> None:
    """Stands in for a connection method whose work was already done."""


_QUIETED: list[bool] = []


def _quiet_packet_logs() -> None:
    """Skip asyncssh's per-packet log calls (connections and channels alike) while its logger is
    not at DEBUG; once per process."""
    if _QUIETED:
        return
    _QUIETED.append(True)
    from asyncssh.packet import SSHPacketHandler

    logger = logging.getLogger("asyncssh")
    for name in ("log_received_packet", "log_sent_packet"):
        original = getattr(SSHPacketHandler, name)

        @functools.wraps(original)  # its signature stays the original's, for feature_problem
        def quiet(self: Any, pkttype: int, pktid: Any, packet: Any, note: str = "", _orig: Any = original) -> None:
            if logger.isEnabledFor(logging.DEBUG):  # cached by logging: a dict lookup per packet
                _orig(self, pkttype, pktid, packet, note)

        setattr(SSHPacketHandler, name, quiet)


class _Reply:
    """Stands in for asyncssh's waiter of one read request: the answer is parsed as it arrives
    (what ``SFTPClientHandler._make_request`` and ``_process_data`` do after the wake-up) and
    ``fut`` gets the data, b"" at the end of the file, or the error."""

    __slots__ = ("fut", "handler")

    def __init__(self, fut: asyncio.Future[bytes | memoryview], handler: Any) -> None:
        self.fut = fut
        self.handler = handler

    def cancelled(self) -> bool:
        return self.fut.cancelled()

    def set_exception(self, exc: BaseException) -> None:
        self.fut.set_exception(exc)

    def set_result(self, answer: tuple[int, Any]) -> None:
        from asyncssh.constants import FXP_DATA, FXP_STATUS
        from asyncssh.packet import PacketDecodeError
        from asyncssh.sftp import SFTPEOFError

        pkttype, packet = answer
        fut = self.fut
        try:
            if pkttype == FXP_DATA:
                if self.handler.version < 6:
                    # The data as a view into the packet (one copy of it less); type and id
                    # (5 bytes) were read, its length follows, and nothing may come after it.
                    raw = packet.get_full_payload()
                    n = int.from_bytes(raw[5:9], "big")
                    if len(raw) != 9 + n:
                        raise asyncssh.SFTPBadMessage("Invalid SFTP data response")
                    fut.set_result(memoryview(raw)[9:])
                    return
                data = packet.get_string()  # version 6: an end-of-file flag may follow
                if packet:
                    packet.get_boolean()
                fut.set_result(data)
                return
            if pkttype != FXP_STATUS:
                raise asyncssh.SFTPBadMessage(f"Unexpected response type: {pkttype}")
            try:
                self.handler._process_status(packet)
            except SFTPEOFError:
                fut.set_result(b"")
                return
            raise asyncssh.SFTPBadMessage("Unexpected FX_OK response")
        except PacketDecodeError as e:
            fut.set_exception(asyncssh.SFTPBadMessage(str(e)))
        except Exception as e:
            fut.set_exception(e)


ReadSender = Callable[[list[tuple[int, int]]], list["asyncio.Future[bytes | memoryview]"]]
"""Sends SFTP reads of (offset, length) and returns one future of the data per read (a view of
immutable bytes, or bytes)."""


def read_sender(fh: asyncssh.SFTPClientFile) -> ReadSender:
    """A function that sends SFTP reads of ``(offset, length)`` on the open file ``fh`` and
    returns one future per read, which gets the data (b"" past the end of the file).

    Private path: the requests of one call go out in one channel write (one SSH packet, one
    system call, rather than one each), asyncssh's per-request debug logging is skipped, and an
    answer is parsed when it arrives rather than in a task woken for it. Public path: one
    ``fh.read`` task per request.
    """
    CHOICE.announce(log)
    if not CHOICE.private:

        def public(reqs: list[tuple[int, int]]) -> list[asyncio.Future[bytes | memoryview]]:
            return [asyncio.ensure_future(cast("Awaitable[bytes]", fh.read(n, off))) for off, n in reqs]

        return public

    from asyncssh.packet import String

    f: Any = fh
    handler, handle = f._handler, f._handle
    if handle is None:
        raise ValueError("I/O operation on closed file")
    loop = asyncio.get_running_loop()
    if handler._writer:
        _VIEW_CHANNELS.add(handler._writer.channel)
        _frame_answers(handler)
    hstr = String(handle)
    head = (1 + 4 + len(hstr) + 8 + 4).to_bytes(4, "big") + b"\x05"  # length, FXP_READ

    def send(reqs: list[tuple[int, int]]) -> list[asyncio.Future[bytes | memoryview]]:
        writer = handler._writer
        if not writer:
            raise asyncssh.SFTPNoConnection("Connection not open")
        futs: list[asyncio.Future[bytes | memoryview]] = []
        parts: list[bytes] = []
        requests = handler._requests
        for off, n in reqs:
            pktid = handler._next_pktid
            handler._next_pktid = (pktid + 1) & 0xFFFFFFFF
            fut: asyncio.Future[bytes | memoryview] = loop.create_future()
            requests[pktid] = _Reply(fut, handler)
            parts += (head, pktid.to_bytes(4, "big"), hstr, off.to_bytes(8, "big"), n.to_bytes(4, "big"))
            futs.append(fut)
        if not writer.channel.is_closing():  # else, as asyncssh does, the waiters hear of the close
            writer.write(b"".join(parts))
        return futs

    return send


_FRAMED: weakref.WeakSet[Any] = weakref.WeakSet()
"""SFTP client handlers whose answers :func:`_frame_answers` takes off their channel."""


def _frame_answers(handler: Any) -> None:
    """Take the SFTP answers of ``handler``'s session straight from its channel: cut them at their
    length, join each into one bytes and hand it to the request's waiter, as asyncssh's
    ``recv_packets`` task does after the stream's ``readexactly`` (its lock, its wake-ups, its
    buffer of pieces). Only from a moment when no request is outstanding and the stream holds
    nothing, so no answer is ever split between the two ways; once framed, always framed. The
    end of the channel still reaches the stream, and through it ``recv_packets``' clean-up."""
    from asyncssh.packet import SSHPacket
    from asyncssh.sftp import MAX_SFTP_PACKET_LEN

    reader, writer = handler._reader, handler._writer
    if handler in _FRAMED or not reader or not writer or handler._requests:
        return
    session = reader._session
    if session is not writer.channel._session or any(session._recv_buf.values()) or session._recv_buf_len:
        return
    _FRAMED.add(handler)
    debug = logging.getLogger("asyncssh")
    received = session.data_received
    pieces: list[Any] = []
    have = 0
    need = 0  # bytes of the answer being cut, its 4-byte length included (0: not known yet)

    failed: list[Exception] = []

    def fail(exc: Exception) -> None:
        """As ``recv_packets`` ends on a bad answer: the session is cleaned up, nothing more is read."""
        failed.append(exc)
        pieces.clear()
        handler._loop.create_task(handler._cleanup(exc))

    def data_received(data: Any, datatype: Any) -> None:
        nonlocal have, need
        if datatype is not None:  # not SFTP's (it has no extended data): as asyncssh would
            received(data, datatype)
            return
        if failed:
            return
        pieces.append(data)
        have += len(data)
        while True:
            if not need:
                if have < 4:
                    return
                head = bytes(pieces[0][:4]) if len(pieces[0]) >= 4 else b"".join(pieces)[:4]
                pktlen = int.from_bytes(head, "big")
                if pktlen > MAX_SFTP_PACKET_LEN:
                    fail(asyncssh.SFTPBadMessage("Max packet size exceeded"))
                    return
                need = 4 + pktlen
            if have < need:
                return
            # The answer's pieces, the last one cut where the answer ends.
            n, taken = 0, 0
            while n + len(pieces[taken]) <= need:
                n += len(pieces[taken])
                taken += 1
                if n == need:
                    break
            parts = pieces[:taken]
            if n < need:
                last = pieces[taken]
                parts.append(last[: need - n])
                pieces[taken] = last[need - n :]
            del pieces[:taken]
            have -= need
            need = 0
            skip = 4  # the length, off the front without a copy
            while skip and parts:
                first = parts[0]
                if len(first) <= skip:
                    skip -= len(first)
                    del parts[0]
                else:
                    parts[0] = memoryview(first)[skip:]
                    skip = 0
            packet = SSHPacket(b"".join(parts))
            try:
                pkttype, pktid = packet.get_byte(), packet.get_uint32()
            except Exception as e:
                fail(asyncssh.SFTPBadMessage(str(e)))
                return
            if debug.isEnabledFor(logging.DEBUG):
                handler.log_received_packet(pkttype, pktid, packet)
            waiter = handler._requests.pop(pktid, None)
            if waiter is None:
                fail(asyncssh.SFTPBadMessage("Invalid response id"))
                return
            if not waiter.cancelled():
                waiter.set_result((pkttype, packet))

    session.data_received = data_received
