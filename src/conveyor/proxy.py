"""Outbound proxies: the ``proxy`` setting's parsing, and opening a TCP connection through it.

Two kinds, as corporate networks offer them: ``socks5://[user:pass@]host:port`` (SOCKS5, with or
without username authentication) and ``http://[user:pass@]host:port`` (HTTP ``CONNECT``). SOCKS5 is
python-socks'; HTTP CONNECT is done here (see :meth:`ProxyUrl._http_connect` for why). The rules
conveyor adds around both:

* a proxy that is down, refuses, or rejects the credentials or the destination fails as
  :class:`ProxyFailed`, a ``ConnectionError`` naming the proxy (never its password) — there is
  no fallback to a direct connection;
* the password is held as a secret and never appears in reprs, errors, logs or ``/status``.
"""

from __future__ import annotations

import asyncio
import base64
import socket
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from pydantic import SecretStr

from conveyor.netloc import hostport

SCHEMES = {"socks5": "SOCKS5", "http": "HTTP"}
"""The schemes a ``proxy`` takes, each with the name of its python-socks ``ProxyType`` (loaded
only by a connection through a proxy: the config modules import this one)."""
MAX_ANSWER = 16 * 1024
"""Longest answer to CONNECT read from an HTTP proxy (a status line and a few headers)."""
PROXY_HELP = (
    "proxy to reach the server through: socks5://[user:pass@]host:port (SOCKS5) or "
    "http://[user:pass@]host:port (HTTP CONNECT); never bypassed"
)


class ProxyFailed(ConnectionError):
    """The proxy could not be reached, refused, or would not connect to the destination."""


@dataclass(frozen=True)
class ProxyUrl:
    """A parsed ``proxy`` setting. ``str()`` shows it without the password."""

    scheme: str
    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def __str__(self) -> str:
        user = f"{quote(self.username, safe='')}@" if self.username else ""
        return f"{self.scheme}://{user}{hostport(self.host, self.port)}"

    async def connect(self, host: str, port: int, seconds: float) -> socket.socket:
        """A connected non-blocking socket to ``host:port`` through the proxy, within ``seconds``.

        Raises :class:`ProxyFailed` naming the proxy and the destination.
        """
        if self.scheme == "http":
            return await self._http_connect(host, port, seconds)
        from python_socks import ProxyError, ProxyTimeoutError, ProxyType
        from python_socks.async_.asyncio import Proxy

        proxy = Proxy(
            ProxyType[SCHEMES[self.scheme]],
            self.host,
            self.port,
            username=self.username,
            password=self.password,
            rdns=True,  # the proxy resolves the name: partners' hosts are often only known inside
        )
        dest = hostport(host, port)
        try:
            sock = await proxy.connect(dest_host=host, dest_port=port, timeout=seconds)
        except ProxyTimeoutError:
            raise ProxyFailed(f"proxy {self}: no answer within {seconds:g}s (connecting to {dest})") from None
        except ProxyError as e:
            raise ProxyFailed(f"proxy {self}: refused the connection to {dest}: {e}") from None
        except OSError as e:
            raise ProxyFailed(f"proxy {self}: cannot connect: {e.strerror or e}") from None
        sock.setblocking(False)
        return sock

    async def _http_connect(self, host: str, port: int, seconds: float) -> socket.socket:
        """HTTP CONNECT, reading the proxy's answer only up to its blank line.

        python-socks reads the answer with one large ``recv``: when the proxy passes on the first
        bytes of the server (an FTP server speaks first) in the same segment, they are lost, and
        the client then waits for a welcome that never comes.
        """
        dest = hostport(host, port)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(seconds):
                sock = await self._open_to_proxy(loop)
                try:
                    head = f"CONNECT {dest} HTTP/1.1\r\nHost: {dest}\r\n"
                    if self.username:
                        token = base64.b64encode(f"{self.username}:{self.password or ''}".encode()).decode()
                        head += f"Proxy-Authorization: Basic {token}\r\n"
                    await loop.sock_sendall(sock, (head + "\r\n").encode())
                    answer = bytearray()
                    while not answer.endswith(b"\r\n\r\n"):
                        byte = await loop.sock_recv(sock, 1)  # a few hundred bytes, once per connection
                        if not byte or len(answer) > MAX_ANSWER:
                            raise ProxyFailed(f"proxy {self}: closed or garbled its answer to CONNECT {dest}")
                        answer += byte
                except BaseException:
                    sock.close()
                    raise
        except TimeoutError:
            raise ProxyFailed(f"proxy {self}: no answer within {seconds:g}s (connecting to {dest})") from None
        status = answer.split(b"\r\n", 1)[0].decode("latin-1")
        parts = status.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or parts[1] != "200":
            sock.close()
            raise ProxyFailed(f"proxy {self}: refused the connection to {dest}: {' '.join(parts[1:])[:200]}")
        return sock

    async def _open_to_proxy(self, loop: asyncio.AbstractEventLoop) -> socket.socket:
        """A TCP connection to the proxy itself (each of its addresses in turn)."""
        try:
            infos = await loop.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
        except OSError as e:
            raise ProxyFailed(f"proxy {self}: cannot resolve {self.host}: {e.strerror or e}") from None
        try:
            return await connect_first(infos)
        except OSError as e:
            raise ProxyFailed(f"proxy {self}: cannot connect: {e.strerror or e}") from None


async def connect_first(addresses: list[tuple[Any, ...]]) -> socket.socket:
    """A non-blocking socket connected to the first of ``addresses`` (``getaddrinfo`` entries)
    that accepts; the last failure otherwise."""
    loop = asyncio.get_running_loop()
    failure = OSError("no address")
    for family, kind, proto, _, addr in addresses:
        sock = socket.socket(family, kind, proto)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, addr)
            return sock
        except OSError as e:
            sock.close()
            failure = e
        except BaseException:
            sock.close()
            raise
    raise failure


def parse_proxy(value: str) -> ProxyUrl:
    """Parse and check a ``proxy`` setting; ValueError with a one-line reason otherwise."""
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        raise ValueError("proxy is not a URL: expected socks5://[user:pass@]host:port or http://...") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        shown = f"{scheme}://" if scheme else "no scheme"
        raise ValueError(f"proxy has {shown}: expected socks5:// (SOCKS5) or http:// (HTTP CONNECT)")
    if not parts.hostname:
        raise ValueError("proxy has no host: expected socks5://[user:pass@]host:port")
    if port is None:
        raise ValueError("proxy has no port: give it, e.g. socks5://proxy:1080 or http://proxy:3128")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError("proxy takes only scheme, credentials, host and port")
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    if password is not None and not username:
        raise ValueError("proxy has a password but no username")
    return ProxyUrl(scheme, parts.hostname, port, username, password)


def check_proxy_setting(value: SecretStr | None) -> SecretStr | None:
    """Pydantic validator of a ``proxy`` field (kept secret: it may carry a password)."""
    if value is not None:
        parse_proxy(value.get_secret_value())
    return value


def proxy_of(value: SecretStr | None) -> ProxyUrl | None:
    """The parsed ``proxy`` field, or None to connect directly."""
    return parse_proxy(value.get_secret_value()) if value is not None else None
