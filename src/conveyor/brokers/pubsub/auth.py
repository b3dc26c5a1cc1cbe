"""Credentials for the ``pubsub`` instance type.

Three ways to authenticate, as the config allows: a service-account key file, OAuth 2 user
credentials (client id + secret + refresh token from an authorisation-code grant) that
refresh themselves at ``token_uri``, or Application Default Credentials. An emulator needs
none. Every failure is an :class:`~conveyor.errors.AuthError` whose message names what to
fix and never holds a secret.
"""

from __future__ import annotations

import google.auth
import google.auth.exceptions
from google.auth.credentials import Credentials
from google.oauth2 import credentials as oauth2_credentials
from google.oauth2 import service_account

from conveyor.brokers.pubsub.config import PUBSUB_SCOPE, PubsubConfig
from conveyor.brokers.pubsub.errors import short_error as _short
from conveyor.errors import AuthError, Transient
from conveyor.redact import redact


def build_credentials(name: str, cfg: PubsubConfig) -> Credentials | None:
    """The credentials the config describes; None for an emulator. May block (ADC probes): call in a thread."""
    if cfg.emulator():
        return None
    if cfg.credentials_file is not None:
        path = cfg.credentials_file
        try:
            return service_account.Credentials.from_service_account_file(  # type: ignore[no-untyped-call,no-any-return]
                str(path), scopes=[PUBSUB_SCOPE]
            )
        except OSError as e:
            raise AuthError(f"cannot read credentials_file '{path}': {e.strerror}", instance=name) from None
        except (ValueError, KeyError, TypeError) as e:
            # google-auth names the missing fields or the unreadable key; the file content never shows.
            raise AuthError(
                f"credentials_file '{path}' is not a usable service-account key: {_short(e)}", instance=name
            ) from None
    if cfg.oauth is not None:
        o = cfg.oauth
        return oauth2_credentials.Credentials(  # type: ignore[no-untyped-call]
            token=None,
            refresh_token=o.refresh_token.get_secret_value(),
            client_id=o.client_id,
            client_secret=o.client_secret.get_secret_value(),
            token_uri=o.token_uri,
            scopes=list(o.scopes),
        )
    try:
        creds, _project = google.auth.default(scopes=[PUBSUB_SCOPE])
    except google.auth.exceptions.DefaultCredentialsError as e:
        raise AuthError(
            f"no credentials_file or oauth given, and Application Default Credentials are not available: {_short(e)}",
            instance=name,
        ) from None
    return creds


def refresh(name: str, cfg: PubsubConfig, creds: Credentials) -> None:
    """Fetch an access token now (blocking), so a bad key or revoked refresh token fails at start, clearly."""
    import google.auth.transport.requests

    try:
        creds.refresh(google.auth.transport.requests.Request())  # type: ignore[no-untyped-call]
    except google.auth.exceptions.RefreshError as e:
        raise AuthError(refresh_message(cfg, e), instance=name) from None
    except google.auth.exceptions.TransportError as e:
        raise Transient(f"token endpoint unreachable: {_short(e)}", instance=name) from None


def refresh_message(cfg: PubsubConfig, e: google.auth.exceptions.RefreshError) -> str:
    """A clear reason for a refused token refresh, built from the endpoint's error code, never its secrets."""
    code, desc = "", ""
    if len(e.args) > 1 and isinstance(e.args[1], dict):
        code = str(e.args[1].get("error", ""))
        desc = str(e.args[1].get("error_description", ""))
    elif e.args:
        code = str(e.args[0]).split(":", 1)[0]
    if cfg.oauth is not None:
        hint = {
            "invalid_grant": "the refresh token is expired, revoked or was issued to another client",
            "invalid_client": "client_id or client_secret is wrong",
            "unauthorized_client": "this client may not use the refresh_token grant",
            "invalid_scope": "the scopes were not granted to this refresh token",
        }.get(code, "check client_id, client_secret and refresh_token")
        what = f"OAuth token refresh at {cfg.oauth.token_uri} refused"
    else:
        hint = "check that the service account exists, its key is not deleted or disabled"
        what = "service-account token request refused"
    detail = f"{code}" + (f" ({desc})" if desc else "") if code else _short(e)
    return _scrub(cfg, f"{what}: {detail}: {hint}")


def _scrub(cfg: PubsubConfig, text: str) -> str:
    """Mask this instance's secrets even when they were never registered with the redactor."""
    for secret in cfg.secrets():
        text = text.replace(secret, "***")
    return redact(text)


__all__ = ["build_credentials", "refresh", "refresh_message"]
