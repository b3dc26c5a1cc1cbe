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
Fallback: the connection is left as asyncssh made it: correct, with more CPU per MiB uploaded
and downloaded (docs/performance-notes.md).
"""

from __future__ import annotations

import functools
import inspect
import logging
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
    ),
    "_recv_packet": (
        "rem = 4 + self._pktlen + self._recv_macsize - self._recv_blocksize",
        "self._inpbuf = self._inpbuf[rem:]",
    ),
    "_finish_recv_packet": ("self._recv_handler = self._recv_pkthdr",),
}
"""What :func:`_split_packets` relies on in the connection's receive path: the buffer it appends
to, how a packet's length is read and how much of the buffer the packet then takes."""


def _split_problem(conn_class: type) -> str | None:
    """What no longer fits :func:`_split_packets` in ``conn_class`` and asyncssh's GCM shim."""
    try:
        from asyncssh.encryption import GCMEncryption
    except ImportError as e:
        return f"cannot import its GCM shim ({e})"
    checks = [(conn_class, name, calls) for name, calls in _SPLIT_SOURCES.items()]
    checks.append((GCMEncryption, "decrypt_header", ("return first_block, first_block[:header_len]",)))
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
