"""The config schema: top-level settings, flows, and the instance union built from the registry."""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from pydantic import Field, SecretStr, create_model, field_validator, model_validator

from conveyor.clock import parse_clock, parse_days, zone
from conveyor.config.base import InstanceConfig, SourceConfig
from conveyor.config.steps import StepConfig
from conveyor.config.types import ConfigModel, Duration, FreeSpace, Secret, Size, SpaceFloor
from conveyor.registry import INSTANCE_KIND, all_specs
from conveyor.registry import get as spec_of

if TYPE_CHECKING:
    from conveyor.payload.payload import Payload

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"

SPOOL_MAX = 64 * 1024**3
"""The spool's default budget: as large as the default ``max_file_size``, so any file a source
takes by default fits; the disk itself is guarded by ``min_free_space``."""
MIN_FREE_SPACE = SpaceFloor(bytes=1024**3)
"""The default free-space floor: room for the state store to record what is in flight when
intake pauses, on a disk of any size."""


class HealthConfig(ConfigModel):
    """The health/status/metrics HTTP server."""

    listen: str | None = Field("127.0.0.1:8470", description="host:port (or [v6]:port) to listen on; null turns it off")

    @field_validator("listen")
    @classmethod
    def _host_port(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):\d{1,5}$", v):
            raise ValueError(f"'{v}' is not host:port (e.g. 127.0.0.1:8470 or [::1]:8470)")
        return v

    token: Secret | None = Field(
        None,
        description="bearer token for the ledger API; by default one is made at "
        "first start in the file health-token beside the state database",
    )
    allowed_hosts: tuple[str, ...] = Field(
        (),
        description="more names the server answers to in the "
        "Host header (a proxy's or a DNS name); localhost, loopback and the listen "
        "address always count",
    )
    public_listings: bool = Field(
        False,
        description="ledger listings (GET /flows/{flow}/items) answer without "
        "the token; retry and forget still need it",
    )

    @field_validator("token")
    @classmethod
    def _not_blank(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and not v.get_secret_value().strip():
            raise ValueError("is empty: give a token, or leave the key out to have one made")
        return v

    @field_validator("allowed_hosts")
    @classmethod
    def _names(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        out: list[str] = []
        for name in v:
            plain = name.strip().lower().rstrip(".")
            bare = plain[1:-1] if plain.startswith("[") and plain.endswith("]") else plain
            try:
                out.append(str(ipaddress.ip_address(bare)))
                continue
            except ValueError:
                pass
            if not re.match(r"^[a-z0-9_]([a-z0-9_-]*[a-z0-9])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9])?)*$", bare):
                raise ValueError(f"'{name}' is not a host name or address (give names without a port or scheme)")
            out.append(bare)
        return tuple(out)


class LogConfig(ConfigModel):
    """Logging to stderr."""

    level: Literal["debug", "info", "warning", "error"] = Field("info", description="least severe level logged")
    format: Literal["json", "text"] = Field("json", description="one JSON object per line, or readable text")


class RetryConfig(ConfigModel):
    """How often a delivery is tried before the item is ``failed``."""

    attempts: int = Field(10, ge=1, description="tries per delivery, the first included")
    backoff: Duration = Field(1.0, description="wait after the first failure; doubles each time")
    max_backoff: Duration = Field(300.0, description="longest wait between tries")


class WhenConfig(ConfigModel):
    """Which payloads one target of a ``targets:`` list takes; every key given must match."""

    name: str | list[str] | None = Field(
        None, description="glob (or list of globs, any may match) on the payload's name, e.g. '*.csv'"
    )
    min_size: Size | None = Field(None, description="taken only when the body is at least this large")
    max_size: Size | None = Field(None, description="taken only when the body is at most this large")
    attr: dict[str, str] | None = Field(
        None, description="message attributes that must be equal (Pub/Sub sources), e.g. {region: eu}"
    )
    header: dict[str, str] | None = Field(
        None, description="message headers that must be equal (RabbitMQ sources), e.g. {type: order}"
    )

    @field_validator("attr", "header", mode="before")
    @classmethod
    def _text_values(cls, v: Any) -> Any:
        # YAML reads `priority: 5` as a number; a header or attribute is compared as text.
        if isinstance(v, dict):
            return {k: _text(x) for k, x in v.items()}
        return v

    def matches(self, payload: Payload) -> bool:
        """Whether ``payload`` goes to this target. A key the payload lacks (no name, no such
        attribute or header) does not match."""
        if self.name is not None:
            globs = [self.name] if isinstance(self.name, str) else self.name
            if payload.name is None or not any(fnmatch.fnmatchcase(payload.name, g) for g in globs):
                return False
        size = payload.body.size
        if self.min_size is not None and size < self.min_size:
            return False
        if self.max_size is not None and size > self.max_size:
            return False
        message = payload.message or {}
        for key, wanted in (("attributes", self.attr), ("headers", self.header)):
            if wanted:
                have = message.get(key)
                if not isinstance(have, dict):
                    return False
                for k, v in wanted.items():
                    if k not in have or _text(have[k]) != v:
                        return False
        return True


def _text(v: Any) -> Any:
    """A scalar as the text it compares as (``true``, ``5``); anything else as it is."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return v


class TargetEntryConfig(ConfigModel):
    """The keys an entry of ``targets:`` has beside its target's own (``type`` or ``instance`` and the rest)."""

    name: str | None = Field(
        None,
        pattern=NAME_PATTERN,
        description="the target's name in the ledger, /status and metrics (default: its instance or type; "
        "required when two targets would share one)",
    )
    when: WhenConfig | None = Field(None, description="which payloads this target takes (default: every one)")


class ExpectConfig(ConfigModel):
    """Files a flow must have taken by a time of day: when they have not, conveyor says so."""

    by: str = Field(description="deadline, a time of day: HH:MM (24-hour) or HH:MM:SS")
    on: str = Field(
        "MON-SUN",
        description="days with a deadline: names (MON, Tuesday), ranges (MON-FRI) or a list of them; "
        "MON-SUN is every day",
    )
    timezone: str | None = Field(
        None, description="time zone of by and on, e.g. Europe/London (default: the flow's timezone, else UTC)"
    )
    min_files: int = Field(1, ge=1, description="files that must arrive in the window before each deadline")
    alert_url: str | None = Field(
        None,
        description="POST a JSON document here when a deadline is missed, and again when the files "
        "arrive (retried a few times; treated as a secret)",
    )

    @model_validator(mode="before")
    @classmethod
    def _on_key(cls, data: Any) -> Any:
        # YAML 1.1 reads a bare `on` key as the boolean true.
        if isinstance(data, dict) and True in data and "on" not in data:
            data = {("on" if k is True else k): v for k, v in data.items()}
        return data

    @field_validator("by")
    @classmethod
    def _clock(cls, v: str) -> str:
        parse_clock(v)
        return v.strip()

    @field_validator("on", mode="before")
    @classmethod
    def _days(cls, v: Any) -> str:
        parse_days(v)
        return ",".join(v) if isinstance(v, list) else str(v)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str | None) -> str | None:
        return None if v is None else zone(v).key

    @field_validator("alert_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^https?://[^/?#\s]+[^\s]*$", v.strip()):
            raise ValueError("must be an http:// or https:// URL")
        return None if v is None else v.strip()


class FlowConfig(ConfigModel):
    """A flow as written; ``source`` and ``target`` are checked against their instance's type."""

    source: dict[str, Any] = Field(description="instance + what to read from it")
    target: dict[str, Any] | None = Field(
        None, description="type: a target type (see below), or instance + where to write; required unless targets"
    )
    targets: list[dict[str, Any]] | None = Field(
        None,
        description="instead of target: a list of targets, each with an optional name and when "
        "(see Fan-out and routing); every payload goes to each target whose when matches",
    )
    steps: tuple[StepConfig, ...] = Field(
        (), description="what is done to each payload on its way, in order (see Steps)"
    )

    @field_validator("steps")
    @classmethod
    def _one_split(cls, v: tuple[StepConfig, ...]) -> tuple[StepConfig, ...]:
        # progress is recorded for one split per item: a split of a split's messages would have none
        if sum(s.kind == "split" for s in v) > 1:
            raise ValueError("a flow may have one split step")
        # a batch's members are the flow's messages as they came: nothing may stand before it
        if any(s.kind == "collect" for s in v[1:]):
            raise ValueError("collect must be the first step (it gathers the messages as they came)")
        return v

    retry: RetryConfig = Field(default_factory=RetryConfig)
    max_in_flight: int = Field(16, ge=1, le=10_000, description="payloads in delivery at once (backpressure)")
    enabled: bool = Field(True, description="false keeps the flow in the file but does not run it")
    description: str | None = Field(None, description="free text for operators")
    timezone: str | None = Field(
        None,
        description="IANA zone (e.g. Europe/London) for the flow's clock times: dates in target filename "
        "and path templates, its source's schedule and expect (default UTC)",
    )
    expect: ExpectConfig | None = Field(None, description="files the flow must have taken by a time of day")

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, v: str | None) -> str | None:
        if v is not None:
            zone(v)
        return v

    @field_validator("steps", mode="before")
    @classmethod
    def _one_step(cls, v: Any) -> Any:
        # One step is often written as a mapping rather than a list of one.
        return [v] if isinstance(v, dict) else v


