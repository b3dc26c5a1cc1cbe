"""The status board: what every instance and flow is doing, for /status, /readyz and metrics.

Connectors and the flow runtime report events here; they never format status themselves.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

from conveyor.redact import redact

InstanceState = Literal["up", "connecting", "down"]


@dataclass
class InstanceStatus:
    """One instance's connection state."""

    name: str
    type: str
    address: str = ""
    state: InstanceState = "connecting"
    since: float = field(default_factory=time.time)
    last_error: str | None = None
    permanent: bool = False
    """The last error was permanent (auth, host key): retried only after a long backoff."""
    warnings: list[str] = field(default_factory=list)
    identity: str | None = None
    """What the server proved itself with on the last connection (an SSH host key's fingerprint)."""


@dataclass
class TargetStatus:
    """One target of a flow with a ``targets:`` list."""

    delivered: int = 0
    failed: int = 0
    retried: int = 0
    last_delivery: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None


@dataclass
class FlowStatus:
    """One flow's progress."""

    name: str
    state: str = "starting"
    delivered: int = 0
    failed: int = 0
    skipped: int = 0
    retried: int = 0
    refused: int = 0
    """Source files refused for an unsafe name, their size, or for being a symlink or special file
    (local folders), each counted once when first seen."""
    bytes: int = 0
    in_flight: int = 0
    last_delivery: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    last_poll: float | None = None
    retry_at: float | None = None
    """While backing off: when the source is started again."""
    poll_interval: float | None = None
    schedule: str | None = None
    """A file source's cron schedule (then ``poll_interval`` is None)."""
    next_poll: float | None = None
    """When a scheduled file source lists next."""
    expectation: dict[str, Any] | None = None
    """The flow's expected arrivals as /status shows them (flows with ``expect`` only)."""
    delivery_timeout: float | None = None
    oldest_in_flight: dict[str, float] = field(default_factory=dict)
    """payload id -> time its delivery started, to spot stuck deliveries."""
    no_target: int = 0
    """Payloads settled without a delivery: no target of the flow's ``targets:`` list matched them."""
    targets: dict[str, TargetStatus] = field(default_factory=dict)
    """Each target of a ``targets:`` list, by name (empty for a flow with one ``target:``)."""


SCHEDULE_GRACE = 300.0
"""Seconds a scheduled poll may take past its time before /readyz calls the flow stalled."""


def _ts(t: float | None) -> str | None:
    if t is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


