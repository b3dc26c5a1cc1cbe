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
uvloop creates it later, in a callback run in the context the data connection's transport was
made in: :func:`offer_session` sets the variable before the data connection is opened, for both.
This uses only public API (``SSLContext`` subclassing and ``wrap_bio``'s documented
``session`` parameter), works with TLS 1.2 and 1.3, and keeps asyncio's fast SSL transport.
It serves the control connection and uploads; a download's data channel is wrapped on its
reading thread (:mod:`conveyor.transfer.ftp.reader`) by ``wrap_socket``, which takes the
session as an argument, with the same context, so the same checks and client certificate.

A client certificate (``client_certificate_file``) is loaded into that one context, so the
control connection and every data connection present it; resumed data connections carry it
in the session, as servers that check it there (vsftpd's ``require_cert``) expect.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import logging
import re
import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conveyor.errors import HostKeyError, Permanent

if TYPE_CHECKING:
    from conveyor.transfer.ftp.config import FtpConfig

log = logging.getLogger("conveyor.ftp")

_SESSION: contextvars.ContextVar[ssl.SSLSession | None] = contextvars.ContextVar("ftp_tls_session", default=None)


class SessionReusingContext(ssl.SSLContext):
    """An SSLContext that offers the session in :data:`_SESSION` on every client handshake it starts."""

    client_certificate: str | None = None
    """Subject of the client certificate loaded into it, as ``check`` shows it (never the file)."""

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


def offer_session(session: ssl.SSLSession | None) -> contextvars.Token[ssl.SSLSession | None]:
    """Offer ``session`` on the TLS handshakes this task starts from now on (and on those of the
    transports it opens); hand the token to :func:`withdraw_session` when done."""
    return _SESSION.set(session)


def withdraw_session(token: contextvars.Token[ssl.SSLSession | None]) -> None:
    """Undo an :func:`offer_session`."""
    _SESSION.reset(token)


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
    try:
        ctx.client_certificate = load_client_certificate(ctx, cfg)
    except ClientCertificateError as e:
        raise Permanent(str(e)) from None
    return ctx


class ClientCertificateError(Exception):
    """A client certificate or key file that cannot be used; ``key`` is the config key at fault."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


_PEM_KEY = re.compile(rb"-----BEGIN ((?:RSA |EC |DSA |ENCRYPTED )?PRIVATE KEY)-----.+?-----END \1-----", re.S)


def _read(key: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise ClientCertificateError(key, f"{key} {path}: cannot read it: {e.strerror or e}") from None


def load_client_certificate(ctx: ssl.SSLContext | None, cfg: FtpConfig) -> str | None:
    """Check ``client_certificate_file`` and its key, then load them into ``ctx`` (None: only check).

    Returns the certificate's subject (None without a client certificate).
    OpenSSL reports every one of these problems as "PEM lib", so each is looked at first with
    ``cryptography``, to say which file is wrong and why. Neither the passphrase nor the key ever
    reaches a message. Raises :class:`ClientCertificateError`.
    """
    cert_path = cfg.client_certificate_file
    if cert_path is None:
        return None
    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    cert_pem = _read("client_certificate_file", cert_path)
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise ClientCertificateError(
            "client_certificate_file",
            f"client_certificate_file {cert_path}: no PEM certificate in it (-----BEGIN CERTIFICATE-----)",
        ) from None
    if cfg.client_key_file is None:
        key_name, key_path, key_pem = "client_certificate_file", cert_path, cert_pem
    else:
        key_name, key_path = "client_key_file", cfg.client_key_file
        key_pem = _read(key_name, key_path)
    found = _PEM_KEY.search(key_pem)
    if found is None:
        raise ClientCertificateError(
            key_name,
            f"client_certificate_file {cert_path} holds no private key: set client_key_file to the key's PEM file"
            if cfg.client_key_file is None
            else f"client_key_file {key_path}: no PEM private key in it (-----BEGIN PRIVATE KEY-----)",
        )
    secret = cfg.client_key_passphrase
    passphrase = secret.get_secret_value() if secret is not None else None
    try:
        try:
            key = serialization.load_pem_private_key(found.group(0), passphrase.encode() if passphrase else None)
        except TypeError:
            if passphrase is None:
                raise ClientCertificateError(
                    key_name, f"{key_name} {key_path} is encrypted: set client_key_passphrase"
                ) from None
            key = serialization.load_pem_private_key(found.group(0), None)  # a passphrase it does not need
    except (ValueError, UnsupportedAlgorithm):
        how = (
            "cannot decrypt it with client_key_passphrase (wrong passphrase?)"
            if passphrase
            else "cannot read the private key in it (damaged, or a key type that is not supported)"
        )
        raise ClientCertificateError(key_name, f"{key_name} {key_path}: {how}") from None

    def spki(k: Any) -> bytes:
        return bytes(k.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))

    if spki(chain[0].public_key()) != spki(key.public_key()):
        raise ClientCertificateError(
            key_name,
            f"{key_name} {key_path} is not the key of the certificate in client_certificate_file {cert_path}"
            if cfg.client_key_file is not None
            else f"client_certificate_file {cert_path}: its private key is not the key of its (first) certificate",
        )
    subject = chain[0].subject.rfc4514_string() or "(no subject)"
    if ctx is None:
        return subject
    try:
        # A passphrase always (empty when none): without one OpenSSL would ask on the terminal.
        ctx.load_cert_chain(cert_path, cfg.client_key_file, password=passphrase or "")
    except (OSError, ssl.SSLError) as e:
        raise ClientCertificateError(
            key_name, f"cannot load the client certificate in client_certificate_file {cert_path}: {e}"
        ) from None
    return subject


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


CERTIFICATE_ALERTS = {
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "certificate required",
    "TLSV1_ALERT_UNKNOWN_CA": "unknown ca",
    "SSLV3_ALERT_BAD_CERTIFICATE": "bad certificate",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "certificate unknown",
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE": "unsupported certificate",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "certificate expired",
    "SSLV3_ALERT_CERTIFICATE_REVOKED": "certificate revoked",
    "TLSV1_ALERT_ACCESS_DENIED": "access denied",
}
"""TLS alerts (OpenSSL's reason codes) a server sends about the client's certificate, or its lack of one.
They are alerts *received*: a server certificate that conveyor does not trust fails locally
(``SSLCertVerificationError``), not with one of these."""

_ALERT_WHY = {
    "TLSV1_ALERT_UNKNOWN_CA": ": it does not trust the CA that signed it",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": ": it has expired",
    "SSLV3_ALERT_CERTIFICATE_REVOKED": ": it has been revoked",
}


def describe_certificate_alert(reason: str, cfg: FtpConfig) -> str:
    """A clear sentence for one of :data:`CERTIFICATE_ALERTS`, with what to configure."""
    alert = f"TLS alert: {CERTIFICATE_ALERTS[reason]}"
    if cfg.client_certificate_file is None:
        return (
            f"the server requires a client certificate ({alert}): set client_certificate_file "
            "(and client_key_file) to a certificate signed by a CA the server trusts"
        )
    return (
        f"the server refused the client certificate in client_certificate_file {cfg.client_certificate_file} "
        f"({alert}){_ALERT_WHY.get(reason, '')}"
    )


def client_certificate_hint(cfg: FtpConfig) -> str:
    """What a server that fails or closes the TLS handshake without saying why may want."""
    if cfg.client_certificate_file is None:
        return "the server may require a client certificate: set client_certificate_file"
    return (
        f"the server may not accept the client certificate in client_certificate_file "
        f"{cfg.client_certificate_file} (is it signed by a CA the server trusts?)"
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
