"""The data channel of an FTP transfer on the event loop: an :class:`asyncio.BufferedProtocol` feeding a
synchronous sink (uploads, listings and small downloads; large downloads: :mod:`conveyor.transfer.ftp.reader`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any


def abort_transport(transport: Any) -> None:
    """Close a transport at once unless it is already closing.

    Python 3.11's selector transport raises AttributeError from ``abort()`` once a graceful
    ``close()`` has completed (``_loop`` is gone but ``_conn_lost`` was never counted).
    """
    if transport is None or transport.is_closing():
        return
    with contextlib.suppress(AttributeError):  # an SSL transport's socket transport was already closed
        transport.abort()


class DataProtocol(asyncio.BufferedProtocol):
    """One data channel. Received blocks go to ``on_data`` as they arrive; ``done`` resolves at EOF."""

    def __init__(self, on_data: Callable[[memoryview], None] | None, buffer: memoryview) -> None:
        self._on_data = on_data
        self._view = buffer
        self.transport: Any = None
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.received = 0
        self.last_activity = asyncio.get_running_loop().time()
        self._drain: asyncio.Future[None] | None = None
        self._paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        self.received += nbytes
        self.last_activity = asyncio.get_running_loop().time()
        if self._on_data is None:
            return
        try:
            self._on_data(self._view[:nbytes])
        except BaseException as e:  # the sink failed (spool full): stop this transfer
            self._finish(e)
            abort_transport(self.transport)

    def idle(self) -> float:
        """Seconds since the last byte arrived."""
        return asyncio.get_running_loop().time() - self.last_activity

    def eof_received(self) -> bool:
        self._finish(None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish(exc if exc is not None else None)
        self.resume_writing()

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    async def drain(self) -> None:
        """Wait until the transport's write buffer is below its low-water mark."""
        if self.done.done():
            self.done.result()  # raises if the connection failed
            raise ConnectionResetError("data connection closed by the server")
        if self._paused:
            self._drain = asyncio.get_running_loop().create_future()
            await self._drain

    def _finish(self, exc: BaseException | None) -> None:
        settle(self.done, exc)


def settle(future: asyncio.Future[None], exc: BaseException | None) -> None:
    """Resolve ``future`` with ``exc`` (None: success) unless it is done already.

    The exception is retrieved at once, so a transfer abandoned for another reason logs no warning."""
    if not future.done():
        if exc is None:
            future.set_result(None)
        else:
            future.set_exception(exc)
            future.exception()
