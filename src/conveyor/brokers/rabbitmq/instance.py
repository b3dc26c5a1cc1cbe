"""The ``rabbitmq`` instance: one AMQP connection (aio-pika) shared by the flows' channels.

Reconnection is deliberately *not* aio-pika's ``connect_robust``: conveyor's supervisor owns
every retry and backoff, and a robust connection would silently re-create consumers behind
its back (and redeliver into a flow that already gave up on the old channel). So the
connection here is plain: the first connect fails fast with a clear error (wrong password →
:class:`AuthError`, missing vhost → :class:`NotFound`); a connection lost later makes the
sources' ``run`` raise :class:`Transient` and targets' ``deliver`` raise :class:`Transient`,
and the next call connects again.

Errors from aio-pika/aiormq are mapped once, in :mod:`conveyor.brokers.rabbitmq.errors`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from typing import TYPE_CHECKING, Any

import aio_pika
import aiormq.exceptions as amqp_errors
from aio_pika.abc import AbstractChannel, AbstractConnection
from yarl import URL

from conveyor.brokers.rabbitmq.config import RabbitConfig, RabbitSourceConfig, RabbitTargetConfig
from conveyor.brokers.rabbitmq.errors import map_error
from conveyor.brokers.rabbitmq.source import RabbitSource
from conveyor.brokers.rabbitmq.target import RabbitTarget
from conveyor.errors import ConveyorError, Permanent, Transient

if TYPE_CHECKING:
    from conveyor.config.base import SourceConfig
    from conveyor.interfaces import Context

log = logging.getLogger("conveyor.rabbitmq")


class _ClosedOnFailure(aio_pika.Connection):
    """An aio-pika connection that marks itself closed when its first connect fails.

    ``aio_pika.connect`` drops a connection whose connect failed without closing it; its
    ``__del__`` then creates a ``close()`` coroutine, and when the garbage collector runs it on
    another thread (the state store's, a file I/O worker's) there is no loop to run it on: Python
    prints "coroutine 'Connection.close' was never awaited" to stderr, outside the log format.
    """

    async def connect(self, timeout: Any = None) -> None:  # noqa: ASYNC109 (aio-pika's signature)
        try:
            await super().connect(timeout)
        except BaseException:
            # No transport exists yet, so close() completes without suspending, even when cancelled.
            await self.close()
            raise


def _alive(conn: AbstractConnection) -> bool:
    # aio-pika's plain Connection.is_closed only turns true on close(); a dropped socket shows in aiormq's.
    t = conn.transport
    return t is not None and not t.connection.is_closed and not conn.is_closed


class RabbitInstance:
    """A live ``rabbitmq`` instance: lazily connects, shares one connection, makes sources and targets."""

    def __init__(self, name: str, config: RabbitConfig, ctx: Context) -> None:
        self.name = name
        self.config = config
        self.ctx = ctx
        self.address = config.describe()
        self._conn: AbstractConnection | None = None
        self._lock = asyncio.Lock()
        self._closing = False
        ctx.status.add_instance(name, "rabbitmq", self.address)

    # -- connection --------------------------------------------------------------
    def _url(self) -> URL:
        cfg = self.config
        query = {"heartbeat": str(max(0, round(cfg.heartbeat)))}
        if cfg.url is not None:
            url = URL(cfg.url.get_secret_value())
            if cfg.tls and url.scheme == "amqp":
                url = url.with_scheme("amqps")
            return url.update_query(query)
        host, port, user, vhost = cfg.address()
        return URL.build(
            scheme="amqps" if cfg.use_tls else "amqp",
            host=host,
            port=port,
            user=user,
            password=cfg.password.get_secret_value() if cfg.password is not None else "guest",
            path="/" + vhost,
            query=query,
        )

    def _ssl_context(self) -> ssl.SSLContext | None:
        cfg = self.config
        if not cfg.use_tls:
            return None
        ctx = ssl.create_default_context(cafile=str(cfg.ca_file) if cfg.ca_file else None)
        if cfg.cert_file is not None and cfg.key_file is not None:
            ctx.load_cert_chain(str(cfg.cert_file), str(cfg.key_file))
        return ctx

    async def connection(self) -> AbstractConnection:
        """The shared connection, connecting first if there is none (or it was lost)."""
        conn = self._conn
        if conn is not None and _alive(conn):
            return conn
        async with self._lock:
            conn = self._conn
            if conn is not None and _alive(conn):
                return conn
            if self._closing:
                raise Transient("instance is shutting down", instance=self.name)
            return await self._connect()

    async def _connect(self) -> AbstractConnection:
        status = self.ctx.status
        status.instance_state(self.name, "connecting")
        cfg = self.config
        try:
            ssl_context = self._ssl_context()
            async with asyncio.timeout(cfg.timeout):
                conn = await aio_pika.connect(
                    self._url(),
                    timeout=cfg.timeout,
                    ssl_context=ssl_context,
                    connection_class=_ClosedOnFailure,
                    client_properties={"connection_name": cfg.connection_name or f"conveyor {self.name}"},
                )
        except (OSError, ValueError) as e:
            if isinstance(e, (ssl.SSLError, FileNotFoundError)) and not isinstance(e, ssl.SSLCertVerificationError):
                err: ConveyorError = Permanent(f"TLS setup failed: {e}", instance=self.name)
            else:
                err = map_error(e, instance=self.name, address=self.address, connecting=True)
            self._failed(err)
            raise err from None
        except Exception as e:
            err = map_error(e, instance=self.name, address=self.address, connecting=True)
            self._failed(err)
            raise err from None
        conn.close_callbacks.add(self._on_close)
        self._conn = conn
        status.instance_state(self.name, "up")
        status.connect_attempt(self.name, True)
        log.info("connected to %s", self.address)
        return conn

    def _failed(self, err: ConveyorError) -> None:
        self.ctx.status.instance_state(self.name, "down", err, permanent=isinstance(err, Permanent))
        self.ctx.status.connect_attempt(self.name, False)
        log.warning("cannot connect to %s: %s", self.address, err.message)

    def _on_close(self, conn: Any, exc: BaseException | None) -> None:
        if conn is not self._conn or self._closing:
            return
        self._conn = None
        why = f"connection lost: {exc!r}" if exc is not None else "connection closed"
        log.warning("%s: %s", self.address, why)
        self.ctx.status.instance_state(self.name, "down", why)

    async def channel(self, *, confirms: bool, path: str | None = None) -> AbstractChannel:
        """A new channel on the shared connection (errors mapped)."""
        conn = await self.connection()
        try:
            async with asyncio.timeout(self.config.timeout):
                ch = conn.channel(publisher_confirms=confirms)
                await ch.initialize()
            return ch
        except Exception as e:
            raise map_error(e, instance=self.name, address=self.address, path=path) from None

    async def passive_declare(self, kind: str, name: str) -> Any:
        """Ask whether a ``queue`` or ``exchange`` exists, changing nothing (a passive declare, on a
        channel of its own since a 404 closes it): the queue's declare result (message and consumer
        counts), True for an exchange, or None when there is no such thing."""
        ch = await self.channel(confirms=False, path=name)
        try:
            async with asyncio.timeout(self.config.timeout):
                if kind == "queue":
                    return (await ch.declare_queue(name, passive=True)).declaration_result
                await ch.declare_exchange(name, passive=True)
                return True
        except amqp_errors.ChannelNotFoundEntity:
            return None
        except Exception as e:
            raise map_error(e, instance=self.name, address=self.address, path=name) from None
        finally:
            if not ch.is_closed:
                with contextlib.suppress(Exception):
                    await ch.close()

    # -- Instance / BrokerInstance -----------------------------------------
    async def check(self) -> str:
        """Connect, open a channel, close it; the address logged in to."""
        ch = await self.channel(confirms=False)
        await ch.close()
        return self.address

    def source(self, flow: str, config: SourceConfig) -> RabbitSource:
        """A consumer of ``config.queue`` for one flow."""
        assert isinstance(config, RabbitSourceConfig)
        return RabbitSource(self, flow, config)

    def target(self, flow: str, config: Any) -> RabbitTarget:
        """A publisher (with confirms) for one flow."""
        assert isinstance(config, RabbitTargetConfig)
        return RabbitTarget(self, flow, config)

    async def close(self) -> None:
        """Close the connection; the broker requeues every message not yet acked."""
        self._closing = True
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed:
            try:
                await asyncio.wait_for(conn.close(), self.config.timeout)
            except Exception as e:
                log.debug("closing %s: %r", self.address, e)
