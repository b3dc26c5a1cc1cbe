"""The receiving side of an FTP download's data channel, read by a thread of its own.

asyncio's TLS transport decrypts on the event loop, one 16 KiB record per ``SSLObject.read``
through memory BIOs: for an FTPS download that is most of the loop's work, and it cannot run
beside the spool's hashing and writing threads. Here the connected socket is handed to a thread
that wraps it with :mod:`ssl` (blocking, with the timeout as the socket's) and fills a large
buffer with ``recv_into``; the ssl module releases the GIL while OpenSSL decrypts, so decryption
runs on another core than the event loop. Plain FTP does not take this path (see
``client.THREAD_FROM``).

The thread hands each filled buffer to the download's synchronous ``on_data`` itself (the spool
writer copies it and passes it on to its own threads): the event loop takes no part in the data
path, and a busy loop, or one waiting for its turn on a loaded machine, does not stall it. Its
exceptions (a file longer than listed, :class:`~conveyor.transfer.ftp.client.EnoughData`, a full
spool) end the transfer as on the loop. ``on_data`` is never called once :meth:`DataReader.abort`
has returned, so the caller owns its sink again. A failure on the thread (reset, timeout, TLS
error) comes after the bytes received before it, so a resumed download starts where the data stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import ssl
import threading
import time
from collections.abc import Callable

from conveyor.transfer.ftp.data import settle

FEED = 256 * 1024
"""``on_data`` gets the buffer in slices of this size. Measured on cold runs: with 1 MiB (and 512 KiB)
pieces the spool's writes into the page cache used 1.25 s of CPU per GiB, with 256 KiB ones 0.25 s."""


class DataReader:
    """One download's data channel: a socket read on a thread that feeds ``on_data``; ``done``
    resolves (on the event loop) at the end of the data or with the error that ended it."""

    def __init__(self, on_data: Callable[[memoryview], None] | None, buffer: memoryview, timeout: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._on_data = on_data
        self._view = buffer
        self._timeout = timeout
        self._lock = threading.Lock()
        """Guards :attr:`_sock` and :attr:`_stopped`: the loop shuts the socket down while the thread
        may be closing it (a closed descriptor's number can be reused by another connection)."""
        self._sock: socket.socket | None = None
        self._stopped = False
        self._feeding = threading.Lock()
        """Held by the thread while ``on_data`` runs: :meth:`abort` waits for it."""
        self._fed = True
        """False once :meth:`abort` ran: ``on_data`` is not called again (under :attr:`_feeding`)."""
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
        secure = (
            None
            if tls is None
            else functools.partial(tls.wrap_socket, server_hostname=server_hostname, session=session)
        )
        self._thread = threading.Thread(target=self._run, args=(secure, check), name="conveyor-ftp-data", daemon=True)
        self._thread.start()

    def idle(self) -> float:
        """Seconds since the last byte arrived (or since ``on_data`` last returned)."""
        return time.monotonic() - self._last

    def abort(self) -> None:
        """Stop reading and close the connection (on the event loop). The thread ends by itself;
        a call of ``on_data`` in progress is waited for, and none follows. Never raises."""
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
        with self._feeding:
            self._fed = False
        self._finish(ConnectionAbortedError("data channel closed"))

    # -- on the thread ---------------------------------------------------------
    def _post(self, fn: Callable[..., None], *args: object) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits for this transfer
            self._loop.call_soon_threadsafe(fn, *args)

    def _run(self, secure: Callable[..., ssl.SSLSocket] | None, check: Callable[[ssl.SSLSocket], None]) -> None:
        """``secure``: the context's ``wrap_socket`` with the server's name and the session to resume."""
        try:
            sock = self._sock
            assert sock is not None
            sock.settimeout(self._timeout)
            if secure is not None:
                with self._lock:
                    if self._stopped:
                        return
                    # The handshake outside the lock, on a socket abort() can already shut down.
                    sock = self._sock = secure(sock, do_handshake_on_connect=False)
                assert isinstance(sock, ssl.SSLSocket)
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
        """Fill the buffer and feed it to ``on_data``, to the end of the data; an error comes after
        the bytes before it."""
        view = self._view
        size = len(view)
        while True:
            n = 0
            try:
                while n < size:
                    got = sock.recv_into(view[n:])
                    if not got:
                        break
                    n += got
                    self._last = time.monotonic()
            except BaseException:
                if n:
                    self._feed(n)
                raise
            if n and not self._feed(n):
                return
            if n < size:
                self._post(self._finish, None)
                return

    def _feed(self, n: int) -> bool:
        """``on_data`` with the first ``n`` bytes of the buffer; False once aborted."""
        with self._feeding:
            if not self._fed:
                return False
            if self._on_data is not None:
                for i in range(0, n, FEED):
                    self._on_data(self._view[i : min(n, i + FEED)])
        self._last = time.monotonic()
        return True

    # -- on the event loop -----------------------------------------------------
    def _set_ready(self) -> None:
        settle(self.ready, None)

    def _finish(self, exc: BaseException | None) -> None:
        settle(self.ready, exc)  # the caller may be waiting on the control channel instead
        settle(self.done, exc)
