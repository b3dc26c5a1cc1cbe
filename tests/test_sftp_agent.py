"""Keys from a real ssh-agent (``agent: ${SSH_AUTH_SOCK}`` or a socket path) on a real sshd."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor.errors import AuthError, Permanent
from tests.backends.sftp import ssh_client_keys, sshd  # noqa: F401  (the fixtures)
from tests.servers.ssh_keys import KeySet
from tests.servers.sshd import Sshd, check_sftp


class Agent:
    """One ssh-agent on a socket of its own; ``add`` loads a key into it."""

    def __init__(self, sock: Path) -> None:
        self.sock = sock
        out = subprocess.run(["ssh-agent", "-s", "-a", str(sock)], check=True, capture_output=True, text=True).stdout
        self.pid = int(out.split("SSH_AGENT_PID=", 1)[1].split(";", 1)[0])

    def add(self, key: Path) -> None:
        env = {**os.environ, "SSH_AUTH_SOCK": str(self.sock)}
        subprocess.run(["ssh-add", "-q", str(key)], check=True, capture_output=True, env=env)

    def stop(self) -> None:
        os.kill(self.pid, signal.SIGTERM)


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    a = Agent(tmp_path / "agent.sock")
    try:
        yield a
    finally:
        a.stop()


async def check(srv: Sshd, **over: Any) -> str:
    return await check_sftp(srv.instance_config(password=None, **over))


async def test_agent_key(sshd: Sshd, agent: Agent, ssh_client_keys: KeySet) -> None:  # noqa: F811
    agent.add(ssh_client_keys.keys["stranger"])  # refused first: the next agent key is offered
    agent.add(ssh_client_keys.keys["ed25519"])
    assert await check(sshd, agent=str(agent.sock))


async def test_agent_from_environment(
    sshd: Sshd,  # noqa: F811
    agent: Agent,
    ssh_client_keys: KeySet,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from conveyor.config.interpolate import Interpolator

    agent.add(ssh_client_keys.keys["ecdsa"])
    monkeypatch.setenv("SSH_AUTH_SOCK", str(agent.sock))
    assert await check(sshd, **Interpolator().walk({"agent": "${SSH_AUTH_SOCK}"}))


async def test_agent_keys_refused(sshd: Sshd, agent: Agent, ssh_client_keys: KeySet) -> None:  # noqa: F811
    agent.add(ssh_client_keys.keys["stranger"])
    with pytest.raises(AuthError) as ei:
        await check(sshd, agent=str(agent.sock))
    msg = str(ei.value)
    assert "instance 'partner'" in msg and f"ssh-agent {agent.sock}" in msg and "ssh-ed25519 SHA256:" in msg


async def test_empty_agent(sshd: Sshd, agent: Agent) -> None:  # noqa: F811
    with pytest.raises(AuthError) as ei:
        await check(sshd, agent=str(agent.sock))
    assert f"ssh-agent {agent.sock} holds no keys" in str(ei.value)


async def test_agent_not_running(sshd: Sshd, tmp_path: Path) -> None:  # noqa: F811
    with pytest.raises(Permanent) as ei:
        await check(sshd, agent=str(tmp_path / "nobody.sock"))
    assert f"cannot reach ssh-agent at {tmp_path / 'nobody.sock'}" in str(ei.value)
