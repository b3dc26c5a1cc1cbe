"""A delay-line TCP proxy: a long link on loopback, for the WAN benches.

Every chunk read from either side is released to the other side a fixed one-way delay after it
arrived, in order; no bandwidth cap, no loss. 25 ms each way is a 50 ms round trip.

The TCP connections on either side of the line run over loopback and are acknowledged at once,
so the line itself models what bounds one TCP connection over a long link: per connection and
direction, the bytes read from the source count as in flight until their acknowledgement would
be back (one delay after they leave the line towards the receiver, so two delays after they were
read when the receiver keeps up), and reading pauses while the bytes in flight reach
min(cwnd, window). cwnd starts at 10 segments (RFC 6928) and grows by every byte acknowledged
(slow start; without loss it never leaves it) up to the window, which defaults to what this
machine's kernel grants a connection between two of its own sockets (:func:`kernel_window`).
So one connection goes at about window / round trip once its window is open, as over a real link,
and what else bounds a transfer is what the protocol keeps in flight (SSH channel window, SFTP
requests outstanding). The kernel's netem would do the same; this runs where it is missing.

    python bench/delayline.py --listen 2222 --to 127.0.0.1:22 --delay-ms 25
    python bench/delayline.py --listen-host 127.0.0.2 --same-ports 2121,40000,40001 --to 127.0.0.1
    python bench/delayline.py ... --window-kib 0 --no-slow-start    # delay only, windows unbounded

As a module: ``async with DelayLine(host, port, delay=0.025) as d: ... d.port`` in the bench's
own loop, or ``with delay_process(host, port, 25) as port: ...`` to run it in a child process,
so that its CPU is not taken from the client being measured. The child prints the model it runs
(window, initial cwnd) into the bench's output, so that a results file records it.
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
from pathlib import Path

CHUNK = 256 * 1024
"""Bytes read at once from a socket."""
BUFFER = 64 * 1024 * 1024
"""Bytes held in the line per direction before reading pauses when the window is unbounded
(2.5 GB/s at 25 ms: no real cap)."""
MSS = 1448
"""Payload bytes of one TCP segment on a 1500-byte Ethernet link with timestamps."""
INITIAL_CWND = 10 * MSS
"""The initial congestion window of Linux and RFC 6928."""


def _sysctl(name: str) -> list[int]:
    return [int(x) for x in Path("/proc/sys/net/ipv4", name).read_text().split()]


def kernel_window() -> tuple[int, str]:
    """The most a TCP connection between two sockets of this machine keeps in flight, in bytes,
    and how it was found.

    The receiver advertises a share of its receive buffer (autotuned up to ``tcp_rmem`` max): the
    buffer is charged the kernel's whole memory per packet, not only the payload. Linux up to 6.5
    advertised ``1 - 2**-tcp_adv_win_scale`` of it (default 1: a half); later kernels measure the
    payload share of the packets received instead, starting from a half (more once large packets
    arrive): a half is taken. The sender keeps unacknowledged bytes in its send buffer (autotuned
    up to ``tcp_wmem`` max), charged per queued buffer of up to 64 KiB, whose overhead is a few
    per cent: counted whole. With Linux's defaults (32 MiB and 4 MiB) the sender's buffer binds.
    """
    rmem, wmem = _sysctl("tcp_rmem")[2], _sysctl("tcp_wmem")[2]
    try:
        scale = _sysctl("tcp_adv_win_scale")[0]
    except OSError:
        scale = 1
    share = 1 - 2.0**-scale if scale > 0 else 2.0**scale
    receive = int(rmem * share)
    how = f"min(tcp_rmem max {rmem >> 10} KiB x {share:g} advertised, tcp_wmem max {wmem >> 10} KiB)"
    return min(receive, wmem), how


class DelayLine:
    """Forwards ``listen_host``:``listen_port`` (0: a free port, see :attr:`port`) to ``host:port``
    with ``delay`` seconds added each way, each direction of each connection keeping at most
    min(cwnd, ``window``) bytes in flight (``window`` None: the kernel's, 0: unbounded; cwnd
    starts at :data:`INITIAL_CWND` with ``slow_start``, else at the window)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        delay: float,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        window: int | None = None,
        slow_start: bool = True,
    ) -> None:
        self.target = (host, port)
        self.delay = delay
        self.window = kernel_window()[0] if window is None else window
        self.slow_start = slow_start
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
        """One direction: a reader that stamps chunks while the window allows, a writer that
        releases them when due and books each one's acknowledgement a delay later."""
        loop = asyncio.get_running_loop()
        line: collections.deque[tuple[float, bytes]] = collections.deque()
        acks: collections.deque[tuple[float, int]] = collections.deque()  # (due, bytes), in order
        held = 0
        in_flight = 0
        window = self.window or None
        cwnd = INITIAL_CWND if self.slow_start and window else window
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
                if window is None and held <= BUFFER:
                    room.set()
                await w.drain()
                if window is not None:
                    # Acknowledged once it has reached the receiver, a delay after it left the line.
                    acks.append((loop.time() + self.delay, len(data)))
                    room.set()

        async def opening() -> int:
            """Bytes the window lets the reader take now, once some are allowed."""
            nonlocal in_flight, cwnd
            assert window is not None and cwnd is not None
            while True:
                now = loop.time()
                while acks and acks[0][0] <= now:
                    n = acks.popleft()[1]
                    in_flight -= n
                    cwnd = min(window, cwnd + n)
                allowed = min(cwnd, window) - in_flight
                if allowed > 0 or sender.done():
                    return allowed
                if acks:
                    await asyncio.sleep(acks[0][0] - now)
                else:
                    room.clear()
                    await room.wait()

        sender = asyncio.ensure_future(release())
        try:
            while not sender.done():  # the far side closed: stop reading, the error comes below
                size = CHUNK
                if window is not None:
                    size = min(CHUNK, await opening())
                    if size <= 0:
                        break
                data = await r.read(size)
                line.append((loop.time() + self.delay, data))
                held += len(data)
                in_flight += len(data)
                more.set()
                if not data:
                    break
                if window is None and held > BUFFER:
                    room.clear()
                    await room.wait()
            await sender
        finally:
            sender.cancel()


