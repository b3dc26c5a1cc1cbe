"""asyncssh's private parts: every use of them, checked at import, with the public fallback.

Why: once encrypted, asyncssh sends an empty SSH_MSG_IGNORE ahead of every packet (the RFC 4251
9.3.1 countermeasure for CBC ciphers); with the AEAD/CTR ciphers conveyor offers it protects nothing
and doubles the packets an upload encrypts and writes. Nothing public turns it off, so the
connection's undocumented ``send_packet`` is wrapped to drop exactly those.
Second: asyncssh formats a log line for every SSH packet it sends or receives (the packet type's
name, a byte count) before its logger finds packet logging off, about 8 % of the event loop's time
in a download. Where asyncssh's logger is not at DEBUG (packet logs need DEBUG and a debug level
of 3), the connection's ``log_received_packet`` / ``log_sent_packet`` are replaced by no-ops.
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
    return None


def select(conn_class: type = asyncssh.SSHClientConnection, version: str = asyncssh.__version__) -> Choice:
    """The path for connections of ``conn_class`` under asyncssh ``version``."""
    return choose(
        "asyncssh",
        version,
        TESTED,
        feature_problem(conn_class),
        "its connection's send_packet is wrapped to drop the empty SSH_MSG_IGNORE before each packet, "
        "and its per-packet log calls skipped while packet logging is off",
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
    _quiet_packet_logs()


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
