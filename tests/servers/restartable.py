"""Killing a real server the hard way and starting it again on the same port, for restart tests.

``kill_tree`` freezes a listener (SIGSTOP, so it forks no new session while we look), collects
every descendant (sshd and vsftpd serve each connection from a child process), SIGKILLs them and
then the listener: what a crash or an OOM kill of the whole service does to its clients.
``restart_sshd`` / ``restart_vsftpd`` start the same binary with the same config file, so the
port, host keys, certificates and served folder are unchanged.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers.procs import descendants
from tests.servers.ssh_keys import KeySet
from tests.servers.sshd import SSHD, Sshd, sshd_available, start_sshd
from tests.servers.vsftpd import VSFTPD, Vsftpd


@pytest.fixture(scope="module")
def killable_sshd(ssh_client_keys: KeySet) -> Iterator[Sshd]:
    """A private sshd for one module, whose tests kill and restart it (killing the session-wide
    one would hurt other modules). Needs the ``ssh_client_keys`` fixture in the module."""
    why = sshd_available()
    if why:
        pytest.fail(why)
    server = start_sshd(ssh_client_keys)
    try:
        yield server
    finally:
        kill_tree(server.proc)
        shutil.rmtree(server.base, ignore_errors=True)


def kill_tree(proc: subprocess.Popen[bytes]) -> int:
    """SIGKILL a server and all its session processes; returns how many sessions were killed."""
    if proc.poll() is not None:
        return 0
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGSTOP)  # no new sessions forked between the scan and the kill
    sessions = descendants(proc.pid)
    for pid in sessions:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.kill()
    proc.wait(10)
    return len(sessions)


def _wait_listening(proc: subprocess.Popen[bytes], port: int, banner: bytes, what: str, log: Path | None) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            text = log.read_text(errors="replace")[-2000:] if log is not None and log.exists() else ""
            raise RuntimeError(f"{what} exited with {proc.returncode} on restart: {text}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                if s.recv(16).startswith(banner):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"{what} did not listen on port {port} again")


def restart_sshd(server: Sshd) -> None:
    """Start a killed sshd again: same config (port, host keys, served folder), same log file."""
    assert server.proc.poll() is not None, "kill it first"
    with open(server.base / "sshd.log", "ab") as log:  # sshd keeps its own copy of the descriptor
        server.proc = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(server.base / "sshd_config")], stdout=log, stderr=subprocess.STDOUT
        )
    _wait_listening(server.proc, server.port, b"SSH-", "sshd", server.base / "sshd.log")


def restart_vsftpd(server: Vsftpd) -> None:
    """Start a killed vsftpd again with the same config file (port, passive ports, served folder)."""
    assert server.proc.poll() is not None, "kill it first"
    server.proc = subprocess.Popen(
        [VSFTPD, str(server.workdir / "vsftpd.conf")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    _wait_listening(server.proc, server.port, b"220", "vsftpd", None)
