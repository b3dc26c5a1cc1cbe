"""Logging in to one SSH server: the sftp server itself, or one of its jump hosts.

:class:`SshLogin` holds what one server needs across logins (its parsed keys, the host-key family
that matched, what it offered) and turns every way a login fails into an error that names the hop.
:class:`Route` is how the TCP stream to that server is opened: directly, through a proxy, or as a
channel of the previous hop's SSH connection.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncssh

from conveyor._compat import asyncssh as ssh_compat
from conveyor.errors import AuthError, ConveyorError, HostKeyError, Permanent, Transient
from conveyor.proxy import ProxyFailed, ProxyUrl
from conveyor.transfer.sftp import algorithms
from conveyor.transfer.sftp.config import SshHostConfig
from conveyor.transfer.sftp.hostkeys import (
    KEY_FAMILIES,
    Stream,
    describe_key,
    families_in,
    family_of,
    server_kexinit,
    sha1_signature,
    sha256_fp,
)

if TYPE_CHECKING:
    from conveyor.status import StatusBoard

log = logging.getLogger("conveyor.sftp")

# Bigger SSH channel packets and window than asyncssh's defaults (32 KiB / 2 MiB): a 256 KiB
# SFTP read then travels in few SSH packets, which is where the Python-side time goes.
WINDOW = 16 * 1024 * 1024
MAX_PKTSIZE = 256 * 1024
NO_SHA1_KEX = "-*-sha1"
"""asyncssh's default key exchanges without the SHA-1 ones (OpenSSH's "-" syntax). Offered first, so
that a server left with only SHA-1 is known for certain: the handshake fails, and the retry that
allows SHA-1 is reported."""


class HopRefused(ConnectionError):
    """The previous hop would not open a channel to the next one (its message says why)."""


@dataclass(frozen=True)
class Route:
    """How the TCP stream to one hop is opened: directly, through ``proxy``, or through ``tunnel``."""

    proxy: ProxyUrl | None = None
    tunnel: asyncssh.SSHClientConnection | None = None
    via: str = ""
    """The previous hop, as messages name it (empty for the first)."""

    async def stream(self, host: str, port: int, seconds: float) -> Stream:
        """A (reader, writer) pair to ``host:port`` along this route, for the KEXINIT probe."""
        if self.tunnel is not None:
            try:
                return await self.tunnel.open_connection(host, port)
            except asyncssh.ChannelOpenError as e:
                raise HopRefused(self.refused(host, port, e)) from None
        if self.proxy is not None:
            sock = await self.proxy.connect(host, port, seconds)
            return await asyncio.open_connection(sock=sock)
        return await asyncio.open_connection(host, port)

    async def connect_options(self, host: str, port: int, seconds: float) -> dict[str, Any]:
        """The ``asyncssh.connect`` keywords that take this route."""
        if self.tunnel is not None:
            return {"tunnel": self.tunnel}
        if self.proxy is not None:
            sock: socket.socket = await self.proxy.connect(host, port, seconds)
            return {"sock": sock}
        return {}

    def refused(self, host: str, port: int, e: asyncssh.ChannelOpenError) -> str:
        """The message when the previous hop would not open a channel to ``host:port``."""
        return f"{self.via} could not open a connection to {host}:{port}: {e.reason}"


@dataclass
class Login:
    """One logged-in SSH connection and what it verified."""

    conn: asyncssh.SSHClientConnection
    client: Client
    keytype: str
    fingerprint: str


class Client(asyncssh.SSHClient):
    """Checks the host key against the configured fingerprints; records what was offered."""

    def __init__(self, verify: Any) -> None:
        self._verify = verify
        self.offered: list[tuple[str, bytes]] = []
        self.lost = False
        # What the login did, so a refusal can say which credential the server still wanted.
        self.password_sent = False
        self.asked: list[str] = []

    def public_key_auth_requested(self) -> None:
        # asyncssh asks here once the configured keys are used up (or there are none).
        self.asked.append("publickey")
        return None

    def password_auth_requested(self) -> None:
        # asyncssh asks here only when no configured password is left to send.
        self.asked.append("password")
        return None

    def kbdint_auth_requested(self) -> Any:
        self.asked.append("keyboard-interactive")
        return NotImplemented  # asyncssh then answers password prompts with the configured password

    def validate_host_public_key(self, host: str, addr: str, port: int, key: asyncssh.SSHKey) -> bool:
        blob = key.public_data
        self.offered.append((key.get_algorithm(), blob))
        return bool(self._verify(blob)) if self._verify is not None else False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True


class _Mismatch(Exception):
    """The server presented a host key that matches nothing configured."""


class SshLogin:
    """Logins to one SSH server, with what it needs across them (keys, host-key family, warnings)."""

    def __init__(
        self,
        name: str,
        cfg: SshHostConfig,
        *,
        where: str,
        key: str,
        timeout: float,
        keepalive: float,
        status: StatusBoard | None,
    ) -> None:
        self.name = name
        self.cfg = cfg
        self.where = where
        """The hop as messages name it: ``host:port``, or ``jump host 1 host:port``."""
        self.key = key
        """The config key path of this hop, for warnings."""
        self.timeout = timeout
        self.keepalive = keepalive
        self.status = status
        self.handshakes = 0
        self._family: str | None = None
        """The host-key family that matched last time, so a reconnect is one handshake."""
        self._keys: list[asyncssh.SSHKey] | None = None
        self._cert: tuple[Path, Any] | None = None  # the user certificate file and its parsed form
        self._client: Client | None = None  # the last login's, for the refusal message
        self._agent_keys: list[Any] = []  # the agent's keys at the last login, for the refusal message
        self._fps = cfg.fingerprints()
        self._sha1_kex = False
        """The server offered no key exchange without SHA-1 last time: offer SHA-1 at once."""
        self._chosen: dict[str, list[str]] | None = None
        """The configured algorithm lists (``algorithms`` or ``legacy_algorithms``), offered as they are,
        with no SHA-1 retry; None: the defaults, SHA-1 key exchange only in a retry."""
        if cfg.algorithms is not None or cfg.legacy_algorithms:
            given = cfg.algorithms.model_dump() if cfg.algorithms else {}
            self._chosen = algorithms.chosen(given, cfg.legacy_algorithms)
        self._host_key_algs: list[str] | None = None
        """The host-key algorithms the server listed in its KEXINIT, when it was read."""
        self._warned: set[str] = set()

    def describe(self) -> str:
        """``user@host:port``, prefixed with ``jump host N`` for a jump host."""
        head = self.where[: -len(self.cfg.address)]
        return f"{head}{self.cfg.describe()}"

    def verified_by(self) -> str:
        """How the host key is checked, for ``check --connect``: ``(host_fingerprint)`` and the like."""
        cfg = self.cfg
        if not cfg.verified:
            return "(host_key_check: off)"
        if cfg.host_ca:
            return "(host_ca)"
        if cfg.known_hosts is not None:
            return f"(known_hosts {cfg.known_hosts})"
        return "(host_fingerprint)"

    async def login(self, route: Route) -> Login:
        """Log in over ``route``, the host key checked the configured way; errors name this hop."""
        try:
            return await self._verified_login(route)
        except ConveyorError as e:
            if self.where in e.message or self.where == self.cfg.address:
                raise
            raise type(e)(f"{self.where}: {e.message}", instance=self.name) from None
        except ProxyFailed as e:  # worded by the proxy module, naming the proxy
            raise Transient(str(e), instance=self.name) from None

    async def _verified_login(self, route: Route) -> Login:
        cfg = self.cfg
        if not cfg.verified:
            msg = f"host key of {self.describe()} NOT verified (host_key_check: off)"
            log.warning("sftp %s: %s", self.name, msg)
            st = self.status.instances.get(self.name) if self.status is not None else None
            if st is not None and msg not in st.warnings:
                st.warnings.append(msg)
            return await self._login(route, None, known_hosts=None)
        if cfg.host_ca:
            cas = self._host_cas()
            try:
                s = await self._login(route, None, known_hosts=([], cas, []))
                s.fingerprint += " certified by host_ca"
                return s
            except ConnectionResetError:
                # OpenSSH resets when it has no host key of the asked (certificate) types: see
                # whether it offers any certificate at all before calling it a network problem.
                await self._families(route)
                if not any(a.endswith("-cert-v01@openssh.com") for a in self._host_key_algs or []):
                    raise HostKeyError(
                        f"{self.where} offers no host certificate (host_ca needs a server with a "
                        "HostCertificate); pin its key with host_fingerprint instead",
                        instance=self.name,
                    ) from None
                raise Transient(f"{self.where} reset the connection during the handshake", instance=self.name) from None
            except HostKeyError as e:
                names = ", ".join(sha256_fp(k.public_data) for k in cas)
                raise HostKeyError(
                    f"host key of {self.where} is not signed by a host_ca key ({names}): {e.message}",
                    instance=self.name,
                ) from None
        if cfg.known_hosts is not None:
            try:
                known = asyncssh.read_known_hosts(str(cfg.known_hosts))
            except (OSError, ValueError) as e:
                raise Permanent(f"cannot read known_hosts file {cfg.known_hosts}: {e}", instance=self.name) from None
            try:
                return await self._login(route, None, known_hosts=known)
            except _Mismatch as e:
                raise HostKeyError(
                    f"host key not in known_hosts {cfg.known_hosts}; the server offered: {e}", instance=self.name
                ) from None
        # Pinned fingerprints: try the family that matched last time, else every family the
        # server has, ed25519 first, until one of its keys matches (the first login offers
        # them all at once, and reads the server's list only when its first choice mismatches).
        offered: list[str] = []
        tried: set[str | None] = set()
        if self._family is None and self._chosen is None:
            first = await self._first_login(route)
            if isinstance(first, Login):
                return first
            if first is not None:  # the server's preferred key did not match: look at the others
                tried.add(family_of(first[0]))
                offered.append(first[1])
        families = [self._family] if self._family else await self._families(route)
        resets = 0
        for fam in families:
            if fam in tried:
                continue
            try:
                s = await self._login(route, KEY_FAMILIES[fam] if fam else None, known_hosts=([], [], []))
            except _Mismatch as e:
                offered.append(str(e))
                continue
            except ConnectionResetError:
                resets += 1  # OpenSSH resets when it has no key of the asked type
                continue
            self._family = family_of(s.keytype) or fam
            return s
        if self._family:  # the cached type no longer matches (rotation): look at every type once
            self._family = None
            return await self._verified_login(route)
        if resets and not offered:  # nothing was compared: a network problem, not a mismatch
            raise Transient(f"{self.where} reset the connection during the handshake", instance=self.name)
        pinned = ", ".join(cfg.host_fingerprint or [])
        raise HostKeyError(
            f"host key of {self.where} matches no configured host_fingerprint ({pinned}); "
            f"the server offered: {'; '.join(offered) or 'no key'}",
            instance=self.name,
        )

    async def _first_login(self, route: Route) -> Login | tuple[str, str] | None:
        """A first login against pinned fingerprints, offering every key family at once in our
        order of preference: the server proves the first of them it has, as it would be asked
        first after reading its KEXINIT, and a login costs one connection instead of two.
        The login, else (key type, what was offered) when that key matched no fingerprint, else
        None when only reading the server's algorithms can say more (a reset, no common algorithm)."""
        every = [a for algs in KEY_FAMILIES.values() for a in algs]
        try:
            login = await self._login(route, every, known_hosts=([], [], []))
        except _Mismatch as e:
            client = self._client
            return (client.offered[-1][0] if client is not None and client.offered else "", str(e))
        except ConnectionResetError:
            return None
        except AuthError:
            raise
        except Permanent:  # no common algorithm, or no plain key: worded from the server's lists
            return None
        self._family = family_of(login.keytype)
        return login

    async def _families(self, route: Route) -> list[str | None]:
        try:
            _, self._host_key_algs = await server_kexinit(self.cfg.host, self.cfg.port, self.timeout, route.stream)
            fams: list[str | None] = list(families_in(self._host_key_algs))
        except TimeoutError:
            raise Transient(f"{self.where} did not answer within {self.timeout:g}s", instance=self.name) from None
        except (HopRefused, ProxyFailed) as e:
            raise Transient(str(e), instance=self.name) from None
        except (OSError, asyncio.IncompleteReadError) as e:
            # Worded as a failed login's connect is: the same refusal reads the same either way.
            raise Transient(f"cannot connect to {self.where}: {e or type(e).__name__}", instance=self.name) from None
        except ValueError as e:
            raise Permanent(f"{self.where}: {e}", instance=self.name) from None
        wanted = (self._chosen or {}).get("host_keys")
        if wanted is not None:  # only the families the configured list can verify
            if not set(self._host_key_algs) & set(wanted):
                why = algorithms.explain("host key", self.cfg.legacy_algorithms, self._host_key_algs)
                raise Permanent(f"{self.where}: key exchange failed: {why}", instance=self.name)
            fams = [f for f in fams if f is None or set(KEY_FAMILIES[f]) & set(wanted)]
        return fams or [None]

    def _verify(self, blob: bytes) -> bool:
        return any(fp.matches(blob) for fp in self._fps)

    async def _login(self, route: Route, algs: list[str] | None, *, known_hosts: Any) -> Login:
        cfg = self.cfg
        keys = self._load_keys()
        offered: list[Any] = [(keys[0], self._cert[1])] if keys and self._cert else list(keys or [])
        agent = await self._agent()
        if agent is not None:
            self._agent_keys = await self._read_agent(agent)
            offered += self._agent_keys
        client = Client(self._verify if self._fps and cfg.verified else None)
        self._client = client
        secret = cfg.password.get_secret_value() if cfg.password else None

        def password() -> str | None:
            client.password_sent = True
            return secret

        opts: dict[str, Any]
        if self._chosen is not None:
            opts = algorithms.connect_options(self._chosen)
            wanted = self._chosen.get("host_keys")
            if algs is not None and wanted is not None:  # one host-key family, within the configured list
                algs = [a for a in algs if a in wanted]
        else:
            opts = {
                "kex_algs": "default" if self._sha1_kex else NO_SHA1_KEX,
                "encryption_algs": algorithms.ENCRYPTION_ALGS,
            }
        if algs is not None:
            opts["server_host_key_algs"] = algs
        try:
            opts.update(await route.connect_options(cfg.host, cfg.port, self.timeout))
            conn, _ = await asyncssh.create_connection(
                lambda: client,
                cfg.host,
                cfg.port,
                username=cfg.username,
                password=password if secret is not None else None,
                client_keys=offered or None,
                known_hosts=known_hosts,
                config=None,
                agent_path=None,
                # Every method is allowed, so that a server wanting a second credential (partial
                # success) gets asked for it and the refusal can say which one was missing.
                preferred_auth=(
                    "publickey,password,keyboard-interactive" if offered else "password,keyboard-interactive,publickey"
                ),
                gss_auth=False,
                host_based_auth=False,
                x509_trusted_certs=None,
                connect_timeout=self.timeout,
                login_timeout=self.timeout,
                keepalive_interval=self.keepalive or None,
                keepalive_count_max=3,
                window=WINDOW,
                max_pktsize=MAX_PKTSIZE,
                **opts,
            )
        except asyncssh.HostKeyNotVerifiable as e:
            if client.offered:
                raise _Mismatch("; ".join(describe_key(t, b) for t, b in client.offered)) from None
            raise HostKeyError(f"host key not accepted: {e.reason}", instance=self.name) from None
        except asyncssh.PermissionDenied:
            raise AuthError(self._auth_message(), instance=self.name) from None
        except asyncssh.KeyExchangeFailed as e:
            if self._chosen is None and not self._sha1_kex and "key exchange" in e.reason:
                self._sha1_kex = True  # nothing in common without SHA-1: the one change in the retry
                return await self._login(route, algs, known_hosts=known_hosts)
            self._sha1_kex = False  # SHA-1 did not help: next time, ask for better first again
            why = algorithms.explain(e.reason, cfg.legacy_algorithms, self._host_key_algs)
            # The server will not change its lists by itself: a retry cannot help.
            raise Permanent(f"{self.where}: key exchange failed: {why or e.reason}", instance=self.name) from None
        except asyncssh.ConnectionLost as e:
            # A reset during the handshake: asyncssh reports it so when the RST comes after the
            # stream ended, and a proxy or a jump host passes it on as a plain close.
            raise ConnectionResetError(e.reason) from None
        except asyncssh.DisconnectError as e:
            raise Transient(f"{self.where} closed the connection: {e.reason}", instance=self.name) from None
        except asyncssh.ChannelOpenError as e:
            raise Transient(route.refused(cfg.host, cfg.port, e), instance=self.name) from None
        except ConnectionResetError:
            raise
        except ProxyFailed:
            raise
        except TimeoutError:
            raise Transient(
                f"{self.where} did not complete the SSH handshake within {self.timeout:g}s", instance=self.name
            ) from None
        except OSError as e:
            raise Transient(f"cannot connect to {self.where}: {e.strerror or e}", instance=self.name) from None
        finally:
            if agent is not None:  # its keys sign only during the login
                agent.close()
        self.handshakes += 1
        ssh_compat.lighten(conn)
        key = conn.get_server_host_key()
        keytype, blob = (key.get_algorithm(), key.public_data) if key is not None else ("?", b"")
        verified = cfg.verified
        log.info("sftp %s: logged in to %s (%s)", self.name, self.describe(), keytype)
        if verified:
            await self._check_sha1(keytype, route)
        return Login(conn, client, keytype, sha256_fp(blob) + ("" if verified else " NOT VERIFIED"))

    async def _check_sha1(self, keytype: str, route: Route) -> None:
        """Warn (once, and in /status) when this connection relies on SHA-1: its key exchange, or
        the signature that proves the host key."""
        if self._sha1_kex:
            self._warn(
                "key exchange uses SHA-1: the server offers no key exchange without it that conveyor "
                "supports (ask its operator for curve25519-sha256 or diffie-hellman-group14-sha256)"
            )
        if keytype in ("ssh-rsa", "ssh-dss") and self._host_key_algs is None:
            try:  # the host-key check did not read the server's KEXINIT: read it now, once
                _, self._host_key_algs = await server_kexinit(self.cfg.host, self.cfg.port, self.timeout, route.stream)
            except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError):
                return
        if self._host_key_algs is not None and sha1_signature(keytype, self._host_key_algs):
            self._warn(
                f"the server proves its {keytype} host key with a SHA-1 signature: it lists "
                "no rsa-sha2-256/512; ask its operator for those or an ed25519 host key"
            )

    def _warn(self, message: str) -> None:
        """One warning line per pool and message (every connect would find it again), and /status."""
        text = f"{self.key}: {message}"
        if self.status is not None:
            self.status.warn(text, self.name)
        if text not in self._warned:
            self._warned.add(text)
            log.warning("weak transport: %s", text, extra={"instance": self.name})

    def _auth_message(self) -> str:
        cfg = self.cfg
        client = self._client
        head = f"login refused for user '{cfg.username}'"
        keys = self._keys or []
        desc = ", ".join(f"{k.get_algorithm()} {sha256_fp(k.public_data)}" for k in keys)
        asked = client.asked if client is not None else []
        if cfg.password is not None and (client is None or client.password_sent):
            return f"{head}: wrong username or password"
        if cfg.password is not None and not keys and not self._agent_keys and "publickey" in asked:
            return (
                f"{head}: the server wants a private key before it takes the password "
                "(AuthenticationMethods publickey,password): set private_key_file as well"
            )
        if (keys or self._agent_keys) and cfg.password is None and "password" in asked and "publickey" not in asked:
            # The key was not asked for again: the server took it and then wanted a password.
            return (
                f"{head}: the server accepted the private key but also asks for a password "
                "(AuthenticationMethods publickey,password): set password as well"
            )
        if self._cert is not None:
            path, cert = self._cert
            names = ", ".join(p for p in cert.principals) or "any"
            return (
                f"{head}: the server did not accept the private key ({desc}) with certificate {path} "
                f"(principals: {names}; signed by {sha256_fp(cert.signing_key.public_data)}): is it expired, "
                "for another user, or signed by a CA the server does not trust?"
            )
        if self._agent_keys:
            listed = ", ".join(f"{k.get_algorithm()} {sha256_fp(k.public_data)}" for k in self._agent_keys)
            mine = f"the private key ({desc}) nor " if keys else ""
            return f"{head}: the server accepted neither {mine}the keys of ssh-agent {cfg.agent} ({listed})"
        return f"{head}: the server did not accept the private key ({desc})"

    def _load_keys(self) -> list[asyncssh.SSHKey] | None:
        cfg = self.cfg
        if cfg.private_key is None and cfg.private_key_file is None:
            return None
        if self._keys is None:
            passphrase = cfg.passphrase.get_secret_value() if cfg.passphrase else None
            where = f"private key file {cfg.private_key_file}" if cfg.private_key_file else "private_key"
            try:
                if cfg.private_key_file is not None:
                    key = asyncssh.read_private_key(str(cfg.private_key_file), passphrase)
                else:
                    assert cfg.private_key is not None
                    key = asyncssh.import_private_key(cfg.private_key.get_secret_value(), passphrase)
            except OSError as e:
                raise Permanent(f"cannot read {where}: {e.strerror or e}", instance=self.name) from None
            except asyncssh.KeyEncryptionError as e:
                if "bcrypt" in str(e):  # an install problem, not the user's passphrase
                    raise Permanent(f"cannot decrypt {where}: {e} (pip install bcrypt)", instance=self.name) from None
                raise AuthError(f"cannot decrypt {where}: wrong passphrase", instance=self.name) from None
            except asyncssh.KeyImportError as e:
                if passphrase is not None and ("decrypt" in str(e).lower() or self._encrypted_pem()):
                    # PKCS#1/#8 with a wrong passphrase. About one wrong passphrase in 256 decrypts to
                    # bytes whose padding checks out, and then fails as "Invalid PEM" instead.
                    raise AuthError(f"cannot decrypt {where}: wrong passphrase", instance=self.name) from None
                if "passphrase" in str(e).lower():
                    raise AuthError(f"{where} is encrypted: set passphrase", instance=self.name) from None
                raise AuthError(f"{where} is not a usable private key: {e}", instance=self.name) from None
            self._cert = self._load_cert(key)
            self._keys = [key]
        return self._keys

    def _encrypted_pem(self) -> bool:
        """Whether the configured key is a passphrase-protected PEM (PKCS#1 or PKCS#8)."""
        cfg = self.cfg
        try:
            text = (
                cfg.private_key.get_secret_value()
                if cfg.private_key is not None
                else Path(str(cfg.private_key_file)).read_text(errors="replace")
            )
        except OSError:
            return False
        return "Proc-Type: 4,ENCRYPTED" in text or "BEGIN ENCRYPTED PRIVATE KEY" in text

    def _load_cert(self, key: asyncssh.SSHKey) -> tuple[Path, Any] | None:
        """The user certificate of ``key``: certificate_file, else ``<private_key_file>-cert.pub``."""
        cfg = self.cfg
        path = cfg.certificate_file
        if path is None and cfg.private_key_file is not None:
            path = Path(f"{cfg.private_key_file}-cert.pub")
            if not path.exists():
                return None
        if path is None:
            return None
        try:
            cert = asyncssh.read_certificate(str(path))
        except OSError as e:
            raise Permanent(f"cannot read certificate_file {path}: {e.strerror or e}", instance=self.name) from None
        except (asyncssh.KeyImportError, ValueError) as e:
            raise Permanent(f"certificate_file {path} is not an OpenSSH certificate: {e}", instance=self.name) from None
        if cert.key.public_data != key.public_data:
            raise AuthError(
                f"certificate_file {path} is not a certificate of the private key "
                f"({key.get_algorithm()} {sha256_fp(key.public_data)})",
                instance=self.name,
            )
        return path, cert

    async def _agent(self) -> asyncssh.SSHAgentClient | None:
        """A connection to the configured ssh-agent, or None when there is none."""
        path = self.cfg.agent
        if path is None:
            return None
        try:
            return await asyncssh.connect_agent(path)
        except (OSError, asyncssh.Error) as e:
            reason = getattr(e, "strerror", None) or str(e) or type(e).__name__
            raise Permanent(f"cannot reach ssh-agent at {path}: {reason}", instance=self.name) from None

    async def _read_agent(self, agent: asyncssh.SSHAgentClient) -> list[Any]:
        """The agent's keys; an agent without any is a refusal waiting to happen, said now."""
        try:
            keys = list(await agent.get_keys())
        except (OSError, asyncssh.Error) as e:
            agent.close()
            raise Permanent(f"ssh-agent {self.cfg.agent} did not list its keys: {e}", instance=self.name) from None
        if not keys and not self._keys and self.cfg.password is None:
            agent.close()
            raise AuthError(f"ssh-agent {self.cfg.agent} holds no keys (ssh-add one)", instance=self.name)
        return keys

    def _host_cas(self) -> list[asyncssh.SSHKey]:
        """The host_ca keys: key text as given, or every key in a file."""
        out: list[asyncssh.SSHKey] = []
        for i, entry in enumerate(self.cfg.host_ca or []):
            text = entry.strip()
            try:
                if text.startswith(("ssh-", "ecdsa-", "sk-")):  # key algorithm names; anything else is a path
                    out.append(asyncssh.import_public_key(text))
                else:
                    out.extend(asyncssh.read_public_key_list(text))
            except OSError as e:
                raise Permanent(f"host_ca[{i}]: cannot read {text}: {e.strerror or e}", instance=self.name) from None
            except (asyncssh.KeyImportError, ValueError) as e:
                raise Permanent(f"host_ca[{i}] is not an SSH public key: {e}", instance=self.name) from None
        return out
