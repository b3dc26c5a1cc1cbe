"""sd_notify against a real AF_UNIX datagram socket, the unit file under systemd-analyze (its
exposure rating included), the daemon delivering from real servers under the unit's system-call
filter and /proc view, and the documented server install (docs/operations/systemd.md) followed
into a temporary root."""

from __future__ import annotations

import itertools
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from conveyor.systemd import notify_address, sd_notify, watchdog_interval
from tests.harness import bodies, wait_for
from tests.servers.ops import CONVEYOR, DaemonProcess, free_port, local_flow, write_config

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "systemd" / "conveyor.service"
EXEC_START = "/opt/conveyor/bin/conveyor"
SANDBOX = REPO / "tests" / "unit_sandbox.py"
SECURITY_DOC = REPO / "docs" / "security.md"


class Listener:
    """A bound SOCK_DGRAM socket standing in for the service manager."""

    def __init__(self, address: str | bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []

    def collect(self, until: float) -> None:
        while time.monotonic() < until:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            self.messages.append((time.monotonic(), data.decode()))

    def wait(self, pred: str, limit: float) -> None:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if any(pred in m for _, m in self.messages):
                return
            self.collect(min(deadline, time.monotonic() + 0.2))
        raise AssertionError(f"no {pred!r} within {limit}s; got {self.messages}")

    def lines(self) -> list[str]:
        return [line for _, m in self.messages for line in m.splitlines()]


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[Listener]:
    lst = Listener(str(tmp_path / "notify.sock"))
    yield lst
    lst.sock.close()


def test_notify_path_and_abstract_socket(listener: Listener) -> None:
    path = listener.sock.getsockname()
    assert sd_notify("STATUS=hello", notify_address(path))
    listener.collect(time.monotonic() + 0.3)
    assert listener.lines() == ["STATUS=hello"]

    name = f"conveyor-test-{os.getpid()}-{time.monotonic_ns()}"
    abstract = Listener(b"\0" + name.encode())
    try:
        assert notify_address("@" + name) == b"\0" + name.encode()
        assert sd_notify("READY=1", notify_address("@" + name))
        abstract.collect(time.monotonic() + 0.3)
        assert abstract.lines() == ["READY=1"]
    finally:
        abstract.sock.close()
    assert notify_address("") is None and notify_address("relative/path") is None


def test_watchdog_interval_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert watchdog_interval() == 0.5
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert watchdog_interval() is None  # meant for another process
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_interval() == 0.5
    monkeypatch.setenv("WATCHDOG_USEC", "0")
    assert watchdog_interval() is None


def test_daemon_notifies_ready_status_watchdog_stopping(tmp_path: Path, listener: Listener) -> None:
    port = free_port()
    inst, flow = local_flow(tmp_path, {"type": "directory", "path": str(tmp_path / "out")})
    config = write_config(
        tmp_path / "c.yaml",
        {"health": {"listen": f"127.0.0.1:{port}"}, "instances": {"box": inst}, "flows": {"f": flow}},
    )
    env = {"NOTIFY_SOCKET": listener.sock.getsockname(), "WATCHDOG_USEC": "1000000"}
    d = DaemonProcess(config, port, env=env)
    d.env.pop("WATCHDOG_PID", None)  # set by systemd for the service's own pid only
    d.start()
    try:
        listener.wait("READY=1", 20)
        ready_at = next(t for t, m in listener.messages if "READY=1" in m)
        (tmp_path / "in" / "a.txt").write_text("x")
        listener.collect(time.monotonic() + 6.0)
        assert d.proc is not None and d.proc.poll() is None
        d.proc.send_signal(15)
        listener.wait("STOPPING=1", 20)
        assert d.proc.wait(30) == 0
    finally:
        d.stop()
    lines = listener.lines()
    assert lines[0] == "STATUS=starting"
    assert lines.index("READY=1") < lines.index("STOPPING=1")
    assert lines[lines.index("STOPPING=1") + 1].startswith("STATUS=stopping: draining")
    ready_status = lines[lines.index("READY=1") + 1]
    assert ready_status.startswith("STATUS=") and "flows running" in ready_status
    pings = [t for t, m in listener.messages if "WATCHDOG=1" in m and t > ready_at]
    assert len(pings) >= 8, pings  # every 0.5 s for 6 s
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert max(gaps) < 1.0, gaps  # never as late as WATCHDOG_USEC
    # The summary changed after the delivery, and was sent again.
    assert any(line.startswith("STATUS=") and "1 delivered" in line for line in lines), lines


def test_no_notify_socket_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify_address() is None
    assert sd_notify("READY=1") is False


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_unit_file_verifies(tmp_path: Path) -> None:
    # verify insists that ExecStart= exists: point it at this venv's conveyor.
    exe = Path(sys.executable).parent / "conveyor"
    unit = tmp_path / "conveyor.service"
    unit.write_text(UNIT.read_text().replace(EXEC_START, str(exe)))
    p = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert p.returncode == 0, p.stderr
    assert "conveyor.service" not in p.stderr, p.stderr
    text = UNIT.read_text()
    for directive in (
        "Type=notify",
        "WatchdogSec=",
        "StateDirectory=conveyor",
        "LoadCredential=",
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "ExecReload=/bin/kill -HUP $MAINPID",
        f"ExecStart={EXEC_START} run -c /etc/conveyor/conveyor.yaml",
    ):
        assert directive in text, directive


def exposure(unit: Path) -> float:
    """``systemd-analyze security``'s overall exposure of ``unit``, read offline (0 best, 10 worst)."""
    p = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=unit.parent,
    )
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", p.stdout)
    assert m, (p.returncode, p.stdout[-2000:], p.stderr)
    return float(m.group(1))


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_unit_exposure_is_no_worse_than_documented(tmp_path: Path) -> None:
    documented = re.search(r"rates\s+the\s+unit's\s+exposure\s+\*\*(\d+\.\d+)\*\*", SECURITY_DOC.read_text())
    assert documented, f"{SECURITY_DOC} no longer states the unit's exposure"
    unit = tmp_path / "conveyor.service"
    unit.write_text(UNIT.read_text())
    assert exposure(unit) <= float(documented.group(1))
    # The rating sees each setting: without the system-call deny list it gets worse.
    unit.write_text(
        "".join(
            line for line in UNIT.read_text().splitlines(keepends=True) if not line.startswith("SystemCallFilter=~")
        )
    )
    assert exposure(unit) > float(documented.group(1))


