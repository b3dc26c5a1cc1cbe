"""A small asyncio TCP proxy for fault tests: cut every connection mid-stream, or pause traffic.

Usage::

    async with TcpProxy("127.0.0.1", server_port) as proxy:
        config["port"] = proxy.port          # clients connect to the proxy
        ...
        proxy.cut()                          # abort every current connection (both sides)
        proxy.pause(); proxy.resume()        # stop / restart forwarding bytes (connections stay open)
        proxy.cut_after(1_000_000)           # cut once that many more bytes went server -> client
        proxy.cut_after(1_000_000, up=True)  # ... or client -> server

New connections are accepted after a cut, so a client can reconnect; ``refuse = True``
makes the proxy close new connections at once (a server that is down).
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType


class TcpProxy:
    """Forwards ``listen``:<port> (127.0.0.1 unless told) to ``host:port``; see the module docstring."""

    def __init__(self, host: str, port: int, *, chunk: int = 65536, listen: str = "127.0.0.1") -> None:
        self.target = (host, port)
        self.listen = listen
        """The address the proxy listens on."""
        self.port = 0
        self.connections = 0
        """Connections accepted so far."""
        self.bytes_down = 0
        """Bytes forwarded server -> client so far (all connections)."""
        self.bytes_up = 0
        """Bytes forwarded client -> server so far (all connections)."""
        self.refuse = False
        self._chunk = chunk
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._cut_at: tuple[bool, int] | None = None

    async def start(self) -> TcpProxy:
        """Listen on a free loopback port."""
        self._server = await asyncio.start_server(self._handle, self.listen, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        """Stop listening and cut everything."""
        if self._server is not None:
            self._server.close()
        self.cut()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def __aenter__(self) -> TcpProxy:
        return await self.start()

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def cut(self) -> None:
        """Abort every current connection on both sides (a reset, not a clean close)."""
        for w in list(self._writers):
            w.transport.abort()
        self._writers.clear()

    def cut_after(self, nbytes: int, *, up: bool = False) -> None:
        """Cut all connections once ``nbytes`` more bytes have gone server -> client (or client ->
        server with ``up``)."""
        self._cut_at = (up, (self.bytes_up if up else self.bytes_down) + nbytes)

    def pause(self) -> None:
        """Stop forwarding (bytes queue in the kernel; connections stay open)."""
        self._flowing.clear()

    def resume(self) -> None:
        """Forward again after :meth:`pause`."""
        self._flowing.set()

    async def _handle(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.refuse:
            cwriter.transport.abort()
            return
        try:
            sreader, swriter = await asyncio.open_connection(*self.target)
        except OSError:
            cwriter.transport.abort()
            return
        self._writers.update((cwriter, swriter))
        up = asyncio.ensure_future(self._pipe(creader, swriter, down=False))
        down = asyncio.ensure_future(self._pipe(sreader, cwriter, down=True))
        self._tasks.update((up, down))
        try:
            await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (up, down):
                t.cancel()
                self._tasks.discard(t)
            for w in (cwriter, swriter):
                self._writers.discard(w)
                w.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, down: bool) -> None:
        try:
            while data := await reader.read(self._chunk):
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()
                if down:
                    self.bytes_down += len(data)
                else:
                    self.bytes_up += len(data)
                cut = self._cut_at
                if cut is not None and cut[0] != down and (self.bytes_down if down else self.bytes_up) >= cut[1]:
                    self._cut_at = None
                    self.cut()
                    return
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.write_eof()
