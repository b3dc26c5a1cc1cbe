"""Traces: one OpenTelemetry trace per payload, exported over OTLP/HTTP (the ``traces:`` section).

A payload's root span holds a child span for its fetch (a file's download, a message's
receipt), one per step it goes through and one per delivery (each target of a ``targets:``
list). A message that arrives with a W3C ``traceparent`` (AMQP header, Pub/Sub attribute)
continues the trace it came with; every message or request conveyor sends carries the
``traceparent`` of its delivery span on.

The OpenTelemetry libraries are an optional extra (``pip install 'conveyor[traces]'``) and are
imported only by :func:`start`. Until then :data:`_tracer` is None and every function here
returns at once: tracing off costs a None check per payload, nothing more.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, MutableMapping
from typing import TYPE_CHECKING, Any

from conveyor.errors import describe
from conveyor.redact import redact

if TYPE_CHECKING:
    from conveyor.config.schema import TracesConfig
    from conveyor.payload.payload import Payload

log = logging.getLogger("conveyor.traces")

EXTRA = "pip install 'conveyor[traces]'"
"""How to install what tracing needs."""

MODULES = ("opentelemetry.sdk.trace", "opentelemetry.exporter.otlp.proto.http.trace_exporter")
"""What :func:`start` imports: checked with the config (a missing extra is a config error)."""

_PROPAGATED = ("traceparent", "tracestate")

_tracer: Any = None
_provider: Any = None
_propagator: Any = None
"""W3C Trace Context only, whatever ``OTEL_PROPAGATORS`` says: what the docs promise."""


class Span:
    """A span being recorded; with tracing off, :data:`OFF` stands in and does nothing."""

    __slots__ = ("_cm", "_span")

    def __init__(self, cm: Any) -> None:
        self._cm = cm
        self._span: Any = None

    def __enter__(self) -> Span:
        self._span = self._cm.__enter__()
        return self

    def __exit__(self, kind: Any, error: BaseException | None, tb: Any) -> None:
        if error is not None and isinstance(error, Exception):
            # Said here rather than by the SDK: its own message would not be redacted (outcome does).
            self.outcome("failed", describe(error))
        self._cm.__exit__(kind, error, tb)

    def outcome(self, outcome: str, error: str | None = None) -> None:
        """Set the ``outcome`` attribute, and the span's status to error for a failure."""
        self._span.set_attribute("outcome", outcome)
        if error is not None or outcome == "failed":
            from opentelemetry.trace import Status, StatusCode

            self._span.set_status(Status(StatusCode.ERROR, redact(error or outcome)))


class _Off:
    """The span of tracing off: enters, exits and records nothing."""

    __slots__ = ()

    def __enter__(self) -> _Off:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def outcome(self, outcome: str, error: str | None = None) -> None:
        """Nothing to set."""


OFF = _Off()


def enabled() -> bool:
    """Whether traces are being recorded."""
    return _tracer is not None


def start(config: TracesConfig) -> None:
    """Set up the tracer and its OTLP/HTTP exporter (spans are sent in batches, off the loop)."""
    global _tracer, _provider, _propagator
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    from conveyor import __version__

    endpoint = config.endpoint.rstrip("/")
    if not endpoint.endswith("/v1/traces"):
        endpoint += "/v1/traces"
    exporter = OTLPSpanExporter(
        endpoint=endpoint,
        headers={k: v.get_secret_value() for k, v in config.headers.items()},
        timeout=config.timeout,
    )
    provider = TracerProvider(
        resource=Resource.create({"service.name": config.service_name, "service.version": __version__}),
        sampler=ParentBased(TraceIdRatioBased(config.sample_ratio)),
    )
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=config.interval * 1000))
    _provider, _tracer = provider, provider.get_tracer("conveyor", __version__)
    _propagator = TraceContextTextMapPropagator()
    log.info("traces go to %s as %s", endpoint, config.service_name)


