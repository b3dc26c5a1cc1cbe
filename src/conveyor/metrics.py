"""Prometheus metrics, fed by the status board's events into a registry of this daemon's own.

A per-daemon :class:`~prometheus_client.CollectorRegistry` (not the process-global one)
keeps two daemons in one process (the tests) from counting into each other.
"""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

from conveyor.status import StatusBoard

log = logging.getLogger("conveyor.metrics")

# The *_created series double the exposition for no use on a long-running daemon.
disable_created_metrics()  # type: ignore[no-untyped-call]

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class Metrics:
    """The eight conveyor metrics; an observer of a :class:`StatusBoard` (``on_event``)."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, board: StatusBoard) -> None:
        self.board = board
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.payloads = Counter(
            "conveyor_payloads_total",
            "Payloads that left delivery, by outcome (delivered, failed, skipped, released, no_target)",
            ["flow", "outcome"],
            registry=r,
        )
        self.bytes = Counter("conveyor_payload_bytes_total", "Body bytes delivered", ["flow"], registry=r)
        self.seconds = Histogram(
            "conveyor_delivery_seconds", "Time from claim to confirmed delivery", ["flow"], buckets=_BUCKETS, registry=r
        )
        self.instance_up = Gauge(
            "conveyor_instance_up", "1 when the instance is connected, else 0", ["instance"], registry=r
        )
        self.in_flight = Gauge("conveyor_in_flight", "Payloads in delivery now", ["flow"], registry=r)
        self.connects = Counter(
            "conveyor_connect_attempts_total",
            "Connection attempts by outcome (ok, error)",
            ["instance", "outcome"],
            registry=r,
        )
        self.refused = Counter(
            "conveyor_files_refused_total",
            "Source files refused for an unsafe name, "
            "their size, or for being a symlink or special file (each counted once, when "
            "first seen)",
            ["flow"],
            registry=r,
        )
        self.targets = Counter(
            "conveyor_target_deliveries_total",
            "Deliveries to each target of a flow's targets: list, by outcome (delivered, failed)",
            ["flow", "target", "outcome"],
            registry=r,
        )
        self.expectation_missed = Gauge(
            "conveyor_flow_expectation_missed",
            "1 while a flow's expected files have not arrived by their deadline (flows with expect only)",
            ["flow"],
            registry=r,
        )
        # Label children are cached: a labels() lookup per payload is the hot path at 1,000/s.
        self._children: dict[tuple[int | str, ...], Any] = {}
        self._warned = False

    def attach(self) -> None:
        """Start observing the board."""
        if self not in self.board.observers:
            self.board.observers.append(self)

    def detach(self) -> None:
        """Stop observing the board."""
        if self in self.board.observers:
            self.board.observers.remove(self)

    def _child(self, metric: Any, *labels: str) -> Any:
        key: tuple[int | str, ...] = (id(metric), *labels)  # the name is private to prometheus_client
        c = self._children.get(key)
        if c is None:
            c = self._children[key] = metric.labels(*labels)
        return c

    def on_event(self, kind: str, **f: Any) -> None:
        """A status board event. Never raises: metrics must not break a delivery's bookkeeping."""
        try:
            self._count(kind, f)
        except Exception:
            if not self._warned:
                self._warned = True
                log.exception("metrics: could not count a %s event", kind)

    def _count(self, kind: str, f: dict[str, Any]) -> None:
        if kind == "payload":
            flow, outcome = f["flow"], f["outcome"]
            self._child(self.payloads, flow, outcome).inc()
            if outcome == "delivered":
                self._child(self.bytes, flow).inc(f.get("size") or 0)
                self._child(self.seconds, flow).observe(f.get("seconds") or 0.0)
        elif kind == "target":
            self._child(self.targets, f["flow"], f["target"], f["outcome"]).inc()
        elif kind == "connect_attempt":
            self._child(self.connects, f["instance"], f["outcome"]).inc()
        elif kind == "refused":
            self._child(self.refused, f["flow"]).inc()
        elif kind == "expectation":
            self._child(self.expectation_missed, f["flow"]).set(1 if f["missed"] else 0)
        elif kind == "instance_state":
            self._child(self.instance_up, f["instance"]).set(1 if f["state"] == "up" else 0)

    def refresh(self) -> None:
        """Bring the gauges in line with the board (instances registered but never reported, removed flows)."""
        for name, inst in self.board.instances.items():
            self._child(self.instance_up, name).set(1 if inst.state == "up" else 0)
        for name, fl in self.board.flows.items():
            self._child(self.in_flight, name).set(fl.in_flight)
            for outcome in ("delivered", "failed"):
                self._child(self.payloads, name, outcome)  # present at 0, so rate() works from the start
                for target in fl.targets:
                    self._child(self.targets, name, target, outcome)
            if fl.targets:
                self._child(self.payloads, name, "no_target")
            if fl.poll_interval is not None or fl.schedule is not None:  # a file source
                self._child(self.refused, name)
            if fl.expectation is not None:
                self._child(self.expectation_missed, name).set(1 if fl.expectation.get("state") == "missed" else 0)

    def exposition(self) -> bytes:
        """The Prometheus text format."""
        self.refresh()
        return bytes(generate_latest(self.registry))
