"""The ``ftp`` instance: an FTP or FTPS server as a :class:`~conveyor.interfaces.FileSystem`.

The protocol client is :mod:`conveyor.transfer.ftp.client` (why conveyor has its own rather than
aioftp is explained there), TLS session reuse is :mod:`conveyor.transfer.ftp.tls`, listings are
parsed by :mod:`conveyor.transfer.ftp.listing` and connections pooled by
:mod:`conveyor.transfer.ftp.pool`. This module maps FTP operations onto the FileSystem seam and
every failure onto conveyor's error tree. The root may be relative to the folder the login lands
in, so absolute paths are built inside operations, on a logged-in connection (see ``FtpPool.root``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import posixpath
import re
import ssl
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from conveyor.batched import ThreadCalls
from conveyor.errors import (
    AuthError,
    ConveyorError,
    NoSpace,
    NotFound,
    Permanent,
    Rejected,
    Transient,
)
from conveyor.interfaces import Context, RemoteFile, count_entry
from conveyor.netloc import hostport
from conveyor.payload.body import Body
from conveyor.payload.spool import SpoolWriter
from conveyor.transfer.ftp.client import (
    ClosedAfterHandshake,
    EnoughData,
    FtpConnection,
    FtpProtocolError,
    FtpReplyError,
)
from conveyor.transfer.ftp.config import FtpConfig
from conveyor.transfer.ftp.data import DataProtocol
from conveyor.transfer.ftp.listing import Entry, ListingParser, parse_mlsd_line, parse_mlsx_time
from conveyor.transfer.ftp.pool import FtpPool
from conveyor.transfer.ftp.tls import (
    CERTIFICATE_ALERTS,
    client_certificate_hint,
    describe_certificate_alert,
    describe_verify_error,
)
from conveyor.transfer.remote_root import join_root
from conveyor.transfer.segments import SEGMENT_FROM, Part, PartPlan, auto_streams
from conveyor.transfer.tempname import temp_key, temp_name

log = logging.getLogger("conveyor.ftp")

PLAIN_BLOCK = 1024 * 1024
"""Plain upload block, read into one of two reused buffers while the other one is being sent;
it must leave within ``timeout`` (a transfer slower than 100 KiB/s at 10s is stalled)."""

TLS_BLOCK = 2 * 1024 * 1024
"""FTPS upload block, read as :data:`PLAIN_BLOCK` is, and handed to TLS in :data:`TLS_SLICE` pieces."""

TLS_SLICE = 256 * 1024
"""FTPS upload piece: each is copied, encrypted and must leave within ``timeout``."""

MIN_PART = 16 * 1024 * 1024
"""Smallest part of a segmented download: each part costs a few round trips (a new data channel,
REST, RETR, its TLS handshake) and a TCP slow start that must stay small next to its transfer."""

RAMP_RTTS = 12
"""Round trips before a new part goes at full speed: EPSV, REST and RETR (three), then TCP's slow
start from 10 segments to a 4 MiB window (about eight). A part cut for another connection keeps
what it reads meanwhile (see :class:`PartPlan`)."""

_NOT_FOUND_COMMANDS = {"RETR", "SIZE", "MDTM", "MLST", "MLSD", "LIST", "NLST", "CWD", "DELE", "RNFR"}
_FULL = re.compile(r"no space|disk full|quota|insufficient storage|exceeded storage", re.IGNORECASE)
"""Reply texts of a full disk or quota, whatever the code (pyftpdlib: 426 No space left on device)."""


@dataclass
class _Budget:
    """What one poll's listing has used so far, against ``max_listing_entries``/``max_listing_bytes``."""

    entries: int = 0
    bytes: int = 0


