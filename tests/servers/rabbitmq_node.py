"""A private RabbitMQ node for tests that restart the broker (the machine's own on 5672 is shared).

Debian's ``rabbitmq-server`` run directly (``/usr/lib/rabbitmq/bin``, not the wrapper in
/usr/sbin that switches to the rabbitmq user and reads /etc/rabbitmq), as root, with everything
in a temporary folder: node name ``conveyor-test-<port>@localhost``, its own AMQP and
distribution ports, data (mnesia), logs, config file, an empty plugin list (no management) and
its own Erlang cookie (``HOME`` is the folder). It registers with the machine's epmd like any
other node. A restart stops the node (SIGTERM: RabbitMQ's orderly shutdown; or SIGKILL of the
Erlang VM) and starts it again on the same ports with the same data folder, so durable queues
and persistent messages come back.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.servers.ops import free_port
from tests.servers.rabbitmq import HOST, PASSWORD, USER, Vhost

BIN = Path("/usr/lib/rabbitmq/bin")


@dataclass
class RabbitNode:
    """One private broker node; ``start()`` / ``stop(kill=...)`` may be called again and again."""

    base: Path
    port: int
    dist_port: int
    proc: subprocess.Popen[bytes] | None = None
    starts: list[float] = field(default_factory=list)
    """Seconds each start took until the node accepted AMQP connections and finished booting."""

    @property
    def nodename(self) -> str:
        """The Erlang node name (for ``rabbitmqctl -n``)."""
        return f"conveyor-test-{self.port}@localhost"

    def env(self) -> dict[str, str]:
        """The environment the server and its CLI tools need to find this node (and only it)."""
        b = self.base
        return {
            **os.environ,
            "HOME": str(b),
            "RABBITMQ_CONF_ENV_FILE": str(b / "rabbitmq-env.conf"),
            "RABBITMQ_NODENAME": self.nodename,
            "RABBITMQ_NODE_IP_ADDRESS": HOST,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(b / "mnesia"),
            "RABBITMQ_LOG_BASE": str(b / "log"),
            "RABBITMQ_CONFIG_FILE": str(b / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(b / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(b / "beam.pid"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }

    def up(self) -> bool:
        """Whether the AMQP port accepts connections."""
        try:
            with socket.create_connection((HOST, self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def start(self, wait: float = 90.0) -> float:
        """Start the node and wait until it has booted; returns how long that took."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        t0 = time.monotonic()
        log = open(self.base / "server.out", "ab")  # noqa: SIM115 (kept open for the life of the node)
        self.proc = subprocess.Popen(
            [str(BIN / "rabbitmq-server")],
            env=self.env(),
            cwd=self.base,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = t0 + wait
        while not self.up():
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"rabbitmq-server exited with {self.proc.returncode}: "
                    f"{(self.base / 'server.out').read_text(errors='replace')[-3000:]}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"rabbitmq node {self.nodename} did not listen on {self.port} within {wait:.0f}s")
            time.sleep(0.1)
        r = self.ctl("await_startup", "--timeout", str(int(wait)))
        if r.returncode != 0:
            raise RuntimeError(f"rabbitmqctl await_startup failed: {r.stdout}{r.stderr}")
        took = time.monotonic() - t0
        self.starts.append(took)
        return took

    def beam_pid(self) -> int:
        """The Erlang VM's process id (the server script's child)."""
        return int((self.base / "beam.pid").read_text().strip())

    def stop(self, *, kill: bool = False, wait: float = 60.0) -> None:
        """SIGTERM (orderly shutdown) or SIGKILL the Erlang VM, and wait until the node is gone."""
        assert self.proc is not None
        os.kill(self.beam_pid(), signal.SIGKILL if kill else signal.SIGTERM)
        self.proc.wait(wait)
        deadline = time.monotonic() + 10
        while self.up() and time.monotonic() < deadline:
            time.sleep(0.05)

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``rabbitmqctl -n NODE ARGS`` against this node."""
        return subprocess.run(
            [str(BIN / "rabbitmqctl"), "-q", "-n", self.nodename, *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def queue(self, name: str) -> tuple[int, int]:
        """(ready, unacknowledged) messages of one queue."""
        out = self.ctl("list_queues", "--no-table-headers", "name", "messages_ready", "messages_unacknowledged")
        for line in out.stdout.splitlines():
            parts = line.split("\t")
            if len(parts) == 3 and parts[0] == name:
                return int(parts[1]), int(parts[2])
        raise AssertionError(
            f"queue {name} not found on {self.nodename}: {out.stdout}{out.stderr}\n"
            f"the node's log ends:\n{self.log_tail()}"
        )

    def log_tail(self, chars: int = 4000) -> str:
        """The end of the node's own log (it goes with the folder when the fixture ends)."""
        logs = sorted((self.base / "log").glob("*.log"), key=lambda p: p.stat().st_mtime)
        return logs[-1].read_text(errors="replace")[-chars:] if logs else "(no log)"

    def vhost(self) -> NodeVhost:
        """The node's default vhost, usable with tests/servers/rabbitmq.py's declare/publish/drain."""
        return NodeVhost("/", owned=False, prefix="", port=self.port)


@dataclass
class NodeVhost(Vhost):
    """A vhost on a private node (its own port) for the helpers of tests/servers/rabbitmq.py."""

    port: int = 0

    @property
    def url(self) -> str:
        """An amqp:// URL for plain aio-pika clients."""
        return f"amqp://{USER}:{PASSWORD}@{HOST}:{self.port}/%2F"

    def instance_config(self, **over: Any) -> dict[str, Any]:
        """The ``instances.<name>`` mapping for conveyor."""
        return super().instance_config(**{"port": self.port, **over})


def start_node() -> RabbitNode:
    """A fresh node in a new temporary folder, started."""
    if not (BIN / "rabbitmq-server").exists():
        pytest.fail(f"{BIN / 'rabbitmq-server'} missing: apt-get install -y rabbitmq-server")
    base = Path(tempfile.mkdtemp(prefix="conveyor-rabbit-"))
    port, dist = free_port(), free_port()
    (base / "rabbitmq-env.conf").write_text("")  # not /etc/rabbitmq/rabbitmq-env.conf (the shared node's)
    (base / "rabbitmq.conf").write_text(f"listeners.tcp.local = {HOST}:{port}\nloopback_users = none\n")
    (base / "enabled_plugins").write_text("[].\n")
    node = RabbitNode(base, port, dist)
    node.start()
    return node


@pytest.fixture(scope="module")
def rabbit_node() -> Iterator[RabbitNode]:
    """A private RabbitMQ node for one test module, removed (killed, data deleted) afterwards."""
    node = start_node()
    try:
        yield node
    finally:
        if node.proc is not None and node.proc.poll() is None:
            node.stop(kill=True)
        shutil.rmtree(node.base, ignore_errors=True)