def sandboxed(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SANDBOX), "--", *argv], capture_output=True, text=True, timeout=timeout)


confinable = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None or os.geteuid() != 0,
    reason="the unit's confinement needs systemd-analyze and root",
)


@confinable
def test_sandbox_confines_as_the_unit_says(tmp_path: Path) -> None:
    # What the unit denies fails with EPERM (not a kill), writable code pages included; /proc has
    # only process folders.
    victim = tmp_path / "f"
    victim.write_text("x")
    probe = (
        "import os\n"
        "def tryit(f):\n"
        "    try:\n"
        "        f(); return 'ok'\n"
        "    except OSError as e:\n"
        "        return e.strerror\n"
        f"print(tryit(lambda: os.chown({str(victim)!r}, -1, 1)))\n"
        "print(tryit(lambda: os.setpriority(os.PRIO_PROCESS, 0, 1)))\n"
        "print(tryit(lambda: open('/proc/cpuinfo').close()))\n"
        "print(tryit(lambda: open('/proc/self/status').close()))\n"
        "print(tryit(lambda: os.listdir('.')))\n"
        "import mmap\n"
        "print(tryit(lambda: mmap.mmap(-1, 4096, prot=mmap.PROT_WRITE | mmap.PROT_EXEC)))\n"
        "print(tryit(lambda: mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE)))\n"
    )
    p = sandboxed(sys.executable, "-c", probe)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == [
        "Operation not permitted",
        "Operation not permitted",
        "No such file or directory",
        "ok",
        "ok",
        "Operation not permitted",
        "ok",
    ], p.stdout
    assert victim.stat().st_gid == os.getgid()


class ConfinedDaemon(DaemonProcess):
    """``conveyor run`` under the unit's system-call filter and /proc view (tests/unit_sandbox.py)."""

    def start(self) -> ConfinedDaemon:
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, str(SANDBOX), "--", *CONVEYOR, "run", "-c", str(self.config)],
                stdout=out,
                stderr=err,
                env=self.env,
                cwd=self.config.parent,
            )
        return self


@pytest.fixture(
    params=[
        "local_backend",
        "sftp_asyncssh_backend",
        "ftps_explicit_vsftpd_backend",
        "rabbitmq_backend",
        "pubsub_backend",
    ]
)
def backend(request: pytest.FixtureRequest) -> Any:
    """A server of each kind conveyor's libraries talk to (set up outside the test's event loop)."""
    return request.getfixturevalue(request.param)


