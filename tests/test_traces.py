"""Traces: the daemon's spans reach an OTLP/HTTP receiver run by the test, one trace per payload,
and a message's W3C ``traceparent`` is carried from RabbitMQ to the HTTP target."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from conveyor.config import load_config
from conveyor.errors import ConfigError
from conveyor.libraries import missing_libraries
from tests.backends.pubsub import PubsubBackend, pubsub_backend, pubsub_emulator
from tests.harness import bodies, running
from tests.harness import write_config as harness_config
from tests.servers.ops import daemon_in_process, http_sink, local_flow, serve, status, wait_for, write_config
from tests.servers.rabbitmq import Vhost, declare, publish, rabbit_vhost_fixture  # noqa: F401 (fixture)

__all__ = ["pubsub_backend", "pubsub_emulator"]

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Spans:
    """What an OTLP/HTTP receiver was sent: each span as a dict."""

    spans: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        assert request.content_type == "application/x-protobuf"
        sent = ExportTraceServiceRequest.FromString(await request.read())
        for rs in sent.resource_spans:
            service = {a.key: a.value.string_value for a in rs.resource.attributes}.get("service.name")
            for ss in rs.scope_spans:
                for s in ss.spans:
                    attrs = {a.key: _value(a.value) for a in s.attributes}
                    self.spans.append(
                        {
                            "trace": s.trace_id.hex(),
                            "id": s.span_id.hex(),
                            "parent": s.parent_span_id.hex(),
                            "name": s.name,
                            "attrs": attrs,
                            "service": service,
                            "error": s.status.code == 2,
                            "message": s.status.message,
                        }
                    )
        return web.Response(status=200, content_type="application/x-protobuf", body=b"")

    def named(self, name: str, **attrs: Any) -> list[dict[str, Any]]:
        """The spans of that name whose attributes include ``attrs``."""
        return [s for s in self.spans if s["name"] == name and all(s["attrs"].get(k) == v for k, v in attrs.items())]


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


@contextlib.asynccontextmanager
async def receiver() -> AsyncIterator[Spans]:
    """An OTLP/HTTP trace receiver on a loopback port."""
    spans = Spans()
    app = web.Application()
    app.router.add_post("/v1/traces", spans.handle)
    async with serve(app, "127.0.0.1") as port:
        spans.url = f"http://127.0.0.1:{port}"
        yield spans


def traces_section(url: str) -> dict[str, Any]:
    return {"endpoint": url, "service_name": "conveyor-test", "interval": "100ms", "headers": {"X-Key": "s3cret"}}


async def test_a_file_flow_makes_one_trace_per_file(tmp_path: Path) -> None:
    async with receiver() as otlp:
        inst, flow = local_flow(tmp_path / "box", {"type": "directory", "path": str(tmp_path / "out")})
        config = write_config(
            tmp_path / "c.yaml",
            {"traces": traces_section(otlp.url), "instances": {"box": inst}, "flows": {"files": flow}},
        )
        (tmp_path / "box" / "in" / "a.csv").write_bytes(b"a" * 10)
        (tmp_path / "box" / "in" / "b.csv").write_bytes(b"b" * 20)
        async with daemon_in_process(config):
            await wait_for(lambda: len(bodies(tmp_path / "out")) == 2, 20)
            await wait_for(lambda: len(otlp.named("payload")) == 2, 20)
        traces = set()
        for name, size in (("a.csv", 10), ("b.csv", 20)):
            [root] = otlp.named("payload", **{"payload.name": name})
            assert root["attrs"]["flow"] == "files" and root["attrs"]["payload.size"] == size
            assert root["attrs"]["outcome"] == "delivered" and root["parent"] == "" and not root["error"]
            assert root["service"] == "conveyor-test"
            children = [s for s in otlp.spans if s["parent"] == root["id"]]
            assert sorted(s["name"] for s in children) == ["deliver", "fetch"]
            assert all(s["trace"] == root["trace"] for s in children)
            [deliver] = [s for s in children if s["name"] == "deliver"]
            assert (
                deliver["attrs"]["outcome"] == "delivered"
                and deliver["attrs"]["payload.id"] == root["attrs"]["payload.id"]
            )
            traces.add(root["trace"])
        assert len(traces) == 2


async def test_steps_and_fan_out_legs_have_spans(tmp_path: Path) -> None:
    import gzip

    async with receiver() as otlp, http_sink() as sink:
        inst, flow = local_flow(tmp_path / "box", {})
        del flow["target"]
        flow["steps"] = [{"decompress": "gzip"}]
        flow["targets"] = [
            {"name": "disk", "type": "directory", "path": str(tmp_path / "out")},
            {"name": "hook", "type": "http", "url": sink.url},
        ]
        config = write_config(
            tmp_path / "c.yaml",
            {"traces": traces_section(otlp.url), "instances": {"box": inst}, "flows": {"files": flow}},
        )
        (tmp_path / "box" / "in" / "x.csv.gz").write_bytes(gzip.compress(b"x,y\n1,2\n"))
        async with daemon_in_process(config):
            await wait_for(lambda: otlp.named("payload"), 20)
        [root] = otlp.named("payload")
        assert root["attrs"]["outcome"] == "delivered"
        legs = [s for s in otlp.named("deliver") if s["parent"] == root["id"]]
        assert sorted(s["attrs"]["target"] for s in legs) == ["disk", "hook"]
        steps = otlp.named("step decompress")
        assert {s["parent"] for s in steps} == {s["id"] for s in legs}
        assert all(s["attrs"]["step"] == "steps[0]" for s in steps)
        # the HTTP leg's request carries its own span's traceparent
        [hook] = [s for s in legs if s["attrs"]["target"] == "hook"]
        [step] = [s for s in steps if s["parent"] == hook["id"]]
        version, trace, span, flags = sink.received[0].headers["traceparent"].split("-")
        assert (version, trace, span) == ("00", root["trace"], step["id"]) and int(flags, 16) & 1  # sampled


async def test_a_message_keeps_its_trace_from_rabbitmq_to_http(rabbit_vhost: Vhost, tmp_path: Path) -> None:
    v = rabbit_vhost
    q = v.q("traced")
    await declare(v, q)
    trace, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    async with receiver() as otlp, http_sink() as sink:
        config = write_config(
            tmp_path / "c.yaml",
            {
                "health": {"listen": "127.0.0.1:0"},
                "traces": traces_section(otlp.url),
                "instances": {"mq": v.instance_config()},
                "flows": {"m": {"source": {"instance": "mq", "queue": q}, "target": {"type": "http", "url": sink.url}}},
            },
        )
        async with daemon_in_process(config):
            await publish(
                v,
                q,
                [b'{"order": 1}'],
                message_id="order-1",
                headers={"traceparent": f"00-{trace}-{parent}-01", "tracestate": "vendor=abc"},
            )
            await wait_for(lambda: sink.received, 20)
            await wait_for(lambda: otlp.named("payload"), 20)
    sent = sink.received[0].headers["traceparent"]
    version, sent_trace, sent_span, flags = sent.split("-")
    assert (version, sent_trace) == ("00", trace) and int(flags, 16) & 1
    assert sink.received[0].headers["tracestate"] == "vendor=abc"
    [root] = otlp.named("payload", **{"payload.id": "order-1"})
    assert root["trace"] == trace and root["parent"] == parent
    assert root["attrs"]["outcome"] == "delivered"
    [deliver] = otlp.named("deliver")
    assert deliver["trace"] == trace and deliver["parent"] == root["id"] and deliver["id"] == sent_span
    [fetch] = otlp.named("fetch")
    assert fetch["trace"] == trace and fetch["parent"] == root["id"]


def test_tracing_off_imports_no_opentelemetry(tmp_path: Path) -> None:
    inst, flow = local_flow(tmp_path / "box", {"type": "directory", "path": str(tmp_path / "out")})
    config = write_config(tmp_path / "c.yaml", {"instances": {"box": inst}, "flows": {"files": flow}})
    (tmp_path / "box" / "in" / "a.csv").write_bytes(b"a")
    code = (
        "import asyncio, sys; from conveyor.config import load_config; from conveyor.daemon import Daemon; "
        f"rc = asyncio.run(Daemon(load_config({str(config)!r}), once=0.1).run()); "
        "print(rc, sorted(m for m in sys.modules if m.startswith('opentelemetry')))"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "0 []"
    assert list(bodies(tmp_path / "out").values()) == [b"a"]


def test_traces_without_the_extra_is_a_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write_config(tmp_path / "c.yaml", {"traces": {"endpoint": "http://127.0.0.1:4318"}})
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)
    [problem] = missing_libraries(load_config(config))
    assert problem.path == "traces"
    assert "pip install 'conveyor[traces]'" in problem.message


def test_run_without_the_extra_stops_with_one_line(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.yaml", {"traces": {"endpoint": "http://127.0.0.1:4318"}})
    code = (
        "import sys; sys.modules['opentelemetry.exporter.otlp.proto.http.trace_exporter'] = None; "
        f"from conveyor.cli import main; sys.exit(main(['run', '-c', {str(config)!r}]))"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "traces" in r.stderr and "pip install 'conveyor[traces]'" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ({"endpoint": "collector:4318"}, "traces.endpoint"),
        ({"endpoint": "http://c:4318", "sample_ratio": 2}, "traces.sample_ratio"),
        ({"endpoint": "http://c:4318", "colour": "red"}, "traces.colour"),
        ({"service_name": "x"}, "traces.endpoint"),
    ],
)
def test_bad_traces_settings_name_their_key(tmp_path: Path, section: dict[str, Any], key: str) -> None:
    config = write_config(tmp_path / "c.yaml", {"traces": section})
    with pytest.raises(ConfigError) as e:
        load_config(config)
    assert key in str(e.value)


def test_collector_headers_are_secrets(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "c.yaml", {"traces": {"endpoint": "http://c:4318", "headers": {"Authorization": "Bearer t0k"}}}
    )
    loaded = load_config(config)
    assert "Bearer t0k" in loaded.secrets()
    assert "t0k" not in repr(loaded.traces)


async def test_a_message_keeps_its_trace_from_pubsub_to_pubsub(pubsub_backend: PubsubBackend, tmp_path: Path) -> None:
    emu = pubsub_backend.emu
    out_topic, out_sub = f"{pubsub_backend.topic}-out", f"{pubsub_backend.topic}-out-sub"
    emu.create(out_topic, out_sub)
    trace, parent = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    async with receiver() as otlp:
        cfg = harness_config(
            tmp_path,
            {"gcp": pubsub_backend.instance_config()},
            {
                "r": {
                    "source": {"instance": "gcp", **pubsub_backend.source_config()},
                    "target": {"instance": "gcp", "topic": out_topic},
                }
            },
            traces=traces_section(otlp.url),
        )
        got: dict[bytes, Any] = {}
        async with running(cfg):
            publisher = pubsub_backend._publisher
            await asyncio.to_thread(
                lambda: publisher.publish(
                    pubsub_backend.topic_path, b"relayed", traceparent=f"00-{trace}-{parent}-01"
                ).result(timeout=60)
            )

            async def relayed() -> bool:
                await asyncio.to_thread(emu.pull_into, out_sub, got)
                return bool(got)

            await wait_for(relayed, 60)
            await wait_for(lambda: otlp.named("deliver"), 20)
    sent = got[b"relayed"].attributes["traceparent"]
    [deliver] = otlp.named("deliver")
    [root] = otlp.named("payload")
    assert sent.split("-")[1:3] == [trace, deliver["id"]]
    assert root["trace"] == trace and root["parent"] == parent and deliver["parent"] == root["id"]


async def test_a_refused_delivery_is_an_error_span_without_secrets(tmp_path: Path) -> None:
    secret = "s3cr3t-t0ken-value"
    async with receiver() as otlp, http_sink(default=status(422, f"bad credentials: Bearer {secret}")) as sink:
        inst, flow = local_flow(
            tmp_path / "box",
            {"type": "http", "url": sink.url, "headers": {"Authorization": f"Bearer {secret}"}},
            after="keep",
        )
        config = write_config(
            tmp_path / "c.yaml",
            {"traces": traces_section(otlp.url), "instances": {"box": inst}, "flows": {"files": flow}},
        )
        (tmp_path / "box" / "in" / "a.csv").write_bytes(b"a")
        async with daemon_in_process(config):
            await wait_for(lambda: otlp.named("payload"), 20)
    [root] = otlp.named("payload")
    [deliver] = otlp.named("deliver")
    assert root["attrs"]["outcome"] == "failed" and root["error"]
    assert deliver["attrs"]["outcome"] == "failed" and deliver["error"] and deliver["parent"] == root["id"]
    assert "422" in deliver["message"] and secret not in deliver["message"]
