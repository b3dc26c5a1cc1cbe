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
Fallback: the connection is left as asyncssh made it: correct, with more CPU per MiB uploaded
and downloaded (docs/performance-notes.md).
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any

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
    return _split_problem(conn_class)


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
        method = getattr(cls, name, None)
        if not inspect.isfunction(method):
            return f"{cls.__name__}.{name} is missing"
        try:
            source = inspect.getsource(method)
        except (OSError, TypeError):
            return f"the source of {cls.__name__}.{name} is not readable"
        if any(call not in source for call in calls):
            return f"{cls.__name__}.{name} no longer parses packets as expected"
    return None


def select(conn_class: type = asyncssh.SSHClientConnection, version: str = asyncssh.__version__) -> Choice:
    """The path for connections of ``conn_class`` under asyncssh ``version``."""
    return choose(
        "asyncssh",
        version,
        TESTED,
        feature_problem(conn_class),
        "its connection's send_packet is wrapped to drop the empty SSH_MSG_IGNORE before each packet, "
        "its per-packet log calls skipped while packet logging is off, and received data handed to it "
        "one AES-GCM packet at a time",
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

    def data_received(data: bytes, datatype: Any = None) -> None:
        if type(c._recv_encryption) is not GCMEncryption:
            received(data, datatype)
            return
        view, pos, end = memoryview(data), 0, len(data)
        try:
            while pos < end:
                n = rest_of_packet(c._inpbuf, view[pos:])
                if 0 < n <= end - pos and not c._inpbuf and c._recv_handler == pkthdr:
                    if "_reset_keepalive_timer" not in c.__dict__:  # once per read, as asyncssh does
                        c._reset_keepalive_timer()
                        c._reset_keepalive_timer = _nothing
                    if channel_data(view[pos : pos + n]):
                        pos += n
                        if c._transport is None:
                            return
                        continue
                if n <= 0 or pos + n >= end:
                    received(data if pos == 0 else bytes(view[pos:]), datatype)
                    return
                received(bytes(view[pos : pos + n]), datatype)
                pos += n
                if c._transport is None:  # closed by what it just parsed: the rest is not for anyone
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
            chan._accept_data(plain[10:end])
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
