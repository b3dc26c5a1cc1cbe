"""Large FTPS downloads, read on a thread of their own (:mod:`conveyor.transfer.ftp.reader`),
against a server that misbehaves on the data channel (tests/servers/hostile_ftp.py with TLS):
it stalls mid-file, holds back its 1xx reply until the data channel's TLS handshake is done,
never completes that handshake, or cuts the connection without close_notify. Each ends in a
clear Transient error within the instance's timeout, leaves no reading thread behind, and never
passes for a complete file; a later download of the same file completes it."""

from __future__ import annotations

import asyncio
import hashlib
import os
import ssl
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from conveyor.errors import Transient
from tests.backends.ftp import ftp_instance
from tests.harness import DaemonProcess, bodies, wait_for, write_config
from tests.servers.hostile_ftp import hostile_ftp
from tests.servers.pyftpd import Certs
from tests.servers.vsftpd import vsftpd_certs

__all__ = ["hostile_ftp", "vsftpd_certs"]

MIB = 1024 * 1024
SIZE = 6 * MIB
"""Above the size from which an FTPS download is read on a thread."""


def readers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "conveyor-ftp-data"]


@pytest.fixture
def ftps(hostile_ftp: Any, vsftpd_certs: Certs) -> Any:
    """``make(**behaviour)``: a hostile FTPS server (explicit TLS) with one file, big.bin, whose
    instance config trusts the test CA."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(vsftpd_certs.chain_file)

    def make(**kw: Any) -> Any:
        srv = hostile_ftp(tls=ctx, files={"big.bin": (SIZE, os.urandom(SIZE))}, **kw)
        srv.base = {"ca_file": str(vsftpd_certs.ca_file), "streams": 1}
        return srv

    return make


def content(srv: Any) -> bytes:
    data = srv.files["big.bin"][1]
    assert data is not None
    return bytes(data)


async def test_stalled_data_channel_times_out_and_the_retry_completes(ftps: Any, tmp_path: Path) -> None:
    """The server sends 1.5 MiB, then nothing with the connection open: the download ends with
    the timeout (Transient), with what came before the stall kept; no reading thread remains, and
    once the server behaves the download resumes there and completes the file."""
    srv = ftps(stall_after=3 * MIB // 2)
    inst, _, spool = ftp_instance(srv.config(timeout="2s", **srv.base), tmp_path / "spool")
    try:
        f = await inst.stat("big.bin")
        assert f is not None and f.size == SIZE
        w = spool.writer()
        t0 = time.monotonic()
        task = asyncio.ensure_future(inst.download(f, w))
        await wait_for(lambda: srv.file_bytes > 0, 5)
        assert readers(), "read on a thread"
        with pytest.raises(Transient, match=r"instance 'ftp-test', path 'big.bin': timed out after 2s"):
            await task
        assert time.monotonic() - t0 < 6
        assert w.size == 3 * MIB // 2
        await wait_for(lambda: not readers(), 5)
        srv.stall_after = None
        await inst.download(f, w)
        body = w.finish()
        assert body.size == SIZE and await body.digest() == hashlib.sha256(content(srv)).hexdigest()
        body.release()
        await wait_for(lambda: not readers(), 5)
    finally:
        await inst.close()


async def test_reply_after_the_data_handshake_is_no_deadlock(ftps: Any, tmp_path: Path) -> None:
    """A server that sends 150 only once the data channel's TLS is up: the reading thread's
    handshake runs beside the wait for the reply, so neither side waits for the other."""
    srv = ftps(data_tls="reply_after_handshake")
    inst, _, spool = ftp_instance(srv.config(timeout="2s", **srv.base), tmp_path / "spool")
    try:
        f = await inst.stat("big.bin")
        w = spool.writer()
        t0 = time.monotonic()
        await inst.download(f, w)
        assert time.monotonic() - t0 < 2
        body = w.finish()
        assert await body.digest() == hashlib.sha256(content(srv)).hexdigest()
        body.release()
        await wait_for(lambda: not readers(), 5)
    finally:
        await inst.close()


@pytest.mark.parametrize("behaviour", ["no_handshake", "silent"])
async def test_data_handshake_that_never_completes_times_out(ftps: Any, tmp_path: Path, behaviour: str) -> None:
    """The server never answers the data channel's TLS handshake (after its 150, or without
    one): a Transient timeout within about the instance's timeout, and no reading thread left."""
    srv = ftps(data_tls=behaviour)
    inst, _, spool = ftp_instance(srv.config(timeout="2s", **srv.base), tmp_path / "spool")
    try:
        f = await inst.stat("big.bin")
        w = spool.writer()
        t0 = time.monotonic()
        with pytest.raises(Transient, match=r"path 'big.bin': timed out after 2s"):
            await inst.download(f, w)
        took = time.monotonic() - t0
        assert took < 4, f"took {took:.1f}s"
        assert w.size == 0
        await wait_for(lambda: not readers(), 5)
        w.abort()
    finally:
        await inst.close()


async def test_data_channel_cut_without_close_notify_is_not_a_complete_file(ftps: Any, tmp_path: Path) -> None:
    """The server drops the data connection after 2 MiB without TLS's close_notify and replies 226:
    the download fails (Transient) instead of passing a truncated file as complete."""
    srv = ftps(cut_after=2 * MIB)
    inst, _, spool = ftp_instance(srv.config(timeout="2s", **srv.base), tmp_path / "spool")
    try:
        f = await inst.stat("big.bin")
        w = spool.writer()
        with pytest.raises(Transient, match=r"path 'big.bin': size mismatch: read 2097152 bytes, the listing said"):
            await inst.download(f, w)
        assert w.size == 2 * MIB
        await wait_for(lambda: not readers(), 5)
        srv.cut_after = None
        await inst.download(f, w)
        body = w.finish()
        assert await body.digest() == hashlib.sha256(content(srv)).hexdigest()
        body.release()
    finally:
        await inst.close()


async def test_daemon_delivers_a_stalled_file_once_the_server_behaves(ftps: Any, tmp_path: Path) -> None:
    """``conveyor run``: a download stalled mid-file logs the timeout and is retried; once the
    server sends the whole file it is delivered, once and complete (a second delivery would fail
    on the file already there: ``exists: fail``)."""
    srv = ftps(stall_after=MIB)
    out = tmp_path / "out"
    cfg = write_config(
        tmp_path,
        {"stalls": srv.config(timeout="2s", **srv.base)},
        {
            "f-stalls": {
                "source": {"instance": "stalls", "path": "", "poll_interval": "200ms", "min_age": "0s"},
                "target": {"type": "directory", "path": str(out), "filename": "{name}", "exists": "fail"},
            }
        },
    )
    d = DaemonProcess(cfg).start()
    try:
        await wait_for(
            lambda: any(
                r.get("flow") == "f-stalls" and "path 'big.bin': timed out after 2s" in str(r.get("msg"))
                for r in d.logs()
            ),
            30,
        )
        assert bodies(out) == {}
        srv.stall_after = None
        await wait_for(lambda: "big.bin" in bodies(out), 30)
        await asyncio.sleep(1)
        assert d.proc is not None and d.proc.poll() is None, d.text()[-3000:]
    finally:
        d.stop()
    assert bodies(out) == {"big.bin": content(srv)}
    errors = [str(r.get("msg")) for r in d.logs() if r.get("level") in ("error", "warning")]
    assert errors and all("timed out after 2s" in m for m in errors), errors
    assert "Traceback" not in d.text()
