"""Pooled FTP control connections for one instance: reuse across polls, a cap, NOOP keepalive,
quiet replacement of connections the server closed while idle (421), and status reporting."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from conveyor.errors import ConveyorError, Permanent
from conveyor.status import StatusBoard
from conveyor.transfer.ftp.client import FtpConnection, Stale
from conveyor.transfer.ftp.config import FtpConfig
from conveyor.transfer.ftp.tls import SessionReusingContext, make_context
from conveyor.transfer.remote_root import fixed_root, resolve_root

log = logging.getLogger("conveyor.ftp")
T = TypeVar("T")


class FtpPool:
    """At most ``max_connections`` logged-in connections; idle ones are kept for the next operation."""

    def __init__(
        self,
        name: str,
        cfg: FtpConfig,
        status: StatusBoard,
        map_error: Callable[[BaseException, str, bool], ConveyorError],
    ) -> None:
        self.name = name
        self.cfg = cfg
        self._status = status
        self._map = map_error
        self._idle: list[FtpConnection] = []
        self._sem = asyncio.Semaphore(cfg.max_connections)
        self._tls: SessionReusingContext | None = None
        self._keepalive: asyncio.Task[None] | None = None
        self.root: str | None = fixed_root(cfg.root)
        """The instance root as an absolute server path: known at once when ``root`` is absolute,
        else once the first login has said (PWD) which folder it lands in."""
        self.connects = 0
        """Connections opened so far (tests use it to see reuse)."""

    def _tls_context(self) -> SessionReusingContext | None:
        if self.cfg.tls == "none":
            return None
        if self._tls is None:
            self._tls = make_context(self.cfg)
        return self._tls

    async def _connect(self) -> FtpConnection:
        st = self._status.instances.get(self.name)
        if st is None or st.state != "up":
            self._status.instance_state(self.name, "connecting")
        conn: FtpConnection | None = None
        try:
            conn = FtpConnection(self.cfg, self._tls_context())
            pw = self.cfg.password.get_secret_value() if self.cfg.password is not None else "anonymous@"
            await conn.connect(pw)
        except Exception as e:
            if conn is not None:
                conn.abort()
            err = self._map(e, "", True)
            self._status.connect_attempt(self.name, False)
            self._status.instance_state(self.name, "down", err, permanent=isinstance(err, Permanent))
            raise err from None
        except BaseException:
            if conn is not None:
                conn.abort()
            raise
        self.connects += 1
        self._status.connect_attempt(self.name, True)
        self._status.instance_state(self.name, "up", identity=conn.certificate)
        if self.cfg.tls != "none" and not self.cfg.tls_verify and self.cfg.tls_fingerprint is None:
            log.warning(
                "instance '%s': tls_verify is off, the certificate of %s is not checked", self.name, self.cfg.host
            )
        else:
            log.debug(
                "instance '%s': connected to %s (%s)", self.name, self.cfg.describe(), conn.tls_version or "plain"
            )
        if self.root is None:
            self.root = resolve_root(conn.home, self.cfg.root)
        if self.cfg.keepalive > 0 and self._keepalive is None:
            self._keepalive = asyncio.get_running_loop().create_task(self._keepalive_loop())
        return conn

    def _take_idle(self) -> FtpConnection | None:
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed:
                conn.reused = True
                return conn
            conn.abort()
        return None

    async def run(self, op: Callable[[FtpConnection], Awaitable[T]], path: str) -> T:
        """Run ``op`` on a pooled connection; errors come back mapped to conveyor's error tree.

        A pooled connection that the server closed while idle (421 or EOF on its first reply) is
        replaced once, quietly: nothing had been done on it yet.
        """
        fresh = False
        while True:
            async with self._sem:
                conn = None if fresh else self._take_idle()
                if conn is None:
                    conn = await self._connect()
                try:
                    result = await op(conn)
                except Stale as e:
                    conn.abort()
                    log.debug(
                        "instance '%s': idle connection was closed by the server (%s); reconnecting", self.name, e
                    )
                    if fresh:
                        raise self._map(ConnectionResetError(str(e)), path, False) from None
                    self._drop_idle()
                    fresh = True
                    continue
                except Exception as e:
                    self._release(conn)
                    raise self._map(e, path, False) from None
                except BaseException:
                    conn.abort()
                    raise
                self._release(conn)
                return result

    def _release(self, conn: FtpConnection) -> None:
        conn.reused = False
        if conn.broken or conn.closed:
            conn.abort()
        else:
            conn.last_used = asyncio.get_running_loop().time()
            self._idle.append(conn)

    def _drop_idle(self) -> None:
        # The server timed one idle connection out: the others are likely gone too.
        for c in self._idle:
            c.abort()
        self._idle.clear()

    async def _keepalive_loop(self) -> None:
        every = self.cfg.keepalive
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(max(every / 2, 0.05))
            for conn in list(self._idle):
                if loop.time() - conn.last_used < every:
                    continue
                async with self._sem:
                    if conn not in self._idle:
                        continue
                    self._idle.remove(conn)
                    try:
                        await conn.command("NOOP", (2,))
                    except Exception as e:
                        log.debug("instance '%s': keepalive NOOP failed (%s); dropping the connection", self.name, e)
                        conn.abort()
                    else:
                        self._release(conn)

    async def close(self) -> None:
        """Stop the keepalive and log out of every idle connection."""
        if self._keepalive is not None:
            self._keepalive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keepalive
            self._keepalive = None
        idle, self._idle = self._idle, []
        await asyncio.gather(*(c.quit() for c in idle), return_exceptions=True)
