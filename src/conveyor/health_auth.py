"""Who may use the health server's API: the bearer token, the Host check, cross-site refusals.

``/healthz``, ``/readyz`` and ``/metrics`` are probes: answered to anyone, whatever the Host
header (kubelet, systemd and Prometheus name the target as they like). Every other request:

1. its ``Host`` must name this server — localhost, a loopback or the listen address, or one of
   ``health.allowed_hosts`` — so a page whose name was rebound to this address (DNS rebinding)
   is answered ``421``;
2. a browser request from another origin (``Origin`` not this server, ``Sec-Fetch-Site`` other
   than ``same-origin``/``none``) is refused ``403``;
3. a request that changes state carries no body or a JSON one: form content types (what a
   cross-site page can send without asking first) are refused ``415``;
4. it carries ``Authorization: Bearer <token>`` (compared in constant time), unless it only
   reads ``/status``, or a ledger listing while ``health.public_listings`` is true; else ``401``.

The status page (``/`` and ``/page/…``) passes checks 1 and 2 (a plain link from elsewhere to
``/`` is let through, without cookies) and then checks its own session and CSRF tokens.

The token is ``health.token``, else the one the daemon made at first start in the file
``health-token`` beside the state database (mode 0600), where ``conveyor ledger`` reads it.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import logging
import os
import secrets
import stat
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from conveyor.config.loader import default_state_folder
from conveyor.errors import Permanent

if TYPE_CHECKING:
    from conveyor.config.schema import HealthConfig

log = logging.getLogger("conveyor.health")

PROBES = frozenset({"/healthz", "/readyz", "/metrics"})
"""Answered to anyone: liveness, readiness and scrapes must not depend on names or tokens."""
OPEN_READS = frozenset({"/status"})
"""Read without the token (still Host- and Origin-checked): counters and states, no item ids."""
READS = frozenset({"GET", "HEAD"})
PAGE_PREFIX = "/page/"
"""The status page (``/`` and ``/page/…``): Host- and cross-site-checked here, signed in by a
session cookie and a CSRF token on each form (:mod:`conveyor.health_page`)."""
FORM_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data", "text/plain"})
"""What an HTML form, or a page's request that needs no CORS preflight, can send."""
TOKEN_FILE = "health-token"
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARDS = frozenset({"", "0.0.0.0", "::"})
MIN_TOKEN = 16
"""Shorter configured tokens draw a warning at start."""
_MAX_FILE = 4096


class TokenFileError(Permanent):
    """The token file cannot be made or read, or is not safe to use."""


# -- the token file -------------------------------------------------------------------
def token_path(state: str | None, env: Mapping[str, str] | None = None, cwd: Path | None = None) -> Path:
    """Where the daemon keeps the token it makes: beside a SQLite state database; for a
    PostgreSQL state (or none given), in the default state folder ($STATE_DIRECTORY, else ./var).
    ``env`` and ``cwd`` are the daemon's (default: this process's)."""
    if state is None or state.startswith(("postgresql://", "postgres://")):
        folder = Path(default_state_folder(env))
    else:
        folder = Path(state).parent
    return (cwd or Path.cwd()) / folder / TOKEN_FILE


