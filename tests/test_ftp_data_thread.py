"""FTPS downloads read their data channel on a thread of their own (vsftpd, ``require_ssl_reuse=YES``):
TLS decryption leaves the event loop, the data channel still resumes the control channel's
session, and a cancelled download leaves no reading thread behind."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from conveyor.payload import SpoolWriter
from tests.backends.ftp import ftp_instance
from tests.harness import wait_for
from tests.servers.vsftpd import vsftpd_certs, vsftpd_factory

__all__ = ["vsftpd_certs", "vsftpd_factory"]

MIB = 1024 * 1024


def readers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "conveyor-ftp-data"]


@pytest.mark.parametrize("passive", [True, False])
async def test_ftps_decryption_runs_off_the_event_loop(vsftpd_factory: Any, tmp_path: Path, passive: bool) -> None:
    """The event loop's thread spends a small share of the download's CPU: decryption, the bulk
    of it, runs on the reading thread (it was more than half, on the loop, before)."""
    srv = vsftpd_factory("explicit")
    assert "require_ssl_reuse=YES" in (srv.workdir / "vsftpd.conf").read_text()
    data = os.urandom(64 * MIB)
    srv.put("big.bin", data)
    inst, _, spool = ftp_instance(srv.config(passive=passive, streams=1), tmp_path / "spool")
    try:
        f = await inst.stat("big.bin")
        w = spool.writer()
        loop0, all0 = time.thread_time(), time.process_time()
        await inst.download(f, w)
        on_loop, total = time.thread_time() - loop0, time.process_time() - all0
        body = w.finish()
        assert body.size == len(data) and await body.digest() == hashlib.sha256(data).hexdigest()
        body.release()
        assert on_loop < 0.3 * total, f"the event loop used {on_loop:.2f} of {total:.2f} s of CPU"
    finally:
        await inst.close()


class SlowSink(SpoolWriter):
    """A sink whose every write takes a while, as a busy disk would."""

    def write(self, data: bytes | memoryview) -> None:
        time.sleep(0.02)
        super().write(data)


@pytest.mark.parametrize("tls", ["explicit", "implicit"])
async def test_cancelled_download_leaves_no_reading_thread(vsftpd_factory: Any, tmp_path: Path, tls: str) -> None:
    """Cancelling a download mid-way ends its reading thread, and the instance downloads again."""
    srv = vsftpd_factory(tls)
    data = os.urandom(64 * MIB)
    srv.put("big.bin", data)
    inst, _, spool = ftp_instance(srv.config(streams=1), tmp_path / "spool")
    try:
        f = await inst.stat("big.bin")
        w = SlowSink(spool)
        task = asyncio.ensure_future(inst.download(f, w))
        await wait_for(lambda: w.size > 0, 10)
        assert readers()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert 0 < w.size < len(data)
        await wait_for(lambda: not readers(), 5)
        w.abort()
        w = spool.writer()
        await inst.download(f, w)
        body = w.finish()
        assert body.size == len(data) and await body.digest() == hashlib.sha256(data).hexdigest()
        body.release()
        await wait_for(lambda: not readers(), 5)
    finally:
        await inst.close()