class TracesConfig(ConfigModel):
    """OpenTelemetry traces, exported over OTLP/HTTP (needs ``pip install 'conveyor[traces]'``)."""

    endpoint: str = Field(
        description="the OTLP/HTTP collector, e.g. http://collector:4318 (spans are POSTed to its /v1/traces)"
    )
    service_name: str = Field("conveyor", min_length=1, description="the `service.name` the spans carry")
    sample_ratio: float = Field(
        1.0,
        ge=0.0,
        le=1.0,
        description="share of payloads traced (0 to 1); a message that arrives with a trace follows its sampling",
    )
    headers: dict[str, Secret] = Field(
        default_factory=dict, description="request headers for the collector (e.g. its credentials; kept secret)"
    )
    timeout: Duration = Field(10.0, gt=0, description="how long one export may take")
    interval: Duration = Field(5.0, gt=0, description="how often buffered spans are sent")

    @field_validator("endpoint")
    @classmethod
    def _http_url(cls, v: str) -> str:
        if not re.match(r"^https?://[^/\s]+", v):
            raise ValueError(f"'{v}' is not an http:// or https:// URL (e.g. http://collector:4318)")
        return v


@cache
def raw_model(types: tuple[str, ...] = ()) -> type[ConfigModel]:
    """The top-level model, with ``instances`` a discriminated union of the instance ``types``
    (registered names), or of every registered type when none is given. An unknown ``type`` is
    reported the same either way (see the loader), and only the models used are built."""
    if types:
        models = tuple(spec_of(t).instance_model for t in types)
    else:
        models = tuple(s.instance_model for s in all_specs().values())
    union = Annotated[Union[models], Field(discriminator="type")]  # type: ignore[valid-type]  # noqa: UP007
    model: type[ConfigModel] = create_model(
        "ConveyorConfig",
        __base__=ConfigModel,
        state=(str | None, Field(None, description="SQLite file path or postgresql:// URL")),
        spool_dir=(str | None, Field(None, description="where large bodies are written while they travel")),
        spool_threshold=(Size, Field(8 * 1024 * 1024, description="bodies larger than this go to the spool")),
        spool_max=(
            Size | None,
            Field(
                SPOOL_MAX,
                description="most bytes the spool may hold; intake pauses past it (null: no limit but min_free_space)",
            ),
        ),
        min_free_space=(
            FreeSpace,
            Field(
                MIN_FREE_SPACE,
                description="free space (size or % of the disk) to keep "
                "where the state store and spool are; below it intake pauses (0: off)",
            ),
        ),
        shutdown_timeout=(Duration, Field(30.0, description="how long SIGTERM waits for deliveries in flight")),
        replica=(str | None, Field(None, description="this replica's name in a shared store (default host:pid)")),
        retention=(Duration, Field(30 * 86400.0, description="settled ledger rows are pruned after this")),
        health=(HealthConfig, Field(default_factory=HealthConfig)),
        log=(LogConfig, Field(default_factory=LogConfig)),
        traces=(TracesConfig | None, Field(None, description="OpenTelemetry traces (see `traces`); off when absent")),
        instances=(dict[str, union], Field(default_factory=dict)),
        flows=(dict[str, FlowConfig], Field(default_factory=dict)),
    )
    return model


