"""Config models of the ``rabbitmq`` instance type (pydantic only; aio-pika lives in the runtime modules)."""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any, ClassVar, Literal
from urllib.parse import unquote, urlsplit

from pydantic import Field, field_validator, model_validator

from conveyor.config.base import InstanceConfig, MessageSourceConfig, MessageTargetConfig
from conveyor.config.types import ConfigModel, Duration, Secret, Size
from conveyor.netloc import hostport
from conveyor.registry import ConnectorSpec, register


class RabbitConfig(InstanceConfig):
    """A RabbitMQ broker: host, username, password and vhost as a Patchworks RabbitMQ instance has
    them, or one ``url``; plus TLS, heartbeat and the connection name shown in the management UI."""

    type: Literal["rabbitmq"]
    host: str | None = Field(None, description="broker host name or address (or give url)")
    port: int | None = Field(None, ge=1, le=65535, description="AMQP port (default 5672, 5671 with tls)")
    username: str | None = Field(None, description="login name (default guest)")
    password: Secret | None = Field(None, description="password")
    vhost: str | None = Field(None, description="virtual host (default /)")
    url: Secret | None = Field(
        None, description="amqp://user:pass@host:port/vhost or amqps://...; instead of host/port/username/..."
    )
    tls: bool = Field(False, description="connect with TLS (amqps)")
    ca_file: Path | None = Field(None, description="CA bundle to verify the broker's certificate with")
    cert_file: Path | None = Field(None, description="client certificate (PEM) for mutual TLS")
    key_file: Path | None = Field(None, description="client private key (PEM) for mutual TLS")
    heartbeat: Duration = Field(60.0, description="AMQP heartbeat; a silent broker is dropped after about 2x this")
    connection_name: str | None = Field(
        None, description="name shown in the management UI (default: 'conveyor <instance>')"
    )
    timeout: Duration = Field(10.0, gt=0, description="connect timeout, and the limit for every broker call")

    @field_validator("url")
    @classmethod
    def _url_scheme(cls, v: Any) -> Any:
        if v is not None:
            parts = urlsplit(v.get_secret_value())
            if parts.scheme not in ("amqp", "amqps"):
                raise ValueError("url must start with amqp:// or amqps://")
            if not parts.hostname:
                raise ValueError("url has no host")
        return v

    @model_validator(mode="after")
    def _url_or_fields(self) -> RabbitConfig:
        if self.url is not None:
            given = [n for n in ("host", "port", "username", "password", "vhost") if getattr(self, n) is not None]
            if given:
                raise ValueError(
                    f"give either url or host/port/username/password/vhost, not both (also set: {', '.join(given)})"
                )
        elif not self.host:
            raise ValueError("no broker address: set host (and username, password, vhost) or url")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        if not self.use_tls and (self.ca_file or self.cert_file):
            raise ValueError("ca_file/cert_file/key_file are set but tls is off (set tls: true or use amqps://)")
        return self

    # -- the effective address, whichever way it was written ------------------
    @property
    def use_tls(self) -> bool:
        """Whether the connection uses TLS (``tls: true`` or an amqps:// url)."""
        if self.url is not None:
            return urlsplit(self.url.get_secret_value()).scheme == "amqps" or self.tls
        return self.tls

    def address(self) -> tuple[str, int, str, str]:
        """``(host, port, user, vhost)`` without the password."""
        tls_port = 5671 if self.use_tls else 5672
        if self.url is not None:
            p = urlsplit(self.url.get_secret_value())
            path = p.path[1:] if p.path.startswith("/") else p.path
            vhost = unquote(path) if path else "/"
            return p.hostname or "", p.port or tls_port, unquote(p.username or "guest"), vhost
        return self.host or "", self.port or tls_port, self.username or "guest", self.vhost or "/"

    def describe(self) -> str:
        """``user@host:port/vhost``."""
        host, port, user, vhost = self.address()
        return f"{user}@{hostport(host, port)}/{'' if vhost == '/' else vhost}"


