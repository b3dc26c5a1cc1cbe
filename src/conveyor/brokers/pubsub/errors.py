"""The one place where google-cloud exceptions become conveyor's errors, for the client,
the credentials, the source and the target."""

from __future__ import annotations

import concurrent.futures

import google.auth.exceptions
from google.api_core import exceptions as gexc
from google.cloud.pubsub_v1.publisher.exceptions import MessageTooLargeError

from conveyor.errors import AuthError, ConveyorError, NotFound, Permanent, Rejected, Transient
from conveyor.redact import redact


def map_error(name: str, e: BaseException, *, path: str | None = None, publishing: bool = False) -> ConveyorError:
    """The conveyor error for a google-cloud exception, at the boundary, with instance and resource."""
    if isinstance(e, ConveyorError):
        return e
    msg = short_error(e)
    if isinstance(e, google.auth.exceptions.RefreshError):
        return AuthError(f"token refresh refused: {msg}", instance=name, path=path)
    if isinstance(e, google.auth.exceptions.DefaultCredentialsError):
        return AuthError(msg, instance=name, path=path)
    if isinstance(e, gexc.NotFound):
        return NotFound(f"not found: {msg}", instance=name, path=path)
    if isinstance(e, gexc.PermissionDenied | gexc.Forbidden):
        return AuthError(f"permission denied: {msg}", instance=name, path=path)
    if isinstance(e, gexc.Unauthenticated | gexc.Unauthorized):
        return AuthError(f"credentials refused: {msg}", instance=name, path=path)
    if isinstance(e, MessageTooLargeError):
        # The client refuses a publish over Pub/Sub's request limit before sending: no retry helps.
        return Rejected(f"too large: {msg}", instance=name, path=path)
    if isinstance(e, gexc.InvalidArgument | gexc.FailedPrecondition):
        cls = Rejected if publishing else Permanent
        return cls(f"refused: {msg}", instance=name, path=path)
    if isinstance(e, gexc.GoogleAPICallError | gexc.RetryError | google.auth.exceptions.TransportError):
        return Transient(msg, instance=name, path=path)
    if isinstance(e, TimeoutError | concurrent.futures.TimeoutError | ConnectionError):
        return Transient(f"timed out or disconnected: {msg}", instance=name, path=path)
    return Transient(f"unexpected {type(e).__name__}: {msg}", instance=name, path=path)


def short_error(e: BaseException) -> str:
    """One line for logs: the exception's text, redacted and cut short."""
    text = " ".join(str(e).split()) or type(e).__name__
    return redact(text[:300])