@dataclass(frozen=True)
class Route:
    """One target of a flow, after validation."""

    name: str
    """Its name in the ledger (``""`` for a flow's one ``target:``)."""
    target: Any
    kind: str
    """The target type's name (see :func:`conveyor.registry.target_specs`), or ``instance``."""
    when: WhenConfig | None = None
    key: str = "target"
    """Its config key below the flow: ``target``, or ``targets[1]``."""

    @property
    def instance(self) -> str | None:
        """The instance the target writes to, if any."""
        return getattr(self.target, "instance", None) if self.kind == INSTANCE_KIND else None


@dataclass(frozen=True)
class Flow:
    """A flow after both phases of validation."""

    name: str
    source: SourceConfig
    target: Any
    target_kind: str
    """The target type's name (see :func:`conveyor.registry.target_specs`), or ``instance``."""
    retry: RetryConfig
    max_in_flight: int
    enabled: bool
    timezone: str | None = None
    """The flow's ``timezone``: dates in target name templates, schedules and deadlines are in it (None: UTC)."""
    fan_out: tuple[Route, ...] = ()
    """The targets of a ``targets:`` list (``target`` and ``target_kind`` are then its first's);
    empty for a flow with one ``target:``."""
    steps: tuple[StepConfig, ...] = ()
    """What is done to each payload between source and target, in order."""
    expect: ExpectConfig | None = None

    @property
    def target_instance(self) -> str | None:
        """The instance the target writes to, if any (the first target's, for a ``targets:`` list)."""
        return getattr(self.target, "instance", None) if self.target_kind == INSTANCE_KIND else None

    @property
    def routes(self) -> tuple[Route, ...]:
        """Every target of the flow: its ``targets:`` list, or its one ``target:``."""
        return self.fan_out or (Route("", self.target, self.target_kind),)


