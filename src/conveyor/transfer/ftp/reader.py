"""The receiving side of an FTP data channel, read by a thread of its own.

asyncio's TLS transport decrypts on the event loop, one 16 KiB record per ``SSLObject.read``
through memory BIOs: for an FTPS download that is most of the loop's work, and it cannot run
beside the spool's hashing and writing threads. Here the connected socket is handed to a thread
that wraps it with :mod:`ssl` (blocking, with the timeout as the socket's) and fills large buffers
with ``recv_into``; the ssl module releases the GIL while OpenSSL decrypts, so decryption runs on
another core than the event loop. A plain FTP channel takes the same path: the kernel's copies
then leave the loop too.

Each filled buffer is handed to the event loop (``call_soon_threadsafe``), which gives it to the
download's synchronous ``on_data`` there, as before: the sink, its checks (a file longer than
listed, :class:`~conveyor.transfer.ftp.client.EnoughData`) and their exceptions stay on the loop.
Two buffers alternate, so the thread reads the next one while the loop hands on the last, and it
waits when both are with the loop: memory stays bounded. A failure on the thread (reset, timeout,
TLS error) reaches the loop after the bytes that came before it, so a resumed download starts
where the data stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import socket
import ssl
import threading
import time
from collections.abc import Callable


class DataReader:
    """One download's data channel: a socket read on a thread, its blocks handed to ``on_data`` on
    the event loop; ``done`` resolves at the end of the data (or with the error that ended it)."""

    def __init__(self, on_data: Callable[[memoryview], None] | None, buffer: memoryview, timeout: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._on_data = on_data
        half = len(buffer) // 2
        self._views = (buffer[:half], buffer[half:])
        self._free: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        self._free.put(0)
        self._free.put(1)
        self._timeout = timeout
        self._lock = threading.Lock()
        """Guards :attr:`_sock` and :attr:`_stopped`: the loop shuts the socket down while the thread
        may be closing it (a closed descriptor's number can be reused by another connection)."""
        self._sock: socket.socket | None = None
        self._stopped = False
        self._thread: threading.Thread | None = None
        self._last = time.monotonic()
        self.done: asyncio.Future[None] = self._loop.create_future()
        self.ready: asyncio.Future[None] = self._loop.create_future()
        """Resolves once TLS is up and the server's certificate passed ``check`` (at once for plain FTP)."""

    def attach(self, sock: socket.socket) -> None:
        """Take ownership of the connected data socket: :meth:`abort` closes it from now on."""
        with self._lock:
            if self._stopped:
                sock.close()
                raise ConnectionAbortedError("data channel closed")
            self._sock = sock

    def start(
        self,
        tls: ssl.SSLContext | None,
        session: ssl.SSLSession | None,
        server_hostname: str,
        check: Callable[[ssl.SSLSocket], None],
    ) -> None:
        """Start reading on a new thread; with ``tls``, after a handshake that resumes ``session``
        and a ``check`` of the server's certificate (both on that thread, before any data)."""
        if tls is None:
            self.ready.set_result(None)
        self._thread = threading.Thread(
            target=self._run, args=(tls, session, server_hostname, check), name="conveyor-ftp-data", daemon=True
        )
        self._thread.start()

    def idle(self) -> float:
        """Seconds since the last byte arrived (or since the loop last took a buffer)."""
        return time.monotonic() - self._last

    def abort(self) -> None:
        """Stop reading and close the connection at once; the thread ends by itself. Never raises."""
        with self._lock:
            self._stopped = True
            sock = self._sock
            if sock is not None:
                if self._thread is None:
                    sock.close()
                else:
                    # The thread may be blocked in a read: a shutdown wakes it, and it closes the socket.
                    # socket.socket's own shutdown: SSLSocket.shutdown drops the SSL object under the thread.
                    with contextlib.suppress(OSError):
                        socket.socket.shutdown(sock, socket.SHUT_RDWR)
        self._free.put(None)
        self._finish(ConnectionAbortedError("data channel closed"))

    # -- on the thread ---------------------------------------------------------
    def _post(self, fn: Callable[..., None], *args: object) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits for this transfer
            self._loop.call_soon_threadsafe(fn, *args)

    def _run(
        self,
        tls: ssl.SSLContext | None,
        session: ssl.SSLSession | None,
        server_hostname: str,
        check: Callable[[ssl.SSLSocket], None],
    ) -> None:
        try:
            sock = self._sock
            assert sock is not None
            sock.settimeout(self._timeout)
            if tls is not None:
                with self._lock:
                    if self._stopped:
                        return
                    # The handshake outside the lock, on a socket abort() can already shut down.
                    sock = self._sock = tls.wrap_socket(
                        sock, server_hostname=server_hostname, session=session, do_handshake_on_connect=False
                    )
                sock.do_handshake()
                check(sock)
                self._post(self._set_ready)
            self._read(sock)
        except BaseException as e:
            self._post(self._finish, e)
        finally:
            with self._lock:
                self._stopped = True
                if self._sock is not None:
                    self._sock.close()

    def _read(self, sock: socket.socket) -> None:
        """Fill the free buffers in turn and hand each to the loop; the end of data, or an error
        after the bytes before it."""
        while (turn := self._free.get()) is not None:
            view = self._views[turn]
            size = len(view)
            n = 0
            self._last = time.monotonic()
            try:
                while n < size:
                    got = sock.recv_into(view[n:])
                    if not got:
                        break
                    n += got
                    self._last = time.monotonic()
            except BaseException:
                if n:
                    self._post(self._deliver, turn, n)
                raise
            if n:
                self._post(self._deliver, turn, n)
            if n < size:
                self._post(self._finish, None)
                return

    # -- on the event loop -----------------------------------------------------
    def _set_ready(self) -> None:
        if not self.ready.done():
            self.ready.set_result(None)

    def _deliver(self, turn: int, n: int) -> None:
        if self.done.done():  # stopped: the thread is told to end by abort()
            return
        try:
            if self._on_data is not None:
                self._on_data(self._views[turn][:n])
        except BaseException as e:  # the sink failed or has enough: stop this transfer
            self._finish(e)
            self.abort()
            return
        self._free.put(turn)

    def _finish(self, exc: BaseException | None) -> None:
        if not self.ready.done():
            if exc is None:
                self.ready.set_result(None)
            else:
                self.ready.set_exception(exc)
            self.ready.exception()  # retrieved: the caller may be waiting on the control channel instead
        if not self.done.done():
            if exc is None:
                self.done.set_result(None)
            else:
                self.done.set_exception(exc)
            # Retrieve the exception now so a transfer abandoned for another reason logs no warning.
            self.done.exception()
