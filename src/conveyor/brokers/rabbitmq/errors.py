"""The one place where aio-pika/aiormq exceptions become conveyor's errors, shared by the
connection, the source and the target::

    ProbableAuthenticationError, AuthenticationError  → AuthError
    Connection.Close 530 at Connection.Open (vhost)   → NotFound
    ChannelNotFoundEntity (404: queue, exchange)       → NotFound
    ChannelAccessRefused (403)                         → AuthError
    ChannelPreconditionFailed (406: inequivalent arg)  → Permanent
    DeliveryError (publish nacked by the broker)       → Transient
    TLS certificate verification failure               → Permanent
    everything else (sockets, timeouts, closed
    channels and connections)                          → Transient
"""

from __future__ import annotations

import ssl

import aiormq.exceptions as amqp_errors

from conveyor.errors import AuthError, ConveyorError, NotFound, Permanent, Transient


def _reply_text(e: BaseException) -> str:
    """The broker's reply text from an aiormq channel/connection error, without the class boilerplate."""
    args = [a for a in e.args if isinstance(a, str)]
    return args[-1] if args else (str(e) or type(e).__name__)


def _cert_error(e: BaseException) -> str | None:
    """The reason when ``e`` is (or wraps: aiormq re-raises it as a connection error) a failed certificate check."""
    seen: BaseException | None = e
    for _ in range(5):
        if seen is None:
            break
        if isinstance(seen, ssl.SSLCertVerificationError):
            return str(seen.verify_message or seen)
        seen = seen.__cause__ or seen.__context__
    text = str(e)
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return text.split("] ", 1)[-1].split(" (_ssl", 1)[0]
    return None


def map_error(
    e: BaseException, *, instance: str, address: str, path: str | None = None, connecting: bool = False
) -> ConveyorError:
    """Map an aio-pika/aiormq/socket exception to conveyor's error tree (see the module docstring)."""
    if isinstance(e, ConveyorError):
        return e
    if isinstance(e, (amqp_errors.ProbableAuthenticationError, amqp_errors.AuthenticationError)):
        return AuthError(f"login refused for {address}", instance=instance)
    if isinstance(e, amqp_errors.ConnectionNotAllowed) or (
        connecting and isinstance(e, amqp_errors.InvalidFrameError) and "Connection.Close" in str(e)
    ):
        # aiormq reports the broker's 530 NOT_ALLOWED at Connection.Open as an unexpected frame.
        vhost = address.split("/", 1)[1] if "/" in address else ""
        return NotFound(
            f"vhost '{vhost or '/'}' does not exist or the user may not use it ({address})", instance=instance
        )
    if isinstance(e, amqp_errors.ChannelNotFoundEntity):
        return NotFound(_reply_text(e), instance=instance, path=path)
    if isinstance(e, amqp_errors.ChannelAccessRefused):
        return AuthError(_reply_text(e), instance=instance, path=path)
    if isinstance(e, amqp_errors.ChannelPreconditionFailed):
        return Permanent(_reply_text(e), instance=instance, path=path)
    cert_error = _cert_error(e)
    if cert_error is not None:
        return Permanent(f"TLS certificate of {address} not trusted: {cert_error}", instance=instance)
    if isinstance(e, TimeoutError):
        return Transient(f"timed out talking to {address}", instance=instance, path=path)
    if isinstance(e, amqp_errors.DeliveryError):
        return Transient(
            f"the broker did not take the message ({e}): a full queue (x-overflow reject-publish) "
            "or a broker-side error",
            instance=instance,
            path=path,
        )
    if isinstance(e, amqp_errors.ChannelClosed):
        return Transient(f"channel closed by the broker: {_reply_text(e)}", instance=instance, path=path)
    if isinstance(
        e, (amqp_errors.AMQPError, amqp_errors.ChannelInvalidStateError, ConnectionError, OSError, RuntimeError)
    ):
        return Transient(f"connection to {address} lost: {e!r}", instance=instance, path=path)
    return Transient(f"unexpected error talking to {address}: {e!r}", instance=instance, path=path)
