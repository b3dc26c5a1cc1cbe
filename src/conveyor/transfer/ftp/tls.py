"""TLS for FTPS: certificate checks and data channels that resume the control channel's session.

FTPS servers (vsftpd with its default ``require_ssl_reuse=YES``, ProFTPD, FileZilla Server)
refuse a data connection whose TLS handshake does not *resume* the control connection's
session: that is how they know the data connection comes from the logged-in client.
``ssl.SSLContext.wrap_socket``/``wrap_bio`` take a ``session`` argument, but asyncio's
``create_connection(ssl=...)`` and ``start_tls`` do not pass one: they call
``context.wrap_bio(incoming, outgoing, server_side=..., server_hostname=...)``.

:class:`SessionReusingContext` is an ``SSLContext`` whose ``wrap_bio`` adds the session held
in a :data:`contextvars.ContextVar`. :func:`start_data_tls` sets the variable around
``loop.start_tls``; asyncio creates the SSL object synchronously inside that call, in the
calling task, so the variable is seen by exactly that handshake and no other (concurrent
transfers on other connections each set their own value in their own task context).
This uses only public API (``SSLContext`` subclassing and ``wrap_bio``'s documented
``session`` parameter), works with TLS 1.2 and 1.3, and keeps asyncio's fast SSL transport.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import logging
import ssl
from typing import Any

from conveyor.errors import HostKeyError, Permanent
from conveyor.transfer.ftp.config import FtpConfig

log = logging.getLogger("conveyor.ftp")

_SESSION: contextvars.ContextVar[ssl.SSLSession | None] = contextvars.ContextVar("ftp_tls_session", default=None)


class SessionReusingContext(ssl.SSLContext):
    """An SSLContext that offers the session in :data:`_SESSION` on every client handshake it starts."""

    def wrap_bio(
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLObject:
        """As ``SSLContext.wrap_bio``, with the session to resume taken from the task's context."""
        if session is None and not server_side:
            session = _SESSION.get()
        return super().wrap_bio(incoming, outgoing, server_side, server_hostname, session=session)


def make_context(cfg: FtpConfig) -> SessionReusingContext:
    """The client TLS context for an instance: system CAs, ``ca_file``, pinning, or no checks."""
    ctx = SessionReusingContext(ssl.PROTOCOL_TLS_CLIENT)
    if cfg.tls_fingerprint is not None or not cfg.tls_verify:
        # Pinning checks the certificate itself after the handshake (see check_peer).
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif cfg.ca_file is not None:
        try:
            ctx.load_verify_locations(cafile=str(cfg.ca_file))
        except (OSError, ssl.SSLError) as e:
            raise Permanent(f"cannot load ca_file {cfg.ca_file}: {e}") from None
    else:
        ctx.load_default_certs()
    if cfg.tls_max_version == "1.2":
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def check_peer(ssl_object: Any, cfg: FtpConfig, instance: str) -> None:
    """Compare the server certificate with ``tls_fingerprint`` (when pinned) before any credential is sent."""
    if cfg.tls_fingerprint is None:
        return
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if not der:
        raise HostKeyError(
            "the server presented no TLS certificate to check against tls_fingerprint", instance=instance
        )
    seen = hashlib.sha256(der).hexdigest()
    if seen != cfg.tls_fingerprint:
        pretty = ":".join(seen[i : i + 2] for i in range(0, 64, 2)).upper()
        raise HostKeyError(
            f"the server's TLS certificate has SHA-256 fingerprint {pretty}, "
            "which does not match tls_fingerprint; nothing was sent",
            instance=instance,
        )


def describe_verify_error(e: ssl.SSLCertVerificationError, cfg: FtpConfig) -> str:
    """A clear sentence for a failed certificate check, with what to configure."""
    reason = e.verify_message or e.reason or str(e)
    return (
        f"TLS certificate of {cfg.host} not trusted ({reason}); set ca_file to the CA that signed it, "
        "or tls_fingerprint to pin a self-signed certificate"
    )


async def start_data_tls(
    transport: asyncio.Transport,
    protocol: asyncio.BaseProtocol,
    ctx: SessionReusingContext,
    session: ssl.SSLSession | None,
    server_hostname: str,
    handshake_timeout: float,
) -> asyncio.Transport:
    """Upgrade a data connection to TLS as a client, resuming ``session`` (the control channel's)."""
    loop = asyncio.get_running_loop()
    token = _SESSION.set(session)
    try:
        tls = await loop.start_tls(
            transport,
            protocol,
            ctx,
            server_hostname=server_hostname,
            ssl_handshake_timeout=handshake_timeout,
            ssl_shutdown_timeout=handshake_timeout,
        )
    finally:
        _SESSION.reset(token)
    if tls is None:  # the connection closed during the handshake
        raise ConnectionResetError("data connection closed during the TLS handshake")
    return tls
