"""SSH connections for the sftp connector: host-key checking, login, and a small session pool.

One SSH connection carries one SFTP session; SFTP multiplexes requests, so a session may be
shared when all ``max_connections`` are busy (a listing and a download never deadlock each
other), and is shared at once while another opens beside it: an operation waits for a login
only when there is no session at all. Broken sessions are dropped and the next use reconnects. Only the
``max_connection_attempts`` loop of one connect lives here; all other retrying is the
supervisor's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import asyncssh

from conveyor.errors import ConveyorError, Permanent, Transient
from conveyor.supervisor import CONNECT_BACKOFF, retrying
from conveyor.transfer.remote_root import fixed_root, resolve_root
from conveyor.transfer.sftp.config import SftpConfig
from conveyor.transfer.sftp.login import Client, Route, SshLogin

if TYPE_CHECKING:
    from conveyor.status import StatusBoard

log = logging.getLogger("conveyor.sftp")

BESIDE_PAUSE = 30.0
"""Seconds after a session failed to open beside busy ones before another is tried that way."""


@dataclass
class Session:
    """One SSH connection and its SFTP session."""

    conn: asyncssh.SSHClientConnection
    sftp: asyncssh.SFTPClient
    client: Client
    keytype: str
    fingerprint: str
    users: int = 0
    broken: bool = False
    posix_rename: bool = field(default=True)
    hops: list[asyncssh.SSHClientConnection] = field(default_factory=list)
    """The jump hosts' connections this one runs through, first hop first (owned by the session)."""
    rtt: float | None = None
    """Seconds one SFTP request took at login (a round trip to the server), None if not measured."""

    @property
    def alive(self) -> bool:
        """False once the connection dropped or an operation left it in doubt."""
        return not self.broken and not self.client.lost

    async def close(self) -> None:
        """Close the SFTP session and the connection, quietly."""
        try:
            self.sftp.exit()
            self.conn.close()
            async with asyncio.timeout(2):
                await self.conn.wait_closed()
        except (Exception, TimeoutError):  # closing a dead connection may fail in many ways
            pass
        for hop in reversed(self.hops):
            try:
                hop.close()
                async with asyncio.timeout(2):
                    await hop.wait_closed()
            except (Exception, TimeoutError):
                pass


def is_connection_error(e: BaseException) -> bool:
    """Errors after which a session cannot be trusted any more (vs an SFTP status reply)."""
    if isinstance(e, asyncssh.SFTPError):
        # No connection: the SFTP session ended (its reader cleaned up) while SSH stayed up.
        return isinstance(e, (asyncssh.SFTPConnectionLost, asyncssh.SFTPNoConnection))
    return isinstance(e, (OSError, TimeoutError, asyncssh.Error, asyncio.CancelledError, EOFError))