def stop() -> None:
    """Send the spans still buffered and stop (blocking: call it from a thread)."""
    global _tracer, _provider
    provider, _provider, _tracer = _provider, None, None
    if provider is not None:
        provider.shutdown()


def payload_span(
    payload_id: str, flow: str, name: str | None, size: int | None, parent: Payload | None = None
) -> Span | _Off:
    """The root span of one payload. ``parent``: a message whose headers or attributes may carry
    the trace it belongs to (its ``traceparent``), which this one then joins."""
    if _tracer is None:
        return OFF
    context = None
    if parent is not None:
        carrier = carrier_of(parent)
        if carrier:
            context = _propagator.extract(carrier)
    return _span("payload", context, _about(flow, payload_id, name, size))


def span(name: str, payload: Payload, key: str | None = None, value: str | None = None) -> Span | _Off:
    """A child of the current span (a step, a delivery) about ``payload``; ``key``, ``value``:
    one more attribute (the target's name, say)."""
    if _tracer is None:
        return OFF
    attrs = _about(payload.flow, payload.id, payload.name, payload.body.size)
    if key is not None:
        attrs[key] = value
    return _span(name, None, attrs)


def fetch(flow: str, payload_id: str, name: str | None, size: int | None) -> Span | _Off:
    """The span of a file's download, a child of its payload span."""
    if _tracer is None:
        return OFF
    return _span("fetch", None, _about(flow, payload_id, name, size))


def received(payload: Payload, at: float) -> None:
    """Record a message's receipt (``at``: ``time.time()`` when the broker handed it over) as
    the fetch span of the current payload span."""
    if _tracer is None:
        return
    attrs = _about(payload.flow, payload.id, payload.name, payload.body.size)
    attrs["outcome"] = "received"
    start = int(at * 1e9)
    _tracer.start_span("fetch", start_time=start, attributes=_attributes(attrs)).end(max(start, time.time_ns()))


def inject(headers: MutableMapping[str, Any]) -> None:
    """Write the current span's ``traceparent`` (and ``tracestate``) into outgoing headers."""
    if _tracer is None:
        return
    for key in _PROPAGATED:
        headers.pop(key, None)  # copied from the incoming message: this delivery's own replaces it
    _propagator.inject(headers)


def carrier_of(payload: Payload) -> dict[str, str]:
    """The W3C trace headers a message came with (AMQP headers, Pub/Sub attributes)."""
    msg = payload.message or {}
    fields = msg.get("headers") if payload.source_type == "rabbitmq" else msg.get("attributes")
    if not isinstance(fields, Mapping):
        return {}
    out: dict[str, str] = {}
    for key in _PROPAGATED:
        value = fields.get(key)
        if isinstance(value, bytes):
            value = value.decode("ascii", "replace")
        if isinstance(value, str):
            out[key] = value
    return out


def _about(flow: str, payload_id: str, name: str | None, size: int | None) -> dict[str, Any]:
    return {"flow": flow, "payload.id": payload_id, "payload.name": name, "payload.size": size}


def _attributes(attrs: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in attrs.items() if v is not None}


def _span(name: str, context: Any, attrs: Mapping[str, Any]) -> Span:
    return Span(
        _tracer.start_as_current_span(
            name, context=context, attributes=_attributes(attrs), record_exception=False, set_status_on_exception=False
        )
    )


class Tracing:
    """The daemon add-on that records traces while it runs (see :func:`start`)."""

    def __init__(self, config: TracesConfig) -> None:
        self.config = config

    async def start(self, daemon: Any) -> None:
        """Set up the exporter before flows start."""
        start(self.config)

    async def ready(self) -> None:
        """Nothing to do once flows run."""

    async def stop(self) -> None:
        """Deliveries still drain: their spans are sent at :meth:`close`."""

    async def close(self) -> None:
        """Send what is buffered (a bounded wait: the exporter's own timeout)."""
        import asyncio

        await asyncio.to_thread(stop)