def describe(window: int | None, slow_start: bool) -> str:
    """The model a delay line runs, in one line (``window`` as :class:`DelayLine` takes it)."""
    if window == 0:
        return "delay line: windows unbounded, no slow start (delay only)"
    size, how = kernel_window() if window is None else (window, "set")
    start = f"initial cwnd {INITIAL_CWND} bytes, slow start" if slow_start else "no slow start"
    return f"delay line: window {size >> 10} KiB per connection and direction ({how}), {start}"


@contextlib.contextmanager
def _child(args: list[str], window_kib: int | None, slow_start: bool) -> Iterator[str]:
    """This script as a child process for the ``with`` block; yields its ``listening ...`` line
    and prints the model it runs (:func:`describe`) into the caller's output."""
    if window_kib is not None:
        args = [*args, "--window-kib", str(window_kib)]
    if not slow_start:
        args = [*args, "--no-slow-start"]
    proc = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("listening "):
            raise RuntimeError(f"delay line did not start: {line!r}")
        listening, _, model = line.partition(" | ")
        print(model.strip(), flush=True)
        yield listening
    finally:
        proc.terminate()
        proc.wait(10)


@contextlib.contextmanager
def delay_process(
    host: str, port: int, delay_ms: float, *, window_kib: int | None = None, slow_start: bool = True
) -> Iterator[int]:
    """Run a delay line in a child process for the ``with`` block; yields its listening port.
    ``window_kib``: None for the kernel's window, 0 for none (see :class:`DelayLine`)."""
    args = ["--listen", "0", "--to", f"{host}:{port}", "--delay-ms", str(delay_ms)]
    with _child(args, window_kib, slow_start) as line:
        yield int(line.split()[1])


@contextlib.contextmanager
def delay_ports(
    host: str,
    ports: list[int],
    delay_ms: float,
    listen_host: str,
    *,
    window_kib: int | None = None,
    slow_start: bool = True,
) -> Iterator[None]:
    """Delay lines on ``listen_host`` at each of ``ports``, each to the same port on ``host``, in
    one child process for the ``with`` block: an FTP server's control port and its passive data
    ports, so that data channels cross the same long link as the control connection."""
    spec = ",".join(map(str, ports))
    args = ["--listen-host", listen_host, "--same-ports", spec, "--to", host, "--delay-ms", str(delay_ms)]
    with _child(args, window_kib, slow_start):
        yield


async def _serve(a: argparse.Namespace) -> None:
    delay = a.delay_ms / 1000
    window = None if a.window_kib is None else a.window_kib * 1024
    model = {"delay": delay, "window": window, "slow_start": not a.no_slow_start}
    if a.same_ports:
        for p in map(int, a.same_ports.split(",")):
            await DelayLine(a.to.strip("[]"), p, listen_host=a.listen_host, listen_port=p, **model).start()
        listening = a.same_ports
    else:
        host, _, port = a.to.rpartition(":")
        d = DelayLine(host.strip("[]"), int(port), listen_host=a.listen_host, listen_port=a.listen, **model)
        await d.start()
        listening = str(d.port)
    print(f"listening {listening} | {describe(window, not a.no_slow_start)}, {a.delay_ms:g} ms each way", flush=True)
    await asyncio.Event().wait()


def model_options(ap: argparse.ArgumentParser) -> None:
    """The delay line's model options (``--window-kib``, ``--no-slow-start``), for it and the benches."""
    ap.add_argument(
        "--window-kib",
        type=int,
        help="delay line: bytes in flight per connection and direction, KiB (default: the kernel's; 0: unbounded)",
    )
    ap.add_argument("--no-slow-start", action="store_true", help="delay line: each connection's window open at once")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--listen", type=int, default=0, help="port to listen on (0: any free port)")
    ap.add_argument("--listen-host", default="127.0.0.1", help="address to listen on")
    ap.add_argument("--same-ports", help="P1,P2,...: listen on each of these ports, forward each to the same port")
    ap.add_argument("--to", required=True, help="HOST:PORT to forward to (HOST alone with --same-ports)")
    ap.add_argument("--delay-ms", type=float, default=25.0, help="one-way delay in ms (round trip: twice this)")
    model_options(ap)
    a = ap.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(a))


if __name__ == "__main__":
    main()
