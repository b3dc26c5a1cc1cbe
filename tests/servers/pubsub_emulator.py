"""The Google Pub/Sub emulator as a test fixture: started on a free loopback port, restartable, killed after.

The emulator jar (0.8.20) has a stream-end fault: its bundled grpc-core calls
``io.grpc.InternalStatus.asRuntimeException(Status, Metadata, boolean)``, which the jar's own
``InternalStatus`` lacks, so a closed streaming pull is never noticed and its messages stay leased
to the dead stream for minutes. ``tests/pubsub_shim/io/grpc/InternalStatus.java`` supplies the
method; it is compiled against the jar once (cached under /tmp, keyed by the jar's mtime and the
shim's content) and put ahead of the jar on the classpath.

The emulator keeps everything in memory: after :meth:`PubsubEmulator.restart` topics and
subscriptions are gone and a test must create them again.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.servers.ops import free_port

SHIM_SRC = Path(__file__).resolve().parent.parent / "pubsub_shim" / "io" / "grpc" / "InternalStatus.java"
JAR_GLOBS = [
    "/usr/lib/google-cloud-sdk/platform/pubsub-emulator/lib/cloud-pubsub-emulator-*.jar",
    "/usr/share/google-cloud-sdk/platform/pubsub-emulator/lib/cloud-pubsub-emulator-*.jar",
    "/opt/google-cloud-sdk/platform/pubsub-emulator/lib/cloud-pubsub-emulator-*.jar",
]
MAIN_CLASS = "com.google.cloud.pubsub.testing.v1.Main"
PROJECT = "conveyor-test"


def find_jar() -> Path | None:
    """The emulator jar: $PUBSUB_EMULATOR_JAR, else the gcloud SDK's (apt package google-cloud-cli-pubsub-emulator)."""
    env = os.environ.get("PUBSUB_EMULATOR_JAR")
    if env:
        return Path(env)
    roots = list(JAR_GLOBS)
    gcloud = shutil.which("gcloud")
    if gcloud:
        sdk = Path(os.path.realpath(gcloud)).parent.parent
        roots.append(str(sdk / "platform/pubsub-emulator/lib/cloud-pubsub-emulator-*.jar"))
    for pattern in roots:
        hits = sorted(glob.glob(pattern))
        if hits:
            return Path(hits[-1])
    return None


def compile_shim(jar: Path) -> Path:
    """Compile the InternalStatus shim against ``jar`` once; returns the class directory."""
    src = SHIM_SRC.read_bytes()
    key = hashlib.sha256(src + str(jar.stat().st_mtime_ns).encode() + str(jar).encode()).hexdigest()[:16]
    out = Path(tempfile.gettempdir()) / f"conveyor-pubsub-shim-{key}"
    if (out / "io" / "grpc" / "InternalStatus.class").exists():
        return out
    tmp = Path(tempfile.mkdtemp(prefix="conveyor-pubsub-shim-build-"))
    subprocess.run(
        ["javac", "-nowarn", "-cp", str(jar), "-d", str(tmp), str(SHIM_SRC)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    try:
        tmp.rename(out)  # atomic: a parallel run either wins or finds ours
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


class PubsubEmulator:
    """One emulator process on 127.0.0.1; :meth:`restart` keeps its port."""

    def __init__(self, workdir: Path, project: str = PROJECT) -> None:
        jar = find_jar()
        if jar is None or shutil.which("java") is None or shutil.which("javac") is None:
            why = (
                "Pub/Sub emulator not usable: needs the jar of apt package google-cloud-cli-pubsub-emulator "
                "(or PUBSUB_EMULATOR_JAR) and java + javac (apt: openjdk-17-jdk-headless)"
            )
            if os.environ.get("CI"):
                pytest.fail(why)  # CI must not pass by skipping the Pub/Sub tests
            pytest.skip(why)
        self.jar = jar
        self.shim = compile_shim(jar)
        self.workdir = workdir
        self.project = project
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "pubsub-emulator.log"

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT`` as PUBSUB_EMULATOR_HOST / emulator_host want it."""
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> None:
        """Start the JVM and wait until the port answers."""
        cmd = [
            "java",
            "-Xms64m",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            "-cp",
            f"{self.shim}{os.pathsep}{self.jar}",
            MAIN_CLASS,
            "--host=127.0.0.1",
            f"--port={self.port}",
        ]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"emulator exited with {self.proc.returncode}; see {self.log}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"emulator did not answer on {self.host} within {timeout:.0f}s; see {self.log}")

    def stop(self) -> None:
        """Kill the emulator (SIGKILL: it holds nothing worth a clean stop) and wait for it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self.proc = None

    def restart(self) -> None:
        """Kill and start again on the same port: every topic, subscription and message is gone."""
        self.stop()
        self.start()

    # -- plain google-cloud clients pointed at this emulator (the side door for tests) ------------
    def publisher(self, **kw: Any) -> Any:
        """A plain ``PublisherClient`` on this emulator."""
        import grpc  # type: ignore[import-untyped]
        from google.cloud import pubsub_v1
        from google.pubsub_v1.services.publisher.transports.grpc import PublisherGrpcTransport

        channel = grpc.insecure_channel(self.host)
        return pubsub_v1.PublisherClient(transport=PublisherGrpcTransport(channel=channel), **kw)

    def subscriber(self) -> Any:
        """A plain ``SubscriberClient`` on this emulator (it reads messages up to Pub/Sub's limit)."""
        import grpc
        from google.cloud import pubsub_v1
        from google.pubsub_v1.services.subscriber.transports.grpc import SubscriberGrpcTransport

        channel = grpc.insecure_channel(self.host, options=[("grpc.max_receive_message_length", -1)])
        return pubsub_v1.SubscriberClient(transport=SubscriberGrpcTransport(channel=channel))

    def create(self, topic: str, subscription: str | None = None, **sub_fields: Any) -> None:
        """Create a topic, and a subscription on it when named (extra fields: ``ack_deadline_seconds``...)."""
        pub = self.publisher()
        topic_path = pub.topic_path(self.project, topic)
        try:
            pub.create_topic(name=topic_path)
        finally:
            pub.transport.close()
        if subscription is not None:
            with self.subscriber() as sub:
                name = sub.subscription_path(self.project, subscription)
                sub.create_subscription(request={"name": name, "topic": topic_path, **sub_fields})

    def pull_into(self, subscription: str, got: dict[bytes, Any]) -> None:
        """One plain pull: ack what came and file each message under its body in ``got``."""
        with self.subscriber() as client:
            path = client.subscription_path(self.project, subscription)
            resp = client.pull(request={"subscription": path, "max_messages": 100}, timeout=5)
            if resp.received_messages:
                client.acknowledge(
                    request={"subscription": path, "ack_ids": [m.ack_id for m in resp.received_messages]}
                )
            for m in resp.received_messages:
                got[m.message.data] = m.message


@pytest.fixture(scope="session")
def pubsub_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PubsubEmulator]:
    """One emulator for the whole session (a JVM start costs seconds); tests use unique topic names."""
    emu = PubsubEmulator(tmp_path_factory.mktemp("pubsub"))
    try:
        emu.start()
        yield emu
    finally:
        emu.stop()
