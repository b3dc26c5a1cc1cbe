"""A delay-line TCP proxy: a long link on loopback, for the WAN benches.

Every chunk read from either side is released to the other side a fixed one-way delay after it
arrived, in order; nothing else is limited (no bandwidth cap, no loss). 25 ms each way is a
50 ms round trip. What bounds a transfer through it is then what bounds it on a long fat link:
how much the protocol keeps in flight per round trip (SSH channel window, SFTP requests
outstanding, TCP windows). The kernel's netem would do the same; this runs where it is missing.

    python bench/delayline.py --listen 2222 --to 127.0.0.1:22 --delay-ms 25
    python bench/delayline.py --listen-host 127.0.0.2 --same-ports 2121,40000,40001 --to 127.0.0.1

As a module: ``async with DelayLine(host, port, delay=0.025) as d: ... d.port`` in the bench's
own loop, or ``with delay_process(host, port, 25) as port: ...`` to run it in a child process,
so that its CPU is not taken from the client being measured.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import socket
import subprocess
import sys
from collections.abc import Iterator

CHUNK = 256 * 1024
"""Bytes read at once from a socket."""
BUFFER = 64 * 1024 * 1024
"""Bytes held in the line per direction before reading pauses (2.5 GB/s at 25 ms: no real cap)."""


class DelayLine:
    """Forwards ``listen_host``:``listen_port`` (0: a free port, see :attr:`port`) to ``host:port``
    with ``delay`` seconds added each way."""

    def __init__(
        self, host: str, port: int, *, delay: float, listen_host: str = "127.0.0.1", listen_port: int = 0
    ) -> None:
        self.target = (host, port)
        self.delay = delay
        self.listen = (listen_host, listen_port)
        self.port = 0
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> DelayLine:
        """Start listening."""
        self._server = await asyncio.start_server(self._handle, *self.listen)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        """Stop listening and drop every connection."""
        if self._server is not None:
            self._server.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def __aenter__(self) -> DelayLine:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _handle(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            sr, sw = await asyncio.open_connection(*self.target)
        except OSError:
            cw.close()
            return
        for w in (cw, sw):
            sock = w.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pipes = [asyncio.ensure_future(self._pipe(cr, sw)), asyncio.ensure_future(self._pipe(sr, cw))]
        for p in pipes:
            self._tasks.add(p)
            p.add_done_callback(self._tasks.discard)
        try:
            await asyncio.gather(*pipes)
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            for p in pipes:
                p.cancel()
            for w in (cw, sw):
                w.close()

    async def _pipe(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        """One direction: a reader that stamps chunks, a writer that releases them when due."""
        loop = asyncio.get_running_loop()
        line: collections.deque[tuple[float, bytes]] = collections.deque()
        held = 0
        more = asyncio.Event()
        room = asyncio.Event()
        room.set()

        async def release() -> None:
            try:
                await releasing()
            finally:
                room.set()  # a reader waiting for room sees that nothing will be released any more

        async def releasing() -> None:
            nonlocal held
            while True:
                while not line:
                    more.clear()
                    await more.wait()
                due, data = line.popleft()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    if w.can_write_eof():
                        w.write_eof()
                    else:
                        w.close()
                    return
                w.write(data)
                held -= len(data)
                if held <= BUFFER:
                    room.set()
                await w.drain()

        sender = asyncio.ensure_future(release())
        try:
            while not sender.done():  # the far side closed: stop reading, the error comes below
                data = await r.read(CHUNK)
                line.append((loop.time() + self.delay, data))
                held += len(data)
                more.set()
                if not data:
                    break
                if held > BUFFER:
                    room.clear()
                    await room.wait()
            await sender
        finally:
            sender.cancel()


@contextlib.contextmanager
def _child(args: list[str]) -> Iterator[str]:
    """This script as a child process for the ``with`` block; yields its ``listening ...`` line."""
    proc = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("listening "):
            raise RuntimeError(f"delay line did not start: {line!r}")
        yield line
    finally:
        proc.terminate()
        proc.wait(10)


@contextlib.contextmanager
def delay_process(host: str, port: int, delay_ms: float) -> Iterator[int]:
    """Run a delay line in a child process for the ``with`` block; yields its listening port."""
    with _child(["--listen", "0", "--to", f"{host}:{port}", "--delay-ms", str(delay_ms)]) as line:
        yield int(line.split()[1])


@contextlib.contextmanager
def delay_ports(host: str, ports: list[int], delay_ms: float, listen_host: str) -> Iterator[None]:
    """Delay lines on ``listen_host`` at each of ``ports``, each to the same port on ``host``, in
    one child process for the ``with`` block: an FTP server's control port and its passive data
    ports, so that data channels cross the same long link as the control connection."""
    spec = ",".join(map(str, ports))
    with _child(["--listen-host", listen_host, "--same-ports", spec, "--to", host, "--delay-ms", str(delay_ms)]):
        yield


async def _serve(a: argparse.Namespace) -> None:
    delay = a.delay_ms / 1000
    if a.same_ports:
        for p in map(int, a.same_ports.split(",")):
            await DelayLine(a.to.strip("[]"), p, delay=delay, listen_host=a.listen_host, listen_port=p).start()
        print(f"listening {a.same_ports}", flush=True)
    else:
        host, _, port = a.to.rpartition(":")
        d = DelayLine(host.strip("[]"), int(port), delay=delay, listen_host=a.listen_host, listen_port=a.listen)
        await d.start()
        print(f"listening {d.port}", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--listen", type=int, default=0, help="port to listen on (0: any free port)")
    ap.add_argument("--listen-host", default="127.0.0.1", help="address to listen on")
    ap.add_argument("--same-ports", help="P1,P2,...: listen on each of these ports, forward each to the same port")
    ap.add_argument("--to", required=True, help="HOST:PORT to forward to (HOST alone with --same-ports)")
    ap.add_argument("--delay-ms", type=float, default=25.0, help="one-way delay in ms (round trip: twice this)")
    a = ap.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(a))


if __name__ == "__main__":
    main()