@confinable
async def test_daemon_delivers_under_the_units_confinement(backend: Any, tmp_path: Path) -> None:
    """Every library conveyor loads for a connector (asyncssh and cryptography, TLS, aiormq, gRPC
    and protobuf, aiohttp for health and metrics) works with what the unit allows."""
    b = backend
    out = tmp_path / "out"
    target = {"type": "directory", "path": str(out)}
    if hasattr(b, "publish"):
        flow = {"source": {"instance": "remote", **b.source_config()}, "target": target}
    else:
        flow = {
            "source": {
                "instance": "remote",
                "path": "in",
                "poll_interval": "200ms",
                "min_age": "0s",
                "after": "delete",
            },
            "target": target,
        }
    port = free_port()
    run = tmp_path / "run"
    run.mkdir()
    config = write_config(
        run / "conveyor.yaml",
        {"health": {"listen": f"127.0.0.1:{port}"}, "instances": {"remote": b.instance_config()}, "flows": {"f": flow}},
    )
    items = [os.urandom(100) + bytes([i]) for i in range(10)]
    if hasattr(b, "publish"):
        await b.publish(items)
    else:
        for i, data in enumerate(items):
            b.put(f"in/item{i}.bin", data)
    d = ConfinedDaemon(config, port).start()
    try:
        await d.wait_listening()
        await wait_for(lambda: len(bodies(out)) == len(items), 60)
        async with aiohttp.ClientSession() as s, s.get(d.url + "/metrics") as r:
            assert r.status == 200 and "conveyor_" in await r.text()
    finally:
        d.stop()
    assert sorted(bodies(out).values()) == sorted(items)
    assert "Operation not permitted" not in d.output(), d.output()[-3000:]


def readme_install_steps() -> list[str]:
    """The commands of the first ``sh`` block of the systemd page of the docs."""
    text = (REPO / "docs" / "operations" / "systemd.md").read_text()
    block = re.search(r"```sh\n(.*?)```", text, re.S)
    assert block, "no sh block in docs/operations/systemd.md"
    return [line for line in block.group(1).splitlines() if line.strip() and not line.lstrip().startswith("#")]


def rooted(text: str, root: Path) -> str:
    """Absolute /opt/ and /etc/ paths (commands, unit lines) moved under ``root``."""
    return re.sub(r"(?<![^\s=:])/(?=(?:opt|etc)/)", str(root) + "/", text)


def unit_values(unit: str, key: str) -> list[str]:
    """Values of the active (not commented-out) ``key=`` lines of a unit file."""
    return [line.split("=", 1)[1] for line in unit.splitlines() if line.startswith(key + "=")]


def run_steps(steps: list[str], root: Path) -> None:
    script = "set -e\n" + "\n".join(rooted(s, root) for s in steps) + "\n"
    p = subprocess.run(["bash", "-c", script], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, f"documented install steps failed:\n{script}\n{p.stdout}\n{p.stderr}"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_readme_server_install_puts_execstart_in_place(tmp_path: Path) -> None:
    # The documented install block, run with /opt and /etc moved into a temporary root; its last
    # step is systemd-analyze verify, run once the installed unit's paths are moved the same way.
    steps = readme_install_steps()
    verify = [s for s in steps if s.startswith("systemd-analyze verify ")]
    assert len(verify) == 1 and steps[-1] == verify[0], steps
    root = tmp_path / "root"
    (root / "etc" / "systemd" / "system").mkdir(parents=True)  # there on any systemd host
    run_steps(steps[:-1], root)
    unit_path = Path(rooted(shlex.split(verify[0])[-1], root))
    assert unit_path.is_relative_to(root), unit_path
    unit = rooted(unit_path.read_text(), root)
    unit_path.write_text(unit)
    run_steps(verify, root)

    # ExecStart's program is where the install put it, and runs.
    argv = shlex.split(unit_values(unit, "ExecStart")[0])
    exe = Path(argv[0])
    assert exe.is_relative_to(root) and exe.is_file() and os.access(exe, os.X_OK), exe
    p = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout.startswith("conveyor "), (p.stdout, p.stderr)
    # The venv's interpreter is not hidden from the service by ProtectHome=.
    python = (exe.parent / "python3").resolve()
    assert not python.is_relative_to("/root") and not python.is_relative_to("/home"), python
    # The installed config is readable by the dynamic user and passes check from the state
    # directory (the unit's WorkingDirectory, where its relative paths start).
    config = Path(argv[argv.index("-c") + 1])
    assert config.stat().st_mode & 0o004, oct(config.stat().st_mode)
    state = tmp_path / "state"
    state.mkdir()
    p = subprocess.run([str(exe), "check", "-c", str(config)], cwd=state, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    # Nothing the unit needs at start is missing: each LoadCredential= file, the documentation.
    for cred in unit_values(unit, "LoadCredential"):
        source = Path(cred.split(":", 1)[1])
        assert source.is_relative_to(root) and source.exists(), f"LoadCredential={cred}: no file after the install"
    for doc in unit_values(unit, "Documentation")[0].split():
        assert doc.startswith(("https://", "http://", "man:")) or (root / doc.removeprefix("file:///")).is_file(), doc

    # Running the block again (an upgrade) succeeds and keeps an edited config.
    config.write_text(config.read_text() + "# edited\n")
    run_steps(steps[:-1], root)
    assert config.read_text().endswith("# edited\n")