class SftpPool:
    """Up to ``max_connections`` SFTP sessions to one server, opened lazily and reused."""

    def __init__(self, name: str, config: SftpConfig, status: StatusBoard | None) -> None:
        self.name = name
        self.cfg = config
        self.status = status
        self.handshakes = 0
        """SSH handshakes completed (tests use it to check sessions are reused)."""
        self._sessions: list[Session] = []
        self._connect_lock = asyncio.Lock()
        self._opening = 0
        self._stray: set[asyncio.Task[Session]] = set()
        self._beside_after = 0.0
        """Loop time before which no session is opened beside busy ones (one failed lately)."""
        self._closing: set[asyncio.Task[None]] = set()
        """Closes of sessions that :meth:`grow` opened for a transfer that had ended meanwhile."""
        """Extra sessions being opened by :meth:`grow`, counted against ``max_connections``."""
        self._logins = [
            SshLogin(
                name,
                hop,
                where=f"jump host {i} {hop.address}",
                key=f"instances.{name}.jump[{i - 1}]",
                timeout=config.timeout,
                keepalive=config.keepalive,
                status=status,
            )
            for i, hop in enumerate(config.jump or [], 1)
        ]
        self._server = SshLogin(
            name,
            config,
            where=config.address,
            key=f"instances.{name}",
            timeout=config.timeout,
            keepalive=config.keepalive,
            status=status,
        )
        self._logins.append(self._server)
        self.hop_lines: list[str] = []
        """What the last connect verified at each hop (proxy, jump hosts, server), for ``check``."""
        self.root: str | None = fixed_root(config.root)
        """The instance root as an absolute server path: known at once when ``root`` is absolute,
        else once the first login has said which folder it lands in."""

    # -- pool --------------------------------------------------------------
    @asynccontextmanager
    async def session(self, share: bool = False) -> AsyncIterator[Session]:
        """A session for one operation; a connection error drops it from the pool.

        ``share``: for a short operation (a stat, a listing), which takes the least busy live
        session rather than opening another: SFTP multiplexes requests, and a login costs both
        sides far more than the operation (flows that poll together would each open one).
        """
        s = await self._acquire(share)
        s.users += 1
        try:
            yield s
        except BaseException as e:
            if is_connection_error(e):
                s.broken = True
            raise
        finally:
            s.users -= 1
            if not s.alive:
                if s in self._sessions:
                    self._sessions.remove(s)
                if s.users == 0:
                    await s.close()

    def _pick(self, share: bool = False) -> Session | None:
        self._sessions = [s for s in self._sessions if s.alive]
        idle = [s for s in self._sessions if s.users == 0]
        if idle:
            return idle[0]
        if self._sessions and (share or len(self._sessions) + self._opening >= self.cfg.max_connections):
            return min(self._sessions, key=lambda s: s.users)
        return None

    async def grow(self, idle: int) -> None:
        """Open sessions at once until ``idle`` are free, within ``max_connections``.

        For a transfer split over several sessions: opened side by side rather than one after
        another (each login is several round trips), and only next to a live session, so the
        instance's up/down state and retrying stay with the ordinary connect. A session that
        fails to open is left out: the transfer shares the sessions it has.
        """
        self._sessions = [s for s in self._sessions if s.alive]
        free = sum(1 for s in self._sessions if s.users == 0)
        room = self.cfg.max_connections - len(self._sessions) - self._opening
        n = min(idle - free, room)
        if n <= 0 or not self._sessions:
            return
        self._opening += n
        logins = [asyncio.ensure_future(self._beside_login()) for _ in range(n)]
        try:
            # Shielded: a login cut short by cancelling would leave its socket open; one that the
            # transfer no longer waits for finishes and is closed.
            opened = await asyncio.shield(asyncio.gather(*logins, return_exceptions=True))
        except asyncio.CancelledError:
            for t in logins:
                if not t.done():
                    self._stray.add(t)
                t.add_done_callback(self._close_unwanted)
            raise
        finally:
            self._opening -= n
        for s in opened:
            if isinstance(s, Session):
                self._sessions.append(s)
            elif not isinstance(s, Exception):
                raise s

    def _open_beside(self) -> None:
        """Start opening one more session in the background (counted against ``max_connections``
        until it is open); one that fails is left out, the work goes on with the sessions there are."""
        self._opening += 1
        t = asyncio.ensure_future(self._beside_login())
        self._stray.add(t)
        t.add_done_callback(self._opened)

    def _opened(self, login: asyncio.Task[Session]) -> None:
        self._opening -= 1
        self._stray.discard(login)
        if login.cancelled():
            return
        if login.exception() is not None:
            # A server that allows fewer connections than max_connections: not asked again at once.
            self._beside_after = asyncio.get_running_loop().time() + BESIDE_PAUSE
        else:
            self._sessions.append(login.result())

    async def _beside_login(self) -> Session:
        """One login beside live sessions (for :meth:`grow` and :meth:`_open_beside`), outside the
        retrying :meth:`connect`: bounded like one of its attempts and counted as a connect
        attempt; a failure is logged and raised, and leaves the instance's up/down state alone."""
        try:
            async with asyncio.timeout(self._login_limit):
                s = await self._connect_once()
        except Exception as e:
            self._attempt(False)
            log.info("sftp %s: an extra session did not open: %s", self.name, e)
            raise
        self._attempt(True)
        return s

    def _close_unwanted(self, login: asyncio.Task[Session]) -> None:
        self._stray.discard(login)
        if login.cancelled() or login.exception() is not None:
            return
        closing = asyncio.ensure_future(login.result().close())
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)

    async def _acquire(self, share: bool = False) -> Session:
        s = self._pick(share)
        if s is not None:
            return s
        if self._sessions:
            # All busy, with room for more: open one beside them and share the least busy now,
            # so that many small operations overlap instead of waiting for logins one by one.
            if asyncio.get_running_loop().time() >= self._beside_after:
                self._open_beside()
            return min(self._sessions, key=lambda s: s.users)
        async with self._connect_lock:
            s = self._pick(share)  # another task may have connected while we waited
            if s is not None:
                return s
            s = await self.connect()
            self._sessions.append(s)
            return s

    async def close(self) -> None:
        """Close every session."""
        sessions, self._sessions = self._sessions, []
        # Side by side: each close waits a round trip for the server, far away that adds up.
        await asyncio.gather(*(s.close() for s in sessions))
        if self._stray:  # logins that a finished transfer left running: let them end, then close them
            with suppress(TimeoutError):
                async with asyncio.timeout(self.cfg.timeout):
                    await asyncio.gather(*self._stray, return_exceptions=True)
            await asyncio.sleep(0)  # their done-callbacks start the closes
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        late, self._sessions = self._sessions, []  # opened in the background meanwhile
        await asyncio.gather(*(s.close() for s in late))

    # -- connecting --------------------------------------------------------
    async def connect(self) -> Session:
        """Open one session, trying up to ``max_connection_attempts`` times on network trouble."""
        attempts = self.cfg.max_connection_attempts
        if self.status is not None and not self._sessions:
            self.status.instance_state(self.name, "connecting")
        tried = 0

        async def once() -> Session:
            nonlocal tried
            tried += 1
            try:
                async with asyncio.timeout(self._login_limit):
                    return await self._connect_once()
            except TimeoutError:
                error = Transient(f"connection to {self.cfg.describe()} timed out", instance=self.name)
            except (OSError, asyncssh.Error) as e:  # e.g. a reset outside the fingerprint negotiation
                error = Transient(f"cannot connect to {self.cfg.address}: {e or type(e).__name__}", instance=self.name)
            except Transient as e:
                error = e
            self._attempt(False)
            log.info("sftp %s: connect attempt %d/%d failed: %s", self.name, tried, attempts, error)
            raise error

        try:
            s = await retrying(once, CONNECT_BACKOFF, attempts=attempts, what="connect")
        except Permanent as e:
            self._attempt(False)
            self._down(e, permanent=True)
            raise
        except Transient as e:
            self._down(e, permanent=False)
            raise
        self._attempt(True)
        if self.status is not None:
            self.status.instance_state(self.name, "up", identity=f"{s.keytype} {s.fingerprint}")
        return s

    @property
    def _login_limit(self) -> float:
        """Seconds one connect may take: a probe, a handshake and a login per hop."""
        return self.cfg.timeout * 3 * len(self._logins)

    def _attempt(self, ok: bool) -> None:
        if self.status is not None:
            self.status.connect_attempt(self.name, ok)

    def _down(self, e: ConveyorError, *, permanent: bool) -> None:
        if self.status is not None and not any(s.alive for s in self._sessions):
            self.status.instance_state(self.name, "down", e, permanent=permanent)

    async def _connect_once(self) -> Session:
        """Log in to every hop in turn (proxy, jump hosts, the server), then start SFTP."""
        cfg = self.cfg
        hops: list[asyncssh.SSHClientConnection] = []
        proxy = cfg.proxy_url()
        route = Route(proxy=proxy, via=f"proxy {proxy}" if proxy else "")
        self.hop_lines = []
        try:
            for login in self._logins:
                error: BaseException | None = None
                try:
                    done = await login.login(route)
                except BaseException as e:
                    error = e
                said = "" if error is None else error.message if isinstance(error, ConveyorError) else str(error)
                if route.proxy is not None and not said.startswith(f"proxy {route.proxy}"):
                    # The proxy carried the connection, unless it is the proxy that said no.
                    self.hop_lines.append(f"proxy {route.proxy}: reached {login.cfg.address} through it")
                if error is not None:
                    failed = (
                        f"proxy {route.proxy}" if route.proxy is not None and not self.hop_lines else login.describe()
                    )
                    self.hop_lines.append(f"{failed}: FAILED (above)")
                    raise error
                self.hop_lines.append(
                    f"{login.describe()}: host key {done.keytype} {done.fingerprint} {login.verified_by()}; logged in"
                )
                if login is self._server:
                    break
                hops.append(done.conn)
                route = Route(tunnel=done.conn, via=login.where)
            self.handshakes += 1
            conn = done.conn
            try:
                sftp = await conn.start_sftp_client()
            except (asyncssh.Error, OSError) as e:
                conn.close()
                raise Transient(f"SFTP subsystem refused on {cfg.describe()}: {e}", instance=self.name) from None
            # One small request, timed: the round trip that the read pipeline's depth follows.
            # Needed anyway when the root is relative to the login folder.
            t0 = asyncio.get_running_loop().time()
            try:
                async with asyncio.timeout(cfg.timeout):
                    home = await sftp.realpath(".")
                rtt: float | None = asyncio.get_running_loop().time() - t0
            except (asyncssh.Error, OSError, TimeoutError) as e:
                if self.root is None:
                    conn.close()
                    raise Transient(
                        f"{cfg.describe()} did not say which folder the login lands in: {e}", instance=self.name
                    ) from None
                rtt = None  # a server that will not say: the default depth
            if self.root is None:
                self.root = resolve_root(home, cfg.root)
        except BaseException:
            for hop in reversed(hops):
                hop.close()
            raise
        log.info("sftp %s: connected to %s (%s)", self.name, cfg.describe(), done.keytype)
        return Session(conn, sftp, done.client, done.keytype, done.fingerprint, hops=hops, rtt=rtt)