class StatusBoard:
    """Every instance's and flow's status; the single place metrics are updated from."""

    def __init__(self) -> None:
        self.instances: dict[str, InstanceStatus] = {}
        self.flows: dict[str, FlowStatus] = {}
        self.started = time.time()
        self.observers: list[Any] = []
        """Objects with ``on_event(kind, **fields)``: the metrics exporter."""
        self.paused: str | None = None
        """Why intake is paused (low disk space), or None."""
        self.paused_since: float | None = None
        self.config_warnings: list[str] = []
        """Weak settings found in the config (replaced on reload)."""
        self.runtime_warnings: list[str] = []
        """Weak transport seen when connecting (an SSH server offering only SHA-1, say)."""

    # -- warnings ----------------------------------------------------------
    def warn(self, message: str, instance: str | None = None, *, from_config: bool = False) -> bool:
        """Record a weak-transport warning (and on the instance's entry); False when already known."""
        where = self.config_warnings if from_config else self.runtime_warnings
        new = message not in where
        if new:
            where.append(message)
        st = self.instances.get(instance) if instance is not None else None
        if st is not None and message not in st.warnings:
            st.warnings.append(message)
        return new

    @property
    def warnings(self) -> list[str]:
        """Every weak-transport warning: the config's, then those seen when connecting."""
        return self.config_warnings + [w for w in self.runtime_warnings if w not in self.config_warnings]

    # -- instances ---------------------------------------------------------
    def add_instance(self, name: str, type_: str, address: str) -> InstanceStatus:
        """Register an instance (keeps its history across a reload)."""
        st = self.instances.get(name)
        if st is None or st.type != type_:
            st = self.instances[name] = InstanceStatus(name, type_, address)
        st.address = address
        return st

    def instance_state(
        self,
        name: str,
        state: InstanceState,
        error: BaseException | str | None = None,
        *,
        permanent: bool = False,
        identity: str | None = None,
    ) -> None:
        """Record a connection state change (``up`` clears the last error); ``identity`` is the
        server's proof of who it is on this connection (a host key fingerprint)."""
        st = self.instances.get(name) or self.add_instance(name, "?", "")
        if identity is not None:
            st.identity = identity
        if st.state != state:
            st.since = time.time()
        st.state = state
        if error is not None:
            st.last_error = redact(str(error))
            st.permanent = permanent
        elif state == "up":
            st.permanent = False
        self._emit("instance_state", instance=name, state=state)

    def connect_attempt(self, name: str, ok: bool) -> None:
        """Count one connection attempt."""
        self._emit("connect_attempt", instance=name, outcome="ok" if ok else "error")

    # -- flows -------------------------------------------------------------
    def add_flow(self, name: str) -> FlowStatus:
        """Register a flow; a restarted flow starts a fresh record."""
        st = self.flows[name] = FlowStatus(name)
        return st

    def remove_flow(self, name: str) -> None:
        """Forget a flow that a reload removed."""
        self.flows.pop(name, None)

    def flow_error(self, name: str, error: BaseException | str) -> None:
        """Record a flow-level error (source or target trouble)."""
        st = self.flows.get(name)
        if st is not None:
            st.last_error = redact(str(error))
            st.last_error_at = time.time()

    def polled(self, name: str) -> None:
        """A file source completed a listing."""
        st = self.flows.get(name)
        if st is not None:
            st.last_poll = time.time()

    def expectation(self, name: str, doc: dict[str, Any], missed: bool) -> None:
        """A flow's expected arrivals were checked: ``doc`` for /status, ``missed`` for the metric."""
        st = self.flows.get(name)
        if st is not None:
            st.expectation = doc
        self._emit("expectation", flow=name, missed=missed)

    def intake_paused(self, reason: str | None) -> None:
        """Intake paused for ``reason`` (the free-space floor), or resumed (None)."""
        if (reason is None) != (self.paused is None):
            self.paused_since = None if reason is None else time.time()
        self.paused = reason

    def refused(self, name: str) -> None:
        """A file source refused a file for its name, size or kind (once per file)."""
        st = self.flows.get(name)
        if st is not None:
            st.refused += 1
        self._emit("refused", flow=name)

    def delivery_started(self, name: str, payload_id: str) -> None:
        """A payload entered delivery."""
        st = self.flows.get(name)
        if st is not None:
            st.in_flight += 1
            st.oldest_in_flight[payload_id] = time.time()
            # No event: the in-flight gauge is read from the board at each scrape (Metrics.refresh),
            # not set twice per payload.

    def delivery_ended(self, name: str, payload_id: str, outcome: str, size: int = 0, seconds: float = 0.0) -> None:
        """A payload left delivery: outcome is delivered | failed | skipped | released."""
        st = self.flows.get(name)
        if st is None:
            return
        st.in_flight = max(0, st.in_flight - 1)
        st.oldest_in_flight.pop(payload_id, None)
        if outcome == "delivered":
            st.delivered += 1
            st.bytes += size
            st.last_delivery = time.time()
        elif outcome == "failed":
            st.failed += 1
        elif outcome == "skipped":
            st.skipped += 1
        elif outcome == "no_target":
            st.no_target += 1
        self._emit("payload", flow=name, outcome=outcome, size=size, seconds=seconds)

    def add_target(self, flow: str, target: str) -> None:
        """Register a target of a flow's ``targets:`` list."""
        st = self.flows.get(flow)
        if st is not None:
            st.targets.setdefault(target, TargetStatus())

    def target_retried(self, flow: str, target: str) -> None:
        """A try of one target failed and is retried."""
        st = self.flows.get(flow)
        ts = st.targets.get(target) if st is not None else None
        if ts is not None:
            ts.retried += 1

    def target_ended(self, flow: str, target: str, delivered: bool, error: str | None = None) -> None:
        """One target of a ``targets:`` list has a payload (``delivered``) or gave up on it."""
        st = self.flows.get(flow)
        ts = st.targets.get(target) if st is not None else None
        if ts is not None:
            if delivered:
                ts.delivered += 1
                ts.last_delivery = time.time()
            else:
                ts.failed += 1
                ts.last_error = redact(error or "failed")
                ts.last_error_at = time.time()
        self._emit("target", flow=flow, target=target, outcome="delivered" if delivered else "failed")

    def _emit(self, kind: str, **fields: Any) -> None:
        for obs in self.observers:
            obs.on_event(kind, **fields)

    # -- views -------------------------------------------------------------
    def stalled_reasons(self, now: float | None = None) -> dict[str, str]:
        """Flows that are not progressing, with the reason (for /readyz)."""
        now = now or time.time()
        out: dict[str, str] = {}
        for f in self.flows.values():
            if f.state in ("stopped", "disabled"):
                continue
            if self.paused is not None:
                out[f.name] = self.paused  # the reason its polls or messages wait
                continue
            if f.poll_interval is not None:
                ref = f.last_poll or self.started
                if now - ref > 3 * f.poll_interval + 5:
                    out[f.name] = (
                        f"stalled: last completed poll {now - ref:.0f}s ago (poll_interval {f.poll_interval:g}s)"
                    )
                    continue
            if f.next_poll is not None and now - f.next_poll > SCHEDULE_GRACE:
                ref = f.last_poll or self.started
                if ref < f.next_poll:
                    out[f.name] = (
                        f"stalled: the poll due at {_ts(f.next_poll)} has not completed (schedule {f.schedule})"
                    )
                    continue
            if f.delivery_timeout and f.oldest_in_flight:
                oldest = min(f.oldest_in_flight.values())
                if now - oldest > f.delivery_timeout:
                    out[f.name] = (
                        f"stalled: a delivery has been in flight {now - oldest:.0f}s (timeout {f.delivery_timeout:g}s)"
                    )
                    continue
            if f.state not in ("running",):
                out[f.name] = f"{f.state}: {f.last_error or 'not running'}"
        return out

    def snapshot(self) -> dict[str, Any]:
        """The /status document."""
        return {
            "started": _ts(self.started),
            "warnings": self.warnings,
            "intake": {"paused": self.paused is not None, "reason": self.paused, "since": _ts(self.paused_since)},
            "instances": {
                n: {
                    "type": i.type,
                    "address": i.address,
                    "state": i.state,
                    "since": _ts(i.since),
                    "last_error": i.last_error,
                    "permanent_error": i.permanent,
                    "warnings": i.warnings,
                    "identity": i.identity,
                }
                for n, i in self.instances.items()
            },
            "flows": {
                n: {
                    **self._schedule_doc(f),
                    "state": f.state,
                    "delivered": f.delivered,
                    "failed": f.failed,
                    "skipped": f.skipped,
                    "retried": f.retried,
                    "refused": f.refused,
                    "bytes": f.bytes,
                    "in_flight": f.in_flight,
                    "last_delivery": _ts(f.last_delivery),
                    "last_poll": _ts(f.last_poll),
                    "retry_at": _ts(f.retry_at) if f.state == "backoff" else None,
                    "last_error": f.last_error,
                    "last_error_at": _ts(f.last_error_at),
                    "no_target": f.no_target,
                    "targets": {
                        t: {
                            "delivered": ts.delivered,
                            "failed": ts.failed,
                            "retried": ts.retried,
                            "last_delivery": _ts(ts.last_delivery),
                            "last_error": ts.last_error,
                            "last_error_at": _ts(ts.last_error_at),
                        }
                        for t, ts in f.targets.items()
                    },
                }
                for n, f in self.flows.items()
            },
        }

    @staticmethod
    def _schedule_doc(f: FlowStatus) -> dict[str, Any]:
        """The keys only flows with a schedule or an expectation have."""
        doc: dict[str, Any] = {}
        if f.schedule is not None:
            doc["schedule"] = f.schedule
            doc["next_poll"] = _ts(f.next_poll)
        if f.expectation is not None:
            doc["expectation"] = f.expectation
        return doc
