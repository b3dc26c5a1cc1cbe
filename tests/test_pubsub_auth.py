"""Pub/Sub credentials and config: OAuth refresh and service-account tokens against a local token
endpoint (real HTTP, real google-auth), credential errors, config validation, lazy imports."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from conveyor.brokers.pubsub.config import PubsubConfig, PubsubSourceConfig, PubsubTargetConfig
from conveyor.errors import AuthError
from conveyor.interfaces import Context
from conveyor.payload import Spool
from conveyor.registry import get
from conveyor.status import StatusBoard

SECRET = "s3cr3t-client-secret-value"
REFRESH = "1//refresh-token-value-xyz"


class TokenEndpoint:
    """An OAuth token endpoint on 127.0.0.1 that records each request and answers as told."""

    def __init__(self) -> None:
        self.requests: list[dict[str, str]] = []
        self.status = 200
        self.delay = 0.0
        self.answer: dict[str, Any] = {"access_token": "ya29.test-token", "expires_in": 3600, "token_type": "Bearer"}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                form = urllib.parse.parse_qs(self.rfile.read(length).decode())
                outer.requests.append({k: v[0] for k, v in form.items()})
                time.sleep(outer.delay)
                body = json.dumps(outer.answer).encode()
                self.send_response(outer.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/token"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def token_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[TokenEndpoint]:
    monkeypatch.delenv("PUBSUB_EMULATOR_HOST", raising=False)
    ep = TokenEndpoint()
    try:
        yield ep
    finally:
        ep.close()


def oauth_config(url: str) -> PubsubConfig:
    return PubsubConfig.model_validate(
        {
            "type": "pubsub",
            "project": "acme-prod",
            "oauth": {
                "client_id": "client-123.apps",
                "client_secret": SECRET,
                "refresh_token": REFRESH,
                "token_uri": url,
            },
        }
    )


def test_oauth_credentials_refresh(token_endpoint: TokenEndpoint) -> None:
    import google.auth.transport.requests

    from conveyor.brokers.pubsub.auth import build_credentials

    creds = build_credentials("gcp", oauth_config(token_endpoint.url))
    assert creds is not None and not creds.valid
    creds.refresh(google.auth.transport.requests.Request())  # type: ignore[no-untyped-call]
    assert creds.token == "ya29.test-token" and creds.valid
    [req] = token_endpoint.requests
    assert req["grant_type"] == "refresh_token"
    assert req["client_id"] == "client-123.apps"
    assert req["client_secret"] == SECRET
    assert req["refresh_token"] == REFRESH
    assert req.get("scope", "https://www.googleapis.com/auth/pubsub") == "https://www.googleapis.com/auth/pubsub"


async def test_instance_connect_refreshes_oauth(token_endpoint: TokenEndpoint, tmp_path: Path) -> None:
    from conveyor.brokers.pubsub.instance import PubsubInstance

    status = StatusBoard()
    inst = PubsubInstance("gcp", oauth_config(token_endpoint.url), Context(spool=Spool(tmp_path), status=status))
    assert "oauth" in inst.config.describe() and SECRET not in repr(inst.config)
    await inst.connect()
    assert len(token_endpoint.requests) == 1
    await inst.connect()  # once only: the credentials refresh themselves from here on
    assert len(token_endpoint.requests) == 1
    await inst.close()


async def test_oauth_invalid_grant_is_auth_error(token_endpoint: TokenEndpoint, tmp_path: Path) -> None:
    from conveyor.brokers.pubsub.instance import PubsubInstance

    token_endpoint.status = 400
    token_endpoint.answer = {"error": "invalid_grant", "error_description": "Token has been expired or revoked."}
    status = StatusBoard()
    inst = PubsubInstance("gcp", oauth_config(token_endpoint.url), Context(spool=Spool(tmp_path), status=status))
    with pytest.raises(AuthError) as e:
        await inst.connect()
    text = str(e.value)
    assert "invalid_grant" in text and "refresh token is expired, revoked" in text and "instance 'gcp'" in text
    assert SECRET not in text and REFRESH not in text
    st = status.instances["gcp"]
    assert st.state == "down" and st.permanent and st.last_error and SECRET not in st.last_error
    await inst.close()


async def test_stop_during_token_refresh_stops(token_endpoint: TokenEndpoint, tmp_path: Path) -> None:
    """A cancel while the token request is in flight is a cancel, not a retryable error: once it
    became "unexpected CancelledError", the flow retried and SIGTERM hung the daemon 30 s."""
    from conveyor.brokers.pubsub.instance import PubsubInstance

    token_endpoint.delay = 3.0
    inst = PubsubInstance("gcp", oauth_config(token_endpoint.url), Context(spool=Spool(tmp_path), status=StatusBoard()))
    task = asyncio.create_task(inst.connect())
    while not token_endpoint.requests:
        await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await inst.close()


def _service_account_file(tmp_path: Path, token_uri: str) -> Path:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    info = {
        "type": "service_account",
        "project_id": "acme-prod",
        "private_key_id": "k1",
        "private_key": pem,
        "client_email": "conveyor@acme-prod.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": token_uri,
    }
    path = tmp_path / "sa.json"
    path.write_text(json.dumps(info))
    return path


def test_service_account_token(token_endpoint: TokenEndpoint, tmp_path: Path) -> None:
    from conveyor.brokers.pubsub.auth import build_credentials, refresh

    cfg = PubsubConfig(
        type="pubsub", project="acme-prod", credentials_file=_service_account_file(tmp_path, token_endpoint.url)
    )
    creds = build_credentials("gcp", cfg)
    assert creds is not None
    refresh("gcp", cfg, creds)
    assert creds.token == "ya29.test-token"
    [req] = token_endpoint.requests
    assert req["grant_type"] == "urn:ietf:params:oauth:grant-type:jwt-bearer" and req["assertion"].count(".") == 2


def test_bad_credentials_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from conveyor.brokers.pubsub.auth import build_credentials

    monkeypatch.delenv("PUBSUB_EMULATOR_HOST", raising=False)
    missing = PubsubConfig(type="pubsub", project="p", credentials_file=tmp_path / "nope.json")
    with pytest.raises(AuthError, match=r"cannot read credentials_file '.*nope.json'"):
        build_credentials("gcp", missing)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"type": "service_account", "private_key": "-----BEGIN PRIVATE KEY-----\nxx"}))
    with pytest.raises(AuthError, match="not a usable service-account key") as e:
        build_credentials("gcp", PubsubConfig(type="pubsub", project="p", credentials_file=bad))
    assert "BEGIN PRIVATE KEY" not in str(e.value)


def test_no_adc_is_auth_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from conveyor.brokers.pubsub.auth import build_credentials

    monkeypatch.delenv("PUBSUB_EMULATOR_HOST", raising=False)
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path))  # no gcloud login here
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NO_GCE_CHECK", "True")
    monkeypatch.setenv("GCE_METADATA_HOST", "127.0.0.1:9")  # never the real metadata server
    with pytest.raises(AuthError, match="Application Default Credentials are not available"):
        build_credentials("gcp", PubsubConfig(type="pubsub", project="p"))


def test_config_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = get("pubsub")
    assert spec.kind == "message" and spec.factory == "conveyor.brokers.pubsub.instance:PubsubInstance"
    assert spec.source_model is PubsubSourceConfig and spec.target_model is PubsubTargetConfig
    with pytest.raises(ValidationError, match="either credentials_file or oauth"):
        PubsubConfig.model_validate(
            {
                "type": "pubsub",
                "project": "p",
                "credentials_file": "/x.json",
                "oauth": {"client_id": "c", "client_secret": "s", "refresh_token": "r"},
            }
        )
    with pytest.raises(ValidationError, match="unknown template field"):
        PubsubTargetConfig(instance="g", topic="t", ordering_key="{customer}")
    with pytest.raises(ValidationError, match="Extra inputs"):
        PubsubSourceConfig.model_validate({"instance": "g", "subscription": "s", "prefetch": 3})
    src = PubsubSourceConfig.model_validate({"instance": "g", "subscription": "s", "max_bytes": "10MiB"})
    assert src.max_messages == 1000 and src.max_bytes == 10 * 1024 * 1024 and src.max_lease_duration == 3600
    cfg = PubsubConfig.model_validate(
        {
            "type": "pubsub",
            "project": "p",
            "oauth": {"client_id": "c", "client_secret": SECRET, "refresh_token": REFRESH},
        }
    )
    assert SECRET not in repr(cfg) and SECRET in cfg.secrets() and REFRESH in cfg.secrets()
    assert cfg.oauth is not None and cfg.oauth.scopes == ["https://www.googleapis.com/auth/pubsub"]
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", "127.0.0.1:8681")
    assert cfg.emulator() == "127.0.0.1:8681" and "emulator 127.0.0.1:8681" in cfg.describe()


def test_google_not_imported_by_config_modules() -> None:
    """Start-up of a config without pubsub does not pay for google-cloud."""
    code = "import conveyor.connectors, sys; print(sorted(m for m in sys.modules if m.startswith(('google', 'grpc'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    try:
        import conveyor.cli  # noqa: F401
    except ImportError:
        return
    out = subprocess.run(
        [sys.executable, "-c", code.replace("conveyor.connectors", "conveyor.cli")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.strip() == "[]"