@dataclass(frozen=True)
class Config:
    """A whole, valid config."""

    path: str
    state: str
    spool_dir: str
    spool_threshold: int
    spool_max: int | None
    shutdown_timeout: float
    replica: str | None
    retention: float
    health: HealthConfig
    log: LogConfig
    instances: dict[str, InstanceConfig]
    flows: dict[str, Flow]
    min_free_space: SpaceFloor = MIN_FREE_SPACE
    traces: TracesConfig | None = None
    sensitive: tuple[str, ...] = ()
    """Values read through ${file:...}: redacted wherever they might show."""

    def secrets(self) -> list[str]:
        """Every secret value in the config."""
        out = list(self.sensitive)
        for inst in self.instances.values():
            out.extend(inst.secrets())
        if self.health.token is not None:
            out.append(self.health.token.get_secret_value())
        if self.traces is not None:
            out.extend(v.get_secret_value() for v in self.traces.headers.values())
        for flow in self.flows.values():
            for route in flow.routes:
                headers = getattr(route.target, "headers", None)
                if isinstance(headers, dict):
                    out.extend(v for k, v in headers.items() if isinstance(v, str) and _secret_header(k))
            for step in flow.steps:
                out.extend(step.secrets())
            if flow.expect is not None and flow.expect.alert_url:
                out.append(flow.expect.alert_url)  # a chat webhook's URL is its credential
        return [s for s in out if s]


def _secret_header(name: str) -> bool:
    n = name.lower()
    return any(w in n for w in ("auth", "token", "key", "secret", "cookie", "pass"))
