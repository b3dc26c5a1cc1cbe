"""``conveyor check --connect`` checks what every flow uses, as a user runs it, against real servers.

Each case is a config whose flows would fail on their first try (a missing queue, folder,
subscription or topic, a target folder that cannot be written, an endpoint that does not answer):
the check must say so, naming the flow, the instance and the queue/path/topic, and exit 2, while
changing nothing on any server. The all-good config exits 0 with one ok line per flow.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from aiohttp import web

from tests.backends.sftp import SftpBackend
from tests.harness import write_config
from tests.servers.ops import free_port, http_sink, status
from tests.servers.pubsub_emulator import PubsubEmulator
from tests.servers.rabbitmq import Vhost, declare

CONVEYOR = str(Path(sys.executable).parent / "conveyor")


async def check(cfg: Path) -> tuple[int, list[str]]:
    """Run ``conveyor check --connect -c cfg`` as a user would; the exit code and the output lines."""
    proc = await asyncio.create_subprocess_exec(
        CONVEYOR, "check", "--connect", "-c", str(cfg), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    text = out.decode()
    assert "Traceback" not in text, text
    return int(proc.returncode or 0), text.splitlines()


def flow_line(lines: list[str], flow: str) -> str:
    """The one output line of a flow."""
    found = [line for line in lines if line.split(":", 1)[0].split()[-2:] == ["flow", flow]]
    assert len(found) == 1, "\n".join(lines)
    return found[0]


def local(root: Path) -> dict[str, Any]:
    return {"type": "local", "root": str(root)}


async def queue_exists(v: Vhost, name: str) -> bool:
    async with await aio_pika.connect(v.url) as conn:
        ch = await conn.channel()
        try:
            await ch.declare_queue(name, passive=True)
            return True
        except aio_pika.exceptions.ChannelNotFoundEntity:
            return False


async def test_missing_rabbitmq_queue_fails_unless_declare_creates_it(rabbit_vhost: Vhost, tmp_path: Path) -> None:
    v = rabbit_vhost
    q, present = v.q("cc-missing"), v.q("cc-present")
    await declare(v, present)
    out = tmp_path / "out"
    flows: dict[str, Any] = {
        "orders": {"source": {"instance": "mq", "queue": q}, "target": {"type": "directory", "path": str(out)}}
    }
    rc, lines = await check(write_config(tmp_path, {"mq": v.instance_config()}, flows))
    assert rc == 2, lines
    line = flow_line(lines, "orders")
    assert line.startswith("  FAIL  flow orders:") and f"source mq queue '{q}': no such queue" in line
    assert "add `declare:`" in line
    assert not await queue_exists(v, q)

    flows["orders"]["source"]["declare"] = {"type": "quorum"}
    # a relay to an exchange that does not exist fails; to a queue that exists through the default one passes
    flows["relay"] = {
        "source": {"instance": "mq", "queue": present},
        "target": {"instance": "mq", "exchange": v.q("cc-no-exchange")},
    }
    flows["relay-ok"] = {
        "source": {"instance": "mq", "queue": present},
        "target": {"instance": "mq", "routing_key": present},
    }
    rc, lines = await check(write_config(tmp_path, {"mq": v.instance_config()}, flows))
    assert rc == 2, lines
    assert flow_line(lines, "orders").startswith("  ok    flow orders:")
    assert "does not exist; declared at start (quorum, durable)" in flow_line(lines, "orders")
    relay = flow_line(lines, "relay")
    assert relay.startswith("  FAIL") and f"target mq exchange '{v.q('cc-no-exchange')}': no such exchange" in relay
    assert flow_line(lines, "relay-ok").startswith("  ok    flow relay-ok:")
    assert not await queue_exists(v, q)  # the check declared nothing
    assert not out.exists()  # nor made the target folder


@pytest.mark.parametrize("backend", ["sftp_openssh_backend", "ftp_pyftpdlib_backend"])
async def test_missing_remote_folder_fails(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    b = request.getfixturevalue(backend)
    root = b.instance_config()["root"].rstrip("/")
    flows = {
        "pull": {
            "source": {"instance": "partner", "path": "outbound"},
            "target": {"type": "directory", "path": str(tmp_path / "in")},
        },
        "push": {
            "source": {"instance": "disk", "path": ""},
            "target": {"instance": "partner", "path": "inbound/today"},
        },
    }
    (tmp_path / "drop").mkdir()
    cfg = write_config(tmp_path, {"partner": b.instance_config(), "disk": local(tmp_path / "drop")}, flows)
    rc, lines = await check(cfg)
    assert rc == 2, lines
    pull = flow_line(lines, "pull")
    assert pull.startswith("  FAIL  flow pull:")
    assert f"source partner {root}/outbound: no such folder or file" in pull
    push = flow_line(lines, "push")
    assert (
        push.startswith("  ok")
        and f"target partner {root}/inbound/today: folder does not exist; created under the instance root" in push
    )

    b.put("outbound/a.csv", b"a")
    b.put("outbound/b.txt", b"b")
    b.put("inbound/today/old.csv", b"old")
    flows["pull"]["source"]["pattern"] = "*.csv"
    rc, lines = await check(
        write_config(tmp_path, {"partner": b.instance_config(), "disk": local(tmp_path / "drop")}, flows)
    )
    assert rc == 0, lines
    assert "folder exists, listed: 2 files, 1 matching" in flow_line(lines, "pull")
    assert f"target partner {root}/inbound/today: folder exists" in flow_line(lines, "push")

    flows["pull"]["source"]["path"] = "outbound/a.csv"  # one exact file
    flows["push"]["target"]["path"] = "inbound/today/old.csv/sub"
    rc, lines = await check(
        write_config(tmp_path, {"partner": b.instance_config(), "disk": local(tmp_path / "drop")}, flows)
    )
    assert rc == 2, lines
    assert "file is there (1 bytes)" in flow_line(lines, "pull")
    assert "'inbound/today/old.csv' is a file, not a folder" in flow_line(lines, "push")

    if backend.startswith("sftp"):  # sshd serves as a regular user: a folder it may enter but not list
        b.mkdir("locked", 0o311)
        flows["pull"]["source"]["path"] = "locked"
        rc, lines = await check(
            write_config(tmp_path, {"partner": b.instance_config(), "disk": local(tmp_path / "drop")}, flows)
        )
        assert rc == 2, lines
        assert f"source partner {root}/locked: permission denied" in flow_line(lines, "pull")


async def test_missing_pubsub_subscription_or_topic_fails(pubsub_emulator: PubsubEmulator, tmp_path: Path) -> None:
    emu = pubsub_emulator
    emu.create("cc-topic", "cc-sub")
    inst = {"ps": {"type": "pubsub", "project": emu.project, "emulator_host": emu.host}}
    out = str(tmp_path / "out")
    flows: dict[str, Any] = {
        "events": {
            "source": {"instance": "ps", "subscription": "cc-no-sub"},
            "target": {"type": "directory", "path": out},
        },
        "made": {
            "source": {
                "instance": "ps",
                "subscription": "cc-made-sub",
                "create_subscription": {"topic": "cc-made-topic"},
            },
            "target": {"type": "directory", "path": out},
        },
        "fanout": {
            "source": {"instance": "ps", "subscription": "cc-sub"},
            "target": {"instance": "ps", "topic": "cc-no-topic"},
        },
    }
    rc, lines = await check(write_config(tmp_path, inst, flows))
    assert rc == 2, lines
    events = flow_line(lines, "events")
    assert (
        events.startswith("  FAIL")
        and f"source ps subscription projects/{emu.project}/subscriptions/cc-no-sub: no such subscription" in events
    )
    made = flow_line(lines, "made")
    assert made.startswith("  ok") and "does not exist; created at start on topic" in made
    fanout = flow_line(lines, "fanout")
    assert fanout.startswith("  FAIL") and f"exists, on topic projects/{emu.project}/topics/cc-topic" in fanout
    assert f"target ps topic projects/{emu.project}/topics/cc-no-topic: no such topic" in fanout

    with emu.subscriber() as sub:  # the check created nothing
        names = [s.name for s in sub.list_subscriptions(request={"project": f"projects/{emu.project}"})]
    assert not any(n.endswith(("/cc-made-sub", "/cc-no-sub")) for n in names)


async def test_unwritable_directory_target_fails(tmp_path: Path) -> None:
    (tmp_path / "drop").mkdir()
    (tmp_path / "a-file").write_bytes(b"")
    readonly = tmp_path / "ro"
    readonly.mkdir()
    flows = {
        "under-file": {
            "source": {"instance": "disk"},
            "target": {"type": "directory", "path": str(tmp_path / "a-file" / "out")},
        },
        "read-only": {"source": {"instance": "disk"}, "target": {"type": "directory", "path": str(readonly / "out")}},
        "fine": {"source": {"instance": "disk"}, "target": {"type": "directory", "path": str(tmp_path / "new")}},
    }
    cfg = write_config(tmp_path, {"disk": local(tmp_path / "drop")}, flows)
    mounted = await asyncio.to_thread(
        subprocess.run,
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(readonly)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert mounted.returncode == 0, f"this test mounts a read-only tmpfs (run as root): {mounted.stderr.strip()}"
    try:
        rc, lines = await check(cfg)
    finally:
        await asyncio.to_thread(subprocess.run, ["umount", "-l", str(readonly)], check=False)
    assert rc == 2, lines
    assert f"{tmp_path}/a-file is a file, not a folder" in flow_line(lines, "under-file")
    assert f"cannot be created under {readonly}: a read-only file system" in flow_line(lines, "read-only")
    assert flow_line(lines, "fine").startswith("  ok") and "created at the first delivery" in flow_line(lines, "fine")
    assert not (tmp_path / "new").exists()


async def test_http_target_must_answer(tmp_path: Path) -> None:
    (tmp_path / "drop").mkdir()
    methods: list[str] = []

    def seen(r: web.Request) -> web.Response:
        methods.append(r.method)
        return web.Response(status=405 if r.method == "HEAD" else 200)

    async with http_sink(default=seen) as sink:
        flows = {
            "hook": {"source": {"instance": "disk"}, "target": {"type": "http", "url": sink.url}},
            "gone": {
                "source": {"instance": "disk"},
                "target": {"type": "http", "url": f"http://127.0.0.1:{free_port()}/x", "timeout": "5s"},
            },
        }
        rc, lines = await check(write_config(tmp_path, {"disk": local(tmp_path / "drop")}, flows))
        assert rc == 2, lines
        assert f"target {sink.url}: answered HEAD with 405 Method Not Allowed" in flow_line(lines, "hook")
        assert flow_line(lines, "hook").startswith("  ok")
        gone = flow_line(lines, "gone")
        assert gone.startswith("  FAIL") and "HEAD: cannot connect" in gone
        assert methods == ["HEAD"]  # nothing was posted

        sink.plan = [status(503), status(502)]
        del flows["gone"]
        rc, lines = await check(write_config(tmp_path, {"disk": local(tmp_path / "drop")}, flows))
        assert rc == 2, lines
        assert "answered HEAD with 503 Service Unavailable and OPTIONS with 502 Bad Gateway" in flow_line(lines, "hook")


async def test_all_good_config_passes_with_one_line_per_flow(
    rabbit_vhost: Vhost, pubsub_emulator: PubsubEmulator, sftp_openssh_backend: SftpBackend, tmp_path: Path
) -> None:
    v, emu, b = rabbit_vhost, pubsub_emulator, sftp_openssh_backend
    q = v.q("cc-good")
    await declare(v, q)
    emu.create("cc-good-topic", "cc-good-sub")
    b.put("outbound/x.csv", b"x")
    (tmp_path / "drop").mkdir()
    instances = {
        "mq": v.instance_config(),
        "ps": {"type": "pubsub", "project": emu.project, "emulator_host": emu.host},
        "partner": b.instance_config(),
        "disk": local(tmp_path / "drop"),
    }
    async with http_sink() as sink:
        flows: dict[str, Any] = {
            "mq-to-dir": {
                "source": {"instance": "mq", "queue": q},
                "target": {"type": "directory", "path": str(tmp_path / "out")},
            },
            "ps-to-ps": {
                "source": {"instance": "ps", "subscription": "cc-good-sub"},
                "target": {"instance": "ps", "topic": "cc-good-topic"},
            },
            "sftp-to-disk": {
                "source": {"instance": "partner", "path": "outbound"},
                "target": {"instance": "disk", "path": "in"},
            },
            "disk-to-http": {"source": {"instance": "disk", "path": ""}, "target": {"type": "http", "url": sink.url}},
            "disk-to-mq": {"source": {"instance": "disk"}, "target": {"instance": "mq", "routing_key": q}},
            "parked": {
                "enabled": False,
                "source": {"instance": "mq", "queue": v.q("cc-nothing")},
                "target": {"type": "directory", "path": "/proc/none"},
            },
        }
        rc, lines = await check(write_config(tmp_path, instances, flows))
    assert rc == 0, lines
    for name in flows:
        if name != "parked":
            assert flow_line(lines, name).startswith(f"  ok    flow {name}: "), lines
    assert flow_line(lines, "parked").startswith("  -     flow parked: disabled")
    assert len([line for line in lines if " flow " in line]) == len(flows)
