"""The daemon wires every built-in connector through typed seams: each live instance, source and
target has the protocols the core asks for by ``isinstance``, so a renamed method shows here
instead of as a silently slower or unprobed path. Building flows connects to nothing."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from conveyor.config import load_config
from conveyor.daemon import Daemon
from conveyor.flows.filesource import FileSource
from conveyor.flows.runner import FlowRunner
from conveyor.interfaces import (
    BrokerInstance,
    FileSystem,
    Forgets,
    Located,
    OpensInPlace,
    Probes,
    Resolves,
)
from conveyor.state import SharesClaims, open_store
from tests.harness import write_config

HOST = "127.0.0.1"
"""Nothing is contacted: every address below is port 1 on loopback, where nothing listens."""


def every_connector(tmp_path: Path) -> Path:
    """One flow per source connector, with targets of every kind."""
    fingerprint = "SHA256:" + base64.b64encode(bytes(32)).decode().rstrip("=")
    instances: dict[str, Any] = {
        "box": {"type": "local", "root": str(tmp_path / "box"), "create": True},
        "sf": {
            "type": "sftp",
            "host": HOST,
            "port": 1,
            "username": "u",
            "password": "p",
            "host_fingerprint": fingerprint,
        },
        "ft": {"type": "ftp", "host": HOST, "port": 1, "password": "p"},
        "mq": {"type": "rabbitmq", "host": HOST, "port": 1, "username": "u", "password": "p"},
        "ps": {"type": "pubsub", "project": "demo", "emulator_host": f"{HOST}:1"},
    }
    flows: dict[str, Any] = {
        "local": {
            "source": {"instance": "box", "path": "in"},
            "target": {"type": "directory", "path": str(tmp_path / "out")},
        },
        "sftp": {"source": {"instance": "sf", "path": "in"}, "target": {"instance": "ft", "path": "out"}},
        "ftp": {"source": {"instance": "ft", "path": "in"}, "target": {"type": "http", "url": f"http://{HOST}:1/"}},
        "rabbitmq": {"source": {"instance": "mq", "queue": "q"}, "target": {"instance": "mq", "routing_key": "q"}},
        "pubsub": {"source": {"instance": "ps", "subscription": "s"}, "target": {"instance": "ps", "topic": "t"}},
    }
    return write_config(tmp_path, instances, flows)


async def test_every_connector_has_the_capabilities_the_core_asks_for(tmp_path: Path) -> None:
    config = load_config(every_connector(tmp_path))
    daemon = Daemon(config)
    runners: dict[str, FlowRunner] = {}
    try:
        for name, flow in config.flows.items():
            runners[name] = daemon.build_flow(flow)
        live = daemon.instances
        assert isinstance(live["box"], FileSystem) and isinstance(live["box"], OpensInPlace)
        for remote in ("sf", "ft"):
            assert isinstance(live[remote], FileSystem) and isinstance(live[remote], Resolves)
            assert not isinstance(live[remote], OpensInPlace)
        for broker in ("mq", "ps"):
            assert isinstance(live[broker], BrokerInstance) and not isinstance(live[broker], FileSystem)

        for name, instance in (("local", "box"), ("sftp", "sf"), ("ftp", "ft")):
            source = runners[name].source
            assert isinstance(source, FileSource) and isinstance(source, Forgets)
            assert source.fs is live[instance]
            assert source.submit == runners[name].submit  # the runner that runs it grants its slots
        for name in ("rabbitmq", "pubsub"):
            assert not isinstance(runners[name].source, Forgets)
            assert isinstance(runners[name].message_source, Probes)

        targets = {name: runner.deliverer.target for name, runner in runners.items()}
        for name in ("local", "ftp"):  # directory, http
            assert isinstance(targets[name], Probes) and isinstance(targets[name], Located)
        for name in ("rabbitmq", "pubsub"):
            assert isinstance(targets[name], Probes)
        assert not isinstance(targets["sftp"], Probes)  # an upload folder is checked through its FileSystem
    finally:
        for runner in runners.values():
            await runner.close()
        for rt in daemon.instances.values():
            await rt.close()


def test_only_a_store_replicas_share_claims_from_says_so(tmp_path: Path) -> None:
    """File sources shuffle their listings on a shared store, so replicas' claims rarely collide."""
    alone = open_store(str(tmp_path / "state.db"), "replica-a")
    assert not (isinstance(alone, SharesClaims) and alone.shared)
    shared = open_store(f"postgresql://u@{HOST}:1/conveyor", "replica-a")
    assert isinstance(shared, SharesClaims) and shared.shared