class FtpInstance:
    """A live ``ftp`` instance: pooled connections and the FileSystem operations over them."""

    def __init__(self, name: str, config: FtpConfig, ctx: Context) -> None:
        self.name = name
        self.config = config
        self._status = ctx.status
        st = ctx.status.add_instance(name, "ftp", config.describe())
        if config.tls != "none" and not config.tls_verify and config.tls_fingerprint is None:
            warning = "tls_verify is off: the server certificate is not checked"
            if warning not in st.warnings:
                st.warnings.append(warning)
        self.pool = FtpPool(name, config, ctx.status, self._map)
        self._made_dirs: set[str] = set()
        self._list_a = True
        self._no_mfmt_said = False

    # -- errors and paths ----------------------------------------------------
    def _map(self, e: BaseException, path: str, connecting: bool = False) -> ConveyorError:
        """One exception from the client, as conveyor's error tree (with instance and path).

        ``connecting``: raised while connecting and logging in, where a TLS failure means the
        settings do not fit the server; later, a TLS error is a broken connection like any other.
        """
        kw: dict[str, Any] = {"instance": self.name, "path": path or None}
        if isinstance(e, ConveyorError):
            e.instance = e.instance or self.name
            e.path = e.path or kw["path"]
            return e
        if isinstance(e, FtpReplyError):
            code, text = e.reply.code, e.reply.text.splitlines()[0] if e.reply.text else ""
            msg = f"{e.command} refused: {code} {text}" if e.command != "connect" else f"server said {code} {text}"
            if code == 530 or (e.command in ("USER", "PASS") and code // 100 == 5):
                return AuthError(f"login refused for {self.config.describe()}: {code} {text}", **kw)
            if code in (452, 552) or (code // 100 in (4, 5) and _FULL.search(text)):
                return NoSpace(msg, **kw)
            if code // 100 == 4:
                return Transient(msg, **kw)
            if code == 550 and e.command in _NOT_FOUND_COMMANDS:
                return NotFound(msg, **kw)
            if code == 553 and e.command in ("STOR", "RNTO"):
                return Rejected(msg, **kw)
            if code == 522:
                return Permanent(msg + " (the server requires TLS session reuse on data channels)", **kw)
            if code // 100 == 5:
                return Permanent(msg, **kw)
            return Transient(f"unexpected reply: {msg}", **kw)
        if isinstance(e, ssl.SSLCertVerificationError):
            return Permanent(describe_verify_error(e, self.config), **kw)
        if isinstance(e, ssl.SSLError) and e.reason in CERTIFICATE_ALERTS:
            return AuthError(describe_certificate_alert(e.reason, self.config), **kw)
        if isinstance(e, ClosedAfterHandshake):
            # Most likely a refused client certificate, but a close is not proof: retried.
            return Transient(f"{e.args[0]}: {client_certificate_hint(self.config)}", **kw)
        if isinstance(e, (ssl.SSLEOFError, ssl.SSLZeroReturnError)):
            return Transient(f"TLS connection closed: {e.reason or e}", **kw)
        if isinstance(e, ssl.SSLError) and not connecting:
            return Transient(f"TLS connection failed: {e.reason or e}", **kw)
        if isinstance(e, ssl.SSLError):
            hint = " (is this an FTPS port? check tls: explicit or implicit)" if "WRONG_VERSION" in str(e) else ""
            if e.reason == "SSLV3_ALERT_HANDSHAKE_FAILURE":
                # What vsftpd (TLS 1.2) answers when a certificate it requires is missing, and
                # also what any server answers when it shares no TLS version or cipher with us.
                hint = f" ({client_certificate_hint(self.config)}; or it shares no TLS version or cipher with conveyor)"
            return Permanent(f"TLS failed: {e.reason or e}{hint}", **kw)
        if isinstance(e, FtpProtocolError):
            return Transient(f"{hostport(self.config.host, self.config.effective_port)}: {e}", **kw)
        if isinstance(e, TimeoutError):
            proxy = self.config.proxy_url
            via = f" through proxy {proxy}" if proxy is not None else ""
            return Transient(f"timed out after {self.config.timeout:g}s ({self.config.host}{via})", **kw)
        if isinstance(e, OSError):
            return Transient(f"{hostport(self.config.host, self.config.effective_port)}: {e.strerror or e}", **kw)
        if isinstance(e, ValueError):
            return Permanent(str(e), **kw)
        return Transient(f"{type(e).__name__}: {e}", **kw)

    def _abs(self, path: str) -> str:
        """The absolute server path of a path relative to the instance root."""
        if ".." in path.split("/"):
            raise Permanent(f"path {path!r} leaves the instance root", instance=self.name, path=path)
        return posixpath.normpath(join_root(self.pool.root, path))

    # -- Instance -----------------------------------------------------
    async def check(self) -> str:
        """Log in and make sure the root folder exists; a one-line description."""

        async def op(c: FtpConnection) -> str:
            await c.command(f"CWD {self._abs('')}", (2,))
            listing = "MLSD" if "MLST" in c.features else "LIST"
            tls = c.tls_version or "no TLS"
            if c.client_certificate is not None:
                tls += f" with client certificate {c.client_certificate}"
            return f"{self.config.describe()} logged in, {tls}, root {self._abs('')}, {listing}"

        return await self.pool.run(op, "")

    async def resolve(self, path: str) -> str:
        """The absolute server path that ``path`` (relative to the root) stands for.

        Logs in first when the root is relative to the folder the login lands in.
        """

        async def op(c: FtpConnection) -> str:
            return self._abs(path)

        return self._abs(path) if self.pool.root is not None else await self.pool.run(op, path)

    async def close(self) -> None:
        """Log out of every connection."""
        await self.pool.close()

    # -- FileSystem ----------------------------------------------------------
    async def _stat(self, c: FtpConnection, full: str) -> Entry | None:
        if "MLST" in c.features:
            reply = await c.command(f"MLST {full}")
            if reply.code // 100 != 2:
                if reply.code // 100 == 5:
                    return None
                raise FtpReplyError("MLST", reply)
            for line in reply.text.splitlines()[1:]:
                entry = parse_mlsd_line(line.strip())
                if entry is not None:
                    return entry
            return None
        size = await c.command(f"SIZE {full}")
        if size.code // 100 == 5:
            return None  # missing, or a folder
        if size.code != 213:
            raise FtpReplyError("SIZE", size)
        mdtm = await c.command(f"MDTM {full}")
        if mdtm.code // 100 == 5:
            return None
        if mdtm.code != 213:
            raise FtpReplyError("MDTM", mdtm)
        return Entry(posixpath.basename(full), "file", int(size.text.strip()), parse_mlsx_time(mdtm.text))

    async def stat(self, path: str) -> RemoteFile | None:
        """The file at ``path`` via MLST, or SIZE + MDTM (works where listing is forbidden)."""

        async def op(c: FtpConnection) -> RemoteFile | None:
            e = await self._stat(c, self._abs(path))
            return RemoteFile(path, e.size, e.mtime) if e is not None and e.kind == "file" else None

        return await self.pool.run(op, path)

    async def is_dir(self, path: str) -> bool:
        """Whether CWD into ``path`` succeeds."""

        async def op(c: FtpConnection) -> bool:
            return (await c.command(f"CWD {self._abs(path)}")).code // 100 == 2

        return await self.pool.run(op, path)

    async def _listdir(self, c: FtpConnection, folder: str, budget: _Budget) -> list[Entry]:
        # CWD then a bare MLSD/LIST: servers read a LIST argument as options or a glob.
        await c.command(f"CWD {self._abs(folder)}", (2,))
        mlsd = "MLST" in c.features
        parser = ListingParser(mlsd)

        def feed(block: memoryview) -> None:
            # Runs for each received block: a cap stops the transfer (the connection is dropped).
            budget.bytes += len(block)
            if budget.bytes > self.config.max_listing_bytes:
                raise self._too_big(folder, f"more than {self.config.max_listing_bytes} bytes", "max_listing_bytes")
            before = len(parser.entries)
            parser.feed(block)
            budget.entries += len(parser.entries) - before
            if budget.entries > self.config.max_listing_entries:
                raise self._too_big(
                    folder, f"more than {self.config.max_listing_entries} entries", "max_listing_entries"
                )

        try:
            async with asyncio.timeout(self.config.listing_timeout) as deadline:
                if mlsd:
                    await c.transfer("MLSD", on_data=feed)
                else:
                    try:
                        # Unix servers hide dot-files from a bare LIST; -a shows them (names like '..x' are files too).
                        await c.transfer("LIST -a" if c.unix and self._list_a else "LIST", on_data=feed)
                    except FtpReplyError as e:
                        if e.reply.code // 100 != 5 or not (c.unix and self._list_a):
                            raise
                        self._list_a = False
                        parser = ListingParser(mlsd)
                        await c.transfer("LIST", on_data=feed)
        except TimeoutError:
            if not deadline.expired():
                raise
            raise Transient(
                f"listing of {self._where(folder)} took longer than listing_timeout "
                f"({self.config.listing_timeout:g}s); the poll is retried later",
                instance=self.name,
                path=folder or None,
            ) from None
        parser.finish()
        # A name with a line break came back whole (see ListingParser): the source refuses it by
        # name, in a line that names the flow and the file.
        return parser.entries

    @staticmethod
    def _where(folder: str) -> str:
        return "this folder" if folder else "the instance root"

    def _too_big(self, folder: str, what: str, key: str) -> Permanent:
        return Permanent(
            f"listing of {self._where(folder)} stopped at {what} in one poll ({key}); the poll is "
            f"retried later: raise {key}, or have the folder emptied on the server",
            instance=self.name,
            path=folder or None,
        )

    async def list(
        self,
        path: str,
        recursive: bool,
        max_entries: int | None = None,
        descend: Callable[[str], bool] | None = None,
    ) -> AsyncIterator[RemoteFile]:
        """Regular files under ``path``. Each folder's listing is parsed as it arrives, then the
        connection is released before entries are yielded, so a caller may download while iterating.

        One call is one poll: ``max_listing_entries`` and ``max_listing_bytes`` count all of its
        folders together, ``listing_timeout`` bounds each folder's listing; the source's
        ``max_entries`` cuts the poll short instead (:class:`ListingCut`).
        """
        pending = [path.strip("/")]
        budget = _Budget()
        n = 0
        while pending:
            folder = pending.pop()
            entries = await self.pool.run(lambda c, f=folder: self._listdir(c, f, budget), folder)  # type: ignore[misc]
            for e in entries:
                n = count_entry(n, max_entries)
                rel = f"{folder}/{e.name}" if folder else e.name
                if e.kind == "dir":
                    if recursive and (descend is None or descend(rel)):
                        pending.append(rel)
                elif e.kind == "file":
                    yield RemoteFile(rel, e.size, e.mtime)
                elif e.kind == "link":
                    target = await self.stat(rel)  # a link to a file is taken as that file
                    if target is not None:
                        yield target

    async def download(self, f: RemoteFile, sink: SpoolWriter) -> None:
        """RETR into ``sink`` from offset ``sink.size`` (REST), at most the listed size, then check the size.

        As on SFTP, a byte past the listed size means the file grew while being read: Transient,
        with the listed bytes in ``sink``, so it is listed and checked for stability again rather
        than delivered cut short. A resumed download that already has the listed size still asks
        for what follows, to see that nothing does. A large file may be read over several
        connections at once instead (``streams``), each part written at its offset; after a cut,
        only the ranges the sink is missing are fetched again.
        """
        if f.size < 0:
            # An MLSD line without a size fact: nothing to hold the server to, nor to check against.
            raise Permanent(
                "the server's listing gives no size for this file; it is not downloaded",
                instance=self.name,
                path=f.path,
            )
        if sink.segmented or (sink.size == 0 and f.size >= 2 * MIN_PART and await self._streams(f.size) > 1):
            await self._download_parts(f, sink)
            return
        # The sink accepts any buffer; handing it the receive buffer's view avoids a copy.
        write = cast(Any, sink.write)

        async def op(c: FtpConnection) -> None:
            start = sink.size
            if start > f.size:
                raise self._grew(f)
            left = f.size - start

            def take(block: memoryview) -> None:
                nonlocal left
                if len(block) > left:
                    if left:
                        write(block[:left])
                        left = 0
                    raise self._grew(f)  # the transfer stops and the connection is dropped
                left -= len(block)
                write(block)

            await c.transfer(f"RETR {self._abs(f.path)}", on_data=take, rest=start, size=left)

        await self.pool.run(op, f.path)
        if sink.size != f.size:
            raise Transient(
                f"size mismatch: read {sink.size} bytes, the listing said {f.size}", instance=self.name, path=f.path
            )

    async def _streams(self, size: int) -> int:
        """How many connections read a file of ``size`` bytes: ``streams``, or chosen by size and
        by the round trip a login measured (logging in first if no connection is pooled)."""
        cap = self.config.max_connections
        if self.config.streams is not None:
            return min(self.config.streams, cap)
        if size < SEGMENT_FROM:
            return 1
        return auto_streams(size, await self._rtt(), cap)

    async def _rtt(self) -> float | None:
        """The round trip a login measured (logging in first if no connection is pooled)."""

        async def rtt(c: FtpConnection) -> float | None:
            return c.rtt

        return await self.pool.run(rtt, "")

    async def _download_parts(self, f: RemoteFile, sink: SpoolWriter) -> None:
        """The ranges of ``f`` the sink is missing, over up to ``streams`` connections at once.

        As lftp's ``pget``: one part per connection, read with REST at its start and a RETR cut
        at its end (see :class:`EnoughData`), and a connection done early takes the back of the
        part with the most to give (:class:`PartPlan`). Not SFTP's many small parts in file order, although
        the spool can hash only as far as the file is complete from the start (the rest is hashed
        at the end, from the page cache): each FTP part is a new data connection, whose TCP slow
        start at 50 ms costs more than the hashing (measured: docs/performance-notes.md).
        """
        sink.positional(f.size)
        n = await self._streams(f.size)
        ramp = RAMP_RTTS * (await self._rtt() or 0.0)
        plan = PartPlan(sink.missing(f.size), n, f.size, min_part=MIN_PART, ramp=ramp)
        path = self._abs(f.path)

        async def op(c: FtpConnection) -> None:
            while (part := plan.take()) is not None:
                try:
                    await self._read_part(c, path, f, sink, part)
                finally:
                    plan.done(part)

        tasks = [asyncio.ensure_future(self.pool.run(op, f.path)) for _ in range(max(1, min(n, len(plan))))]
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _read_part(self, c: FtpConnection, path: str, f: RemoteFile, sink: SpoolWriter, part: Part) -> None:
        """The bytes of ``part`` into the sink at their offsets, up to its end as it is when they
        arrive (another connection may take its back half); the part that ends the file reads on
        to the server's end of file, to see that nothing follows."""
        write_at = cast(Any, sink.write_at)  # copies what it keeps: the receive buffer is reused

        def take(block: memoryview) -> None:
            pos, end = part.pos, part.end
            if pos + len(block) > end:
                if pos < end:
                    write_at(pos, block[: end - pos])
                    part.pos = end
                if part.last:
                    raise self._grew(f)  # the transfer stops and the connection is dropped
                raise EnoughData
            write_at(pos, block)
            part.pos = pos + len(block)
            if part.pos == end and not part.last:
                raise EnoughData

        await c.transfer(f"RETR {path}", on_data=take, rest=part.start)
        if part.pos != part.end:
            raise Transient(
                f"file changed while being read: the server ended it at {part.pos} bytes, listed {f.size}",
                instance=self.name,
                path=f.path,
            )

    def _grew(self, f: RemoteFile) -> Transient:
        return Transient(
            f"file changed while being read: it has more than the listed {f.size} bytes",
            instance=self.name,
            path=f.path,
        )

    async def _mkdirs(self, c: FtpConnection, folder: str) -> None:
        if folder in self._made_dirs or folder == "/":
            return
        if (await c.command(f"CWD {folder}")).code // 100 != 2:
            parts = folder.strip("/").split("/")
            mkd = None
            for i in range(1, len(parts) + 1):
                mkd = await c.command("MKD /" + "/".join(parts[:i]))  # an existing level answers 550: fine
            if (await c.command(f"CWD {folder}")).code // 100 != 2:
                why = f": {mkd.code} {mkd.text}" if mkd is not None else ""
                raise Permanent(f"cannot create folder {folder}{why}", instance=self.name, path=folder)
        self._made_dirs.add(folder)

    async def _send_body(self, body: Body, proto: DataProtocol) -> None:
        t = self.config.timeout
        transport = proto.transport
        if body.in_memory:
            transport.write(body.data())
        else:
            assert body.path is not None
            await self._send_file(body.path, proto, tls=self.config.tls != "none")
        async with asyncio.timeout(t):
            await proto.drain()
        transport.close()  # EOF (and TLS close_notify): the server answers 226 once it has it all

    async def _send_file(self, path: Path, proto: DataProtocol, tls: bool) -> None:
        """Send a file: read (in a thread) into two reused buffers in turn, one block ahead of the send.

        Plain FTP: not ``loop.sendfile``: it hands the receiver page-cache pages no CPU touched
        lately, and the receiver sets the pace; read + send gives it cache-warm buffers, as curl does.
        The write buffer limit is zero for plain uploads (see ``FtpConnection.transfer``), so a buffer
        is refilled only once all of it was sent, whether or not the transport copied it.

        FTPS: each :data:`TLS_SLICE` is copied (asyncio's TLS transport may keep a reference to what it
        has not encrypted yet) and written with a 1 MiB write buffer limit; reused buffers avoid the
        page faults of allocating big ones per read. Measurements: docs/performance-notes.md.
        """
        t = self.config.timeout
        transport = proto.transport
        size = TLS_BLOCK if tls else PLAIN_BLOCK
        buffers = (bytearray(size), bytearray(size))
        fh = open(path, "rb", buffering=0)  # noqa: ASYNC230, SIM115 (reads go through a thread; closed below)
        calls = ThreadCalls()
        try:
            turn = 0
            ahead = calls.start(fh.readinto, buffers[turn])
            while n := await asyncio.shield(ahead):  # a cancelled wait leaves the read running
                block = memoryview(buffers[turn])[:n]
                turn ^= 1
                ahead = calls.start(fh.readinto, buffers[turn])
                step = TLS_SLICE if tls else n
                for i in range(0, n, step):
                    piece = block[i : i + step]
                    transport.write(bytes(piece) if tls else piece)
                    async with asyncio.timeout(t):
                        await proto.drain()
        finally:
            calls.after(fh.close)  # the thread may still be reading: closed once it is done

    async def _rename(self, c: FtpConnection, src: str, dst: str, replace: bool) -> None:
        await c.command(f"RNFR {src}", (3,))
        try:
            await c.command(f"RNTO {dst}", (2,))
        except FtpReplyError as e:
            if not replace or e.reply.code // 100 != 5:
                raise
            # Some servers (IIS, FileZilla) refuse to rename over an existing file.
            await c.command(f"DELE {dst}")
            await c.command(f"RNFR {src}", (3,))
            await c.command(f"RNTO {dst}", (2,))

    async def upload(
        self, body: Body, path: str, *, exists: str, chmod: int | None, mtime: float | None = None
    ) -> bool:
        """STOR under a temporary name in the target folder, then RNFR/RNTO into place."""
        key = await temp_key(body)

        async def op(c: FtpConnection) -> bool:
            full = self._abs(path)
            folder, name = posixpath.split(full)
            if exists != "replace" and await self._stat(c, full) is not None:
                if exists == "fail":
                    raise Rejected(f"{full} already exists", instance=self.name, path=path)
                return False
            await self._mkdirs(c, folder)
            # The same temp name for every attempt at this body: a STOR cut by a server killed
            # mid-file (tests/test_restarts.py) or by our own crash left a partial file under it,
            # and this STOR replaces it.
            tmp = posixpath.join(folder, temp_name(name, key))
            try:
                await c.transfer(f"STOR {tmp}", send=lambda proto: self._send_body(body, proto))
                if chmod is not None:
                    reply = await c.command(f"SITE CHMOD {chmod:o} {tmp}")
                    if reply.code // 100 != 2:
                        log.warning(
                            "instance '%s': SITE CHMOD refused for %s: %d %s", self.name, path, reply.code, reply.text
                        )
                if mtime is not None:
                    await self._set_mtime(c, tmp, mtime)
                await self._rename(c, tmp, full, replace=exists == "replace")
            except BaseException:
                self._made_dirs.discard(folder)
                if not c.broken:
                    with contextlib.suppress(Exception):  # best effort; the original error matters
                        await c.command(f"DELE {tmp}")
                raise
            return True

        return await self.pool.run(op, path)

    async def _set_mtime(self, c: FtpConnection, tmp: str, mtime: float) -> None:
        """MFMT where the server lists it in FEAT; else say once that times are not kept."""
        if "MFMT" not in c.features:
            if not self._no_mfmt_said:
                self._no_mfmt_said = True
                log.warning(
                    "instance '%s': the server does not offer MFMT; preserve_mtime cannot set "
                    "modification times there (files keep the upload time)",
                    self.name,
                )
            return
        stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(mtime))
        reply = await c.command(f"MFMT {stamp} {tmp}")
        if reply.code // 100 != 2:
            raise FtpReplyError("MFMT", reply)

    async def remove(self, path: str) -> None:
        """DELE; a file already gone is fine."""

        async def op(c: FtpConnection) -> None:
            reply = await c.command(f"DELE {self._abs(path)}")
            if reply.code // 100 != 2 and (reply.code // 100 != 5 or await self._stat(c, self._abs(path))):
                raise FtpReplyError("DELE", reply)

        await self.pool.run(op, path)

    async def rename(self, src: str, dst: str) -> None:
        """RNFR/RNTO, creating the destination folder and replacing what is there."""

        async def op(c: FtpConnection) -> None:
            full = self._abs(dst)
            await self._mkdirs(c, posixpath.dirname(full))
            await self._rename(c, self._abs(src), full, replace=True)

        await self.pool.run(op, src)