class QueueDeclare(ConfigModel):
    """Declare the queue (create it if missing, check its settings if present)."""

    durable: bool = Field(True, description="the queue survives a broker restart")
    type: Literal["classic", "quorum"] = Field("classic", description="queue type")
    arguments: dict[str, Any] = Field(
        default_factory=dict,
        description="queue arguments, e.g. x-dead-letter-exchange, x-dead-letter-routing-key, x-message-ttl",
    )

    @model_validator(mode="after")
    def _quorum_durable(self) -> QueueDeclare:
        if self.type == "quorum" and not self.durable:
            raise ValueError("quorum queues are always durable: remove durable: false")
        if "x-queue-type" in self.arguments:
            raise ValueError("set the queue type with `type:`, not arguments.x-queue-type")
        return self


class Binding(ConfigModel):
    """Bind the queue to an exchange with one or more routing keys."""

    exchange: str = Field(min_length=1, description="exchange to bind the queue to (must exist)")
    routing_key: list[str] = Field(default_factory=lambda: [""], description="routing key, or a list of them")

    @field_validator("routing_key", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v


class RabbitSourceConfig(MessageSourceConfig):
    """Consume a queue with manual acks."""

    when_keys: ClassVar[tuple[str, ...]] = ("header",)
    """RabbitMQ messages carry headers."""

    queue: str = Field(min_length=1, description="queue to consume")
    prefetch: int = Field(100, ge=1, le=65535, description="unacknowledged messages the broker sends ahead")
    max_message_size: Size = Field(
        16 * 1024 * 1024,
        ge=1,
        description="a larger message is rejected without requeue (to the queue's "
        "dead-letter exchange), its body never held; prefetch x this bounds the flow's memory",
    )
    declare: QueueDeclare | None = Field(
        None, description="declare the queue; absent: the queue must exist (a typo fails loudly with not found)"
    )
    bindings: list[Binding] = Field(default_factory=list, description="exchange bindings made at start")


TEMPLATE_FIELDS = frozenset(
    {"id", "name", "flow", "stem", "ext", "source", "queue", "exchange", "routing_key", "headers"}
)


class RabbitTargetConfig(MessageTargetConfig):
    """Publish to an exchange with publisher confirms."""

    exchange: str = Field("", description="exchange to publish to ('' is the default exchange: routing_key = queue)")
    routing_key: str = Field(
        "",
        description="template over {id} {name} {flow} {stem} {ext} {source} and the source message's {queue} "
        "{exchange} {routing_key} {headers[NAME]}",
    )
    mandatory: bool = Field(True, description="an unroutable message is a failure, not a silent drop")
    persistent: bool = Field(True, description="delivery mode 2: the broker writes the message to disk")
    headers: dict[str, str] = Field(default_factory=dict, description="extra headers on every message")
    copy_headers: bool = Field(
        True,
        description="pass the source message's own headers on (broker-added x-death and x-delivery-count excluded)",
    )

    @field_validator("routing_key")
    @classmethod
    def _template_fields(cls, v: str) -> str:
        try:
            parsed = list(string.Formatter().parse(v))
        except ValueError as e:
            raise ValueError(f"routing_key is not a valid template: {e}") from None
        for _, field, spec, conv in parsed:
            if field is None:
                continue
            root = field.split("[", 1)[0].split(".", 1)[0]
            if root not in TEMPLATE_FIELDS:
                raise ValueError(
                    f"routing_key: unknown field {{{field}}}; use one of "
                    f"{', '.join('{' + f + '}' for f in sorted(TEMPLATE_FIELDS))}"
                )
            if spec or conv:
                raise ValueError(f"routing_key: no format spec or conversion allowed in {{{field}}}")
        return v

    @model_validator(mode="after")
    def _default_exchange_needs_key(self) -> RabbitTargetConfig:
        if self.exchange == "" and self.routing_key == "":
            raise ValueError("publishing to the default exchange ('') needs routing_key: the queue name")
        return self


register(
    ConnectorSpec(
        type="rabbitmq",
        kind="message",
        instance_model=RabbitConfig,
        source_model=RabbitSourceConfig,
        target_model=RabbitTargetConfig,
        factory="conveyor.brokers.rabbitmq.instance:RabbitInstance",
    )
)
