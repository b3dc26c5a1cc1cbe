"""Config models of the ``pubsub`` instance type (pydantic only: google-cloud lives in the runtime modules)."""

from __future__ import annotations

import os
import string
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from conveyor.config.base import InstanceConfig, MessageSourceConfig, MessageTargetConfig
from conveyor.config.types import ConfigModel, Duration, Secret, Size
from conveyor.registry import ConnectorSpec, register

PUBSUB_SCOPE = "https://www.googleapis.com/auth/pubsub"
TEMPLATE_FIELDS = frozenset({"id", "name", "flow", "stem", "ext", "ordering_key"})
"""Names an ``ordering_key`` or attribute template may use."""


def check_template(template: str) -> str:
    """Refuse a template naming a field that does not exist (a typo would publish the wrong key)."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        raise ValueError(f"not a valid template: {e}") from None
    for f in fields:
        if f not in TEMPLATE_FIELDS:
            known = ", ".join("{" + n + "}" for n in sorted(TEMPLATE_FIELDS))
            raise ValueError(f"unknown template field {{{f}}}: use {known}")
    return template


class OAuthConfig(ConfigModel):
    """OAuth 2 user credentials (the Patchworks authorisation-code instance): refreshed automatically."""

    client_id: str = Field(min_length=1, description="OAuth client ID")
    client_secret: Secret = Field(description="OAuth client secret")
    refresh_token: Secret = Field(description="refresh token obtained by the authorisation-code grant")
    token_uri: str = Field("https://oauth2.googleapis.com/token", description="token endpoint used to refresh")
    scopes: list[str] = Field(default_factory=lambda: [PUBSUB_SCOPE], description="OAuth scopes")


class PubsubConfig(InstanceConfig):
    """A Google Cloud Pub/Sub project, authenticated by a service account, OAuth 2 user credentials or ADC."""

    type: Literal["pubsub"]
    project: str = Field(min_length=1, description="Google Cloud project id")
    credentials_file: Path | None = Field(None, description="service-account key file (JSON)")
    oauth: OAuthConfig | None = Field(
        None, description="OAuth 2 user credentials: client_id, client_secret, refresh_token"
    )
    emulator_host: str | None = Field(
        None, description="host:port of a Pub/Sub emulator (default: the PUBSUB_EMULATOR_HOST variable, if set)"
    )
    timeout: Duration = Field(30.0, gt=0, description="limit for each administrative call and publish")

    @model_validator(mode="after")
    def _one_credential(self) -> PubsubConfig:
        if self.credentials_file is not None and self.oauth is not None:
            raise ValueError(
                "give either credentials_file or oauth, not both (neither: Application Default Credentials)"
            )
        return self

    @field_validator("emulator_host")
    @classmethod
    def _host_port(cls, v: str | None) -> str | None:
        if v is not None and (":" not in v or not v.rsplit(":", 1)[1].isdigit()):
            raise ValueError("emulator_host must be host:port, e.g. 127.0.0.1:8085")
        return v

    def emulator(self) -> str | None:
        """The emulator address in use: the config's, else ``PUBSUB_EMULATOR_HOST``, else None."""
        return self.emulator_host or os.environ.get("PUBSUB_EMULATOR_HOST") or None

    def describe(self) -> str:
        """``project P`` plus the emulator address or the kind of credentials."""
        emu = self.emulator()
        if emu:
            return f"project {self.project} (emulator {emu})"
        how = "service account" if self.credentials_file else "oauth" if self.oauth else "ADC"
        return f"project {self.project} ({how})"


class CreateSubscription(ConfigModel):
    """Create the subscription at start when it is missing (for development and tests)."""

    topic: str = Field(min_length=1, description="topic the subscription attaches to (created if missing)")
    ack_deadline: Duration = Field(60.0, ge=10, le=600, description="the subscription's ack deadline")
    enable_message_ordering: bool = Field(False, description="deliver messages with one ordering key in order")
    dead_letter_topic: str | None = Field(None, description="topic for messages that exhaust max_delivery_attempts")
    max_delivery_attempts: int | None = Field(None, ge=5, le=100, description="with dead_letter_topic (5-100)")

    @model_validator(mode="after")
    def _dead_letter(self) -> CreateSubscription:
        if self.max_delivery_attempts is not None and self.dead_letter_topic is None:
            raise ValueError("max_delivery_attempts needs dead_letter_topic")
        return self


class PubsubSourceConfig(MessageSourceConfig):
    """Streaming pull from a subscription, with flow control."""

    when_keys: ClassVar[tuple[str, ...]] = ("attr",)
    """Pub/Sub messages carry attributes."""

    subscription: str = Field(min_length=1, description="subscription id (or projects/P/subscriptions/S)")
    max_messages: int = Field(1000, ge=1, description="flow control: messages outstanding (not yet acked) at once")
    max_bytes: Size = Field(100 * 1024 * 1024, ge=1, description="flow control: bytes outstanding at once")
    max_lease_duration: Duration = Field(
        3600.0, ge=10, description="how long leases of a slow delivery are extended before Pub/Sub may redeliver"
    )
    create_subscription: CreateSubscription | None = Field(
        None, description="create the subscription (and topic) when missing: for development"
    )


class BatchConfig(ConfigModel):
    """Publisher batching: a batch is sent when any limit is reached."""

    max_messages: int = Field(100, ge=1, le=1000, description="messages per batch")
    max_bytes: Size = Field(1024 * 1024, ge=1, le=10 * 1000 * 1000, description="bytes per batch")
    max_latency: Duration = Field(0.01, description="longest a message waits for its batch to fill")


class PubsubTargetConfig(MessageTargetConfig):
    """Publish each payload to a topic, metadata in attributes."""

    topic: str = Field(min_length=1, description="topic id (or projects/P/topics/T)")
    ordering_key: str | None = Field(
        None, description="template for the ordering key, over {id} {name} {flow} {stem} {ext} {ordering_key}"
    )
    attributes: dict[str, str] = Field(
        default_factory=dict, description="extra attributes (values are templates like ordering_key)"
    )
    batch: BatchConfig = Field(default_factory=BatchConfig, description="batching settings")

    @field_validator("ordering_key")
    @classmethod
    def _key_template(cls, v: str | None) -> str | None:
        return check_template(v) if v is not None else None

    @field_validator("attributes")
    @classmethod
    def _attr_templates(cls, v: dict[str, str]) -> dict[str, str]:
        for key, value in v.items():
            if not key or len(key.encode()) > 256 or key.startswith("goog"):
                raise ValueError(f"attribute name {key!r}: 1-256 bytes, not starting with 'goog'")
            check_template(value)
        return v


register(
    ConnectorSpec(
        type="pubsub",
        kind="message",
        instance_model=PubsubConfig,
        source_model=PubsubSourceConfig,
        target_model=PubsubTargetConfig,
        factory="conveyor.brokers.pubsub.instance:PubsubInstance",
    )
)