def read_token(path: Path) -> str:
    """The token in ``path``. Raises FileNotFoundError when there is none, TokenFileError when
    it cannot be read or is not safe: a symbolic link, not a regular file, open to others."""
    try:
        # O_NOFOLLOW: a link planted at the name is refused, not followed; O_NONBLOCK: a FIFO
        # there cannot hang the open.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as e:
        if os.path.islink(path):
            raise TokenFileError(
                f"the token file {path} is a symbolic link; remove it to have a new one made"
            ) from None
        raise TokenFileError(f"cannot read the token file {path}: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise TokenFileError(f"the token file {path} is not a regular file")
        if st.st_mode & 0o007:
            raise TokenFileError(
                f"the token file {path} is open to other users (mode "
                f"{stat.S_IMODE(st.st_mode):04o}): chmod 600 it, or remove it to have a new one made"
            )
        data = os.read(fd, _MAX_FILE + 1)
    finally:
        os.close(fd)
    token = data.decode("utf-8", "replace").strip()
    if len(data) > _MAX_FILE or not token or not token.isprintable() or " " in token:
        raise TokenFileError(f"the token file {path} does not hold one token; remove it to have a new one made")
    return token


def make_or_read_token(path: Path) -> tuple[str, bool]:
    """The token in ``path``, made first when there is no file: (token, made). The new file is
    written under a random name (O_EXCL, mode 0600) and linked into place, so a reader never
    sees it half-written and two daemons starting at once end up with the same token."""
    try:
        return read_token(path), False
    except FileNotFoundError:
        pass
    token = secrets.token_urlsafe(32)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, (token + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # never replaces a file: whoever linked first wins
        except FileExistsError:
            return read_token(path), False
        finally:
            os.unlink(tmp)
    except OSError as e:
        raise TokenFileError(f"cannot make the token file {path}: {e.strerror or e}") from None
    with contextlib.suppress(OSError):  # the new name survives a crash
        dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    return token, True


# -- the request checks ---------------------------------------------------------------
def split_host(value: str) -> tuple[str, str | None] | None:
    """``name[:port]`` or ``[v6][:port]`` → (lower-case name, port or None); None if malformed."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        name, rest = value[1:end], value[end + 1 :]
        if rest and not (rest.startswith(":") and rest[1:].isdigit()):
            return None
        return name, rest[1:] or None
    name, sep, port = value.rpartition(":")
    if not sep:
        return value.rstrip("."), None
    if not port.isdigit() or ":" in name:
        return None
    return name.rstrip("."), port


def _address(name: str) -> str | None:
    """An IP address literal in its canonical form (``0:0::1`` → ``::1``), else None."""
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        return None


@dataclass(frozen=True)
class Policy:
    """What a request is checked against; made from ``health:`` and the listen address."""

    names: frozenset[str]
    """Host names and addresses (lower case) the server answers to."""
    any_address: bool
    """Listening on every interface: any address literal is a name of this server."""
    public_listings: bool

    @classmethod
    def of(cls, listen_host: str, health: HealthConfig) -> Policy:
        """The policy for a server listening on ``listen_host`` under ``health``."""
        host = listen_host.strip("[]").lower()
        names = set(LOOPBACK_NAMES) | set(health.allowed_hosts)
        if host not in WILDCARDS:
            names.add(_address(host) or host)
        return cls(frozenset(names), host in WILDCARDS, health.public_listings)

    def host_allowed(self, value: str) -> bool:
        """True when a Host header (or an Origin's host) names this server. An address literal
        cannot be rebound by DNS, so when listening on every interface any address is accepted;
        the port is not compared, so SSH tunnels and proxies on other ports keep working."""
        parts = split_host(value)
        if parts is None:
            return False
        address = _address(parts[0])
        if address is not None:
            return address in self.names or self.any_address
        return parts[0] in self.names


Refusal = tuple[int, str]


def check(
    policy: Policy, method: str, path: str, headers: Mapping[str, str], has_body: bool, token: Callable[[], str]
) -> Refusal | None:
    """Why a request is refused (HTTP status, message), or None to let it through."""
    if path in PROBES:
        return None
    host = headers.get("Host")
    if host is not None and not policy.host_allowed(host):
        return 421, (
            f"Host '{_shown(host)}' is not a name of this server; if it is one, add it to health.allowed_hosts"
        )
    page = path == "/" or path.startswith(PAGE_PREFIX)
    if page and method in READS and path == "/" and headers.get("Sec-Fetch-Mode", "").lower() == "navigate":
        # A link to the page from elsewhere opens it; the session cookie (SameSite=Strict) is not
        # sent along, so what it shows is what /status shows.
        return None
    fetch_site = headers.get("Sec-Fetch-Site", "").strip().lower()
    if fetch_site and fetch_site not in ("same-origin", "none"):
        return 403, f"cross-site request refused (Sec-Fetch-Site: {_shown(fetch_site)})"
    origin = headers.get("Origin")
    if origin is not None and not _same_origin(origin, host):
        return 403, f"cross-origin request refused (Origin: {_shown(origin)}); this API answers its own origin only"
    if page:
        return None  # the page checks its own session cookie and each form's CSRF token
    changes = method not in READS
    if changes:
        ctype = headers.get("Content-Type") or ""
        mime = ctype.split(";", 1)[0].strip().lower()
        json_body = mime == "application/json" or mime.endswith("+json")
        if mime in FORM_TYPES or (has_body and not json_body):
            return 415, (f"Content-Type '{_shown(ctype)}' refused: calls that change state take no body, or a JSON one")
    elif path in OPEN_READS or (policy.public_listings and path.startswith("/flows/")):
        return None
    header = headers.get("Authorization", "")
    scheme, _, given = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return 401, (
            "missing 'Authorization: Bearer <token>': the token is health.token, or the one in the "
            f"file {TOKEN_FILE} beside the daemon's state database (conveyor ledger reads it)"
        )
    if not hmac.compare_digest(given.strip().encode(), token().encode()):
        return 401, f"wrong bearer token: it must be health.token, or the one in the daemon's {TOKEN_FILE} file"
    return None


def _shown(value: str) -> str:
    """A header value quoted back in an answer: cut short, it comes from whoever asked."""
    return value if len(value) <= 100 else value[:99] + "…"


def _same_origin(origin: str, host: str | None) -> bool:
    """``Origin`` names the server the request was sent to: scheme http(s), same host and port
    as the Host header (browsers leave a default port out of both)."""
    try:
        parts = urlsplit(origin.strip())
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not parts.netloc or host is None:
        return False
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username is not None:
        return False
    mine, theirs = split_host(host), split_host(parts.netloc)
    return mine is not None and mine == theirs


# -- the server's side ----------------------------------------------------------------
class ApiGuard:
    """Checks every request to the health server (an aiohttp middleware) against the current
    ``health:`` settings; holds the token the daemon made when the config names none."""

    def __init__(self, listen_host: str, health: Callable[[], HealthConfig], state: Callable[[], str]) -> None:
        self.listen_host = listen_host
        self._health = health
        self._state = state
        self._lock = threading.Lock()
        self._file_token: tuple[Path, str] | None = None
        self._policy: tuple[HealthConfig, Policy] | None = None

    def prepare(self) -> None:
        """At start: make or read the token file when the config names no token (so the CLI
        finds it at once); warn about a short configured token. Never logs a token."""
        configured = self._health().token
        if configured is None:
            self.token()
        elif len(configured.get_secret_value().strip()) < MIN_TOKEN:
            log.warning("health.token is shorter than %d characters: easy to guess", MIN_TOKEN)

    def token(self) -> str:
        """The token requests must carry now (re-read after a reload changed ``health.token``)."""
        configured = self._health().token
        if configured is not None:
            return configured.get_secret_value().strip()
        path = token_path(self._state())
        with self._lock:  # the daemon's loop (at start) and the server thread (after a reload)
            if self._file_token is None or self._file_token[0] != path:
                token, made = make_or_read_token(path)
                if made:
                    log.info("made an API token for the ledger in %s (mode 0600; conveyor ledger reads it there)", path)
                self._file_token = (path, token)
            return self._file_token[1]

    def policy(self) -> Policy:
        """The policy of the current ``health:`` settings."""
        health = self._health()
        cached = self._policy
        if cached is None or cached[0] is not health:
            cached = self._policy = (health, Policy.of(self.listen_host, health))
        return cached[1]

    def refusal(self, method: str, path: str, headers: Mapping[str, str], has_body: bool) -> Refusal | None:
        """What :func:`check` refuses of a request, as (status, message); None to let it through.
        Raises :class:`TokenFileError` when the token file cannot be read."""
        return check(self.policy(), method, path, headers, has_body, self.token)
