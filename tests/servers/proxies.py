"""Real outbound proxies on loopback: Debian's ``microsocks`` (SOCKS5, username auth) and
``tinyproxy`` (HTTP CONNECT, basic auth), each in the foreground with its own log, so a test can
show which destinations a connection went to through it.

Fixture: ``proxy_factory(kind)`` with kind ``socks5`` or ``http``; all are stopped at teardown.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.servers.ops import free_port
from tests.servers.procs import await_listener, stop_process

USER = "conveyor"
PASSWORDS = {"socks5": "pr:xy@pw", "http": "proxy7pw"}
"""microsocks' has a colon and an at sign: the URL carries it percent-encoded, conveyor decodes it.
(tinyproxy's config takes only letters and digits there.)"""

# microsocks: "client[5] 127.0.0.1: connected to 127.0.0.1:2121"; tinyproxy: "CONNECT 127.0.0.1:2121 HTTP/1.1".
_DEST = {"socks5": re.compile(r"connected to \S+?:(\d+)$", re.M), "http": re.compile(r"CONNECT \S+?:(\d+) HTTP", re.M)}


class ProxyServer:
    """One running proxy: its URL (with credentials), its log, and the ports it connected to."""

    def __init__(
        self, kind: str, port: int, work: Path, log: Path, proc: subprocess.Popen[bytes], auth: bool = True
    ) -> None:
        self.kind = kind
        self.auth = auth
        self.port = port
        self.work = work
        self.log = log
        self.proc = proc

    @property
    def password(self) -> str:
        """The password the proxy wants."""
        return PASSWORDS[self.kind]

    def url(self, password: str | None = None) -> str:
        """``kind://user:password@127.0.0.1:port`` (the password percent-encoded), or
        ``kind://127.0.0.1:port`` for a proxy started without authentication."""
        if not self.auth:
            return f"{self.kind}://127.0.0.1:{self.port}"
        return f"{self.kind}://{USER}:{quote(password or self.password, safe='')}@127.0.0.1:{self.port}"

    @property
    def shown(self) -> str:
        """The proxy as conveyor names it in errors: no password."""
        return f"{self.kind}://{USER}@127.0.0.1:{self.port}"

    def destinations(self) -> list[int]:
        """The destination ports of the tunnels asked of the proxy, in order."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return [int(p) for p in _DEST[self.kind].findall(text)]

    def tunnels(self) -> int:
        """How many tunnels the proxy opened to a destination (tinyproxy logs a refused CONNECT's
        request line too, so this counts the connections made, not the requests)."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return text.count("connected to " if self.kind == "socks5" else "Established connection to host")

    def stop(self) -> None:
        """Stop the proxy (its port then refuses connections)."""
        stop_process(self.proc)

    def remove(self) -> None:
        """Stop and remove its folder."""
        self.stop()
        shutil.rmtree(self.work, ignore_errors=True)


def start_proxy(kind: str, auth: bool = True) -> ProxyServer:
    """Start ``microsocks`` (socks5) or ``tinyproxy`` (http) on a free loopback port, with auth
    unless ``auth`` is false (SOCKS5 only: for clients such as OpenBSD ``nc`` that have none)."""
    work = Path(tempfile.mkdtemp(prefix=f"conveyor-{kind}-proxy-"))
    port = free_port()
    log = work / "proxy.log"
    if kind == "socks5":
        binary = shutil.which("microsocks")
        if binary is None:
            pytest.skip("microsocks is not installed (scripts/test-setup installs it)")
        argv = [binary, "-i", "127.0.0.1", "-p", str(port)]
        if auth:
            argv += ["-u", USER, "-P", PASSWORDS[kind]]
    else:
        binary = shutil.which("tinyproxy") or ("/usr/bin/tinyproxy" if Path("/usr/bin/tinyproxy").exists() else None)
        if binary is None:
            pytest.skip("tinyproxy is not installed (scripts/test-setup installs it)")
        conf = work / "tinyproxy.conf"
        conf.write_text(
            f"Port {port}\nListen 127.0.0.1\nTimeout 60\nMaxClients 100\nAllow 127.0.0.1\n"
            f'LogFile "{log}"\nLogLevel Connect\nBasicAuth {USER} {PASSWORDS[kind]}\n'
        )
        argv = [binary, "-d", "-c", str(conf)]
    out_file = work / "stdout.log" if kind == "http" else log
    with open(out_file, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        await_listener(proc, port, f"{kind} proxy")
    except RuntimeError as e:
        said = out_file.read_text(errors="replace")
        shutil.rmtree(work, ignore_errors=True)
        raise RuntimeError(f"{e}: {said}") from None
    return ProxyServer(kind, port, work, log, proc, auth)


@pytest.fixture
def proxy_factory() -> Iterator[Any]:
    """``make(kind)`` starts a ``socks5`` or ``http`` proxy; all are stopped at teardown."""
    started: list[ProxyServer] = []

    def make(kind: str) -> ProxyServer:
        server = start_proxy(kind)
        started.append(server)
        return server

    yield make
    for s in started:
        s.remove()
