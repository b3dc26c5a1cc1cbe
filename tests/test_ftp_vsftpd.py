"""The ftp connector against Debian's vsftpd (started per test on loopback), FTPS with its default
``require_ssl_reuse=YES``: TLS 1.2 and 1.3, explicit and implicit, a killed session mid-download,
idle 421 closes, and a 1 GiB file."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from pathlib import Path
from typing import Any

import pytest

from conveyor.errors import AuthError, Permanent, Rejected, Transient
from conveyor.payload import Body, SpoolWriter
from conveyor.transfer.ftp.config import parse_tls_fingerprint
from tests.backends.ftp import ftp_instance
from tests.servers.pyftpd import make_certs
from tests.servers.vsftpd import vsftpd_certs, vsftpd_factory

__all__ = ["vsftpd_certs", "vsftpd_factory"]


@pytest.mark.parametrize(
    ("tls", "version", "passive"),
    [
        ("none", None, True),
        ("none", None, False),
        ("explicit", "1.2", True),
        ("explicit", "1.3", True),
        ("explicit", "1.3", False),
        ("implicit", "1.2", True),
        ("implicit", "1.3", True),
    ],
)
async def test_roundtrip(vsftpd_factory: Any, tmp_path: Path, tls: str, version: str | None, passive: bool) -> None:
    srv = vsftpd_factory(tls)
    data = os.urandom(2 * 1024 * 1024 + 3)
    srv.put("in/sub dir/ORD 1.csv", b"a,b\n")
    srv.put("in/big.bin", data)
    over: dict[str, Any] = {"passive": passive}
    if version == "1.2":
        over["tls_max_version"] = "1.2"
    inst, _, spool = ftp_instance(srv.config(**over), tmp_path / "spool")
    try:
        line = await inst.check()
        if tls != "none":
            assert f"TLSv{version}" in line  # and vsftpd accepted the resumed session on every data channel
        files = {f.path: f async for f in inst.list("in", True)}
        assert {p: f.size for p, f in files.items()} == {"in/sub dir/ORD 1.csv": 4, "in/big.bin": len(data)}
        w = spool.writer()
        await inst.download(files["in/big.bin"], w)
        body = w.finish()
        assert await body.digest() == hashlib.sha256(data).hexdigest()
        assert await inst.upload(body, "out/new/big.bin", exists="replace", chmod=0o640)
        body.release()
        assert (srv.root / "out/new/big.bin").read_bytes() == data
        assert (srv.root / "out/new/big.bin").stat().st_mode & 0o777 == 0o640
        exact = await inst.stat("out/new/big.bin")  # SIZE + MDTM: vsftpd has no MLST
        assert exact is not None and exact.size == len(data)
        assert abs(exact.mtime - (srv.root / "out/new/big.bin").stat().st_mtime) < 1.5
        await inst.rename("in/sub dir/ORD 1.csv", "archive/ORD 1.csv")
        await inst.remove("archive/ORD 1.csv")
        await inst.remove("archive/ORD 1.csv")
        assert os.listdir(srv.root / "archive") == []
        assert inst.pool.connects == 1
    finally:
        await inst.close()


async def test_upload_exists_modes(vsftpd_factory: Any, tmp_path: Path) -> None:
    srv = vsftpd_factory("explicit")
    inst, _, _ = ftp_instance(srv.config(), tmp_path / "spool")
    try:
        assert await inst.upload(Body.from_bytes(b"1"), "o/x.txt", exists="fail", chmod=None)
        assert await inst.upload(Body.from_bytes(b"2"), "o/x.txt", exists="replace", chmod=None)
        assert not await inst.upload(Body.from_bytes(b"3"), "o/x.txt", exists="skip", chmod=None)
        with pytest.raises(Rejected, match="already exists"):
            await inst.upload(Body.from_bytes(b"4"), "o/x.txt", exists="fail", chmod=None)
        assert (srv.root / "o/x.txt").read_bytes() == b"2"
        assert os.listdir(srv.root / "o") == ["x.txt"]
    finally:
        await inst.close()


async def test_wrong_password(vsftpd_factory: Any, tmp_path: Path) -> None:
    srv = vsftpd_factory("explicit")
    inst, status, _ = ftp_instance(srv.config(password="not-it"), tmp_path / "spool")
    with pytest.raises(AuthError, match="530"):
        await inst.check()
    assert status.instances["ftp-test"].permanent
    await inst.close()


async def test_untrusted_certificate_and_pinning(vsftpd_factory: Any, tmp_path: Path, vsftpd_certs: Any) -> None:
    srv = vsftpd_factory("explicit")
    other = make_certs(tmp_path / "other")
    inst, _, _ = ftp_instance(srv.config(ca_file=str(other.ca_file)), tmp_path / "spool")
    with pytest.raises(Permanent, match="not trusted"):
        await inst.check()
    await inst.close()
    srv.put("f.txt", b"pinned")
    inst, status, spool = ftp_instance(
        srv.config(ca_file=None, tls_fingerprint=vsftpd_certs.fingerprint), tmp_path / "spool"
    )
    try:
        f = await inst.stat("f.txt")
        # The status page shows the certificate in the form tls_fingerprint takes.
        shown = status.instances["ftp-test"].identity or ""
        assert shown.endswith("sha256:" + parse_tls_fingerprint(vsftpd_certs.fingerprint))
        w = spool.writer()
        await inst.download(f, w)
        assert w.finish().data() == b"pinned"
    finally:
        await inst.close()


class KillingSink(SpoolWriter):
    """Kills every vsftpd session process once ``after`` bytes have arrived: dropped connections
    (in the middle of their parts, for a download over several)."""

    def __init__(self, spool: Any, srv: Any, after: int) -> None:
        super().__init__(spool)
        self._srv, self._after, self.killed = srv, after, False

    def write(self, data: bytes | memoryview) -> None:
        super().write(data)
        self._kill()

    def write_at(self, offset: int, data: bytes | memoryview) -> None:
        super().write_at(offset, data)
        self._kill()

    def _kill(self) -> None:
        if not self.killed and self.size >= self._after:
            self.killed = True
            for pid in self._srv.session_pids():
                os.kill(pid, 9)


@pytest.mark.fault
@pytest.mark.parametrize("tls", ["none", "explicit"])
async def test_resume_after_dropped_session(vsftpd_factory: Any, tmp_path: Path, tls: str) -> None:
    srv = vsftpd_factory(tls)
    data = os.urandom(64 * 1024 * 1024)
    srv.put("big.bin", data)
    inst, _, spool = ftp_instance(srv.config(), tmp_path / "spool")
    try:
        f = await inst.stat("big.bin")
        w = KillingSink(spool, srv, after=8 * 1024 * 1024)
        with pytest.raises(Transient):
            await inst.download(f, w)
        assert w.killed and 0 < w.size < len(data)
        await inst.download(f, w)  # a new connection, REST at w.size
        body = w.finish()
        assert body.size == len(data) and await body.digest() == hashlib.sha256(data).hexdigest()
        body.release()
        assert inst.pool.connects == 2
    finally:
        await inst.close()


async def test_idle_close_421(vsftpd_factory: Any, tmp_path: Path) -> None:
    srv = vsftpd_factory("explicit", idle_timeout=1)
    srv.put("f.txt", b"x")
    inst, status, _ = ftp_instance(srv.config(keepalive="0s"), tmp_path / "spool")
    try:
        assert await inst.stat("f.txt") is not None
        await asyncio.sleep(2.2)  # vsftpd: "421 Timeout." and close
        assert await inst.stat("f.txt") is not None
        assert inst.pool.connects == 2 and status.instances["ftp-test"].last_error is None
    finally:
        await inst.close()


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_one_gib_file(vsftpd_factory: Any, tmp_path: Path) -> None:
    srv = vsftpd_factory("explicit")
    block = os.urandom(1024 * 1024)
    h = hashlib.sha256()
    p = srv.root / "1g.bin"

    def make() -> None:
        with open(p, "wb") as out:
            for i in range(1024):
                chunk = block[i:] + block[:i]
                h.update(chunk)
                out.write(chunk)
        srv.own(p)

    await asyncio.to_thread(make)
    inst, _, spool = ftp_instance(srv.config(), tmp_path / "spool")
    try:
        t0 = time.monotonic()
        f = await inst.stat("1g.bin")
        w = spool.writer()
        await inst.download(f, w)
        body = w.finish()
        took = time.monotonic() - t0
        assert body.size == 1 << 30 and await body.digest() == h.hexdigest()
        assert took < 30, f"1 GiB over FTPS took {took:.1f}s"
        body.release()
    finally:
        await inst.close()
        p.unlink()


@pytest.mark.parametrize("tls", ["none", "explicit"])
async def test_server_disk_full(vsftpd_factory: Any, tmp_path: Path, tls: str) -> None:
    """vsftpd's folder on a 2 MiB tmpfs, a 64 MiB upload (far more than the sockets buffer):
    vsftpd stops the transfer with "451 Failure writing to local file." conveyor reports those
    words (not a dropped connection), removes its partial temp file and uploads the next file
    on the same connection."""
    from tests.servers.ops import small_disk

    srv = vsftpd_factory(tls)
    small = srv.root / "small"
    small.mkdir()
    async with small_disk(small):
        srv.own(small)
        inst, status, _ = ftp_instance(srv.config(), tmp_path / "spool")
        try:
            with pytest.raises(Transient, match="STOR refused: 451 Failure writing to local file"):
                await inst.upload(Body.from_bytes(os.urandom(64 << 20)), "small/big.bin", exists="replace", chmod=None)
            assert os.listdir(small) == [], "the partial temp file was removed"
            assert await inst.upload(Body.from_bytes(b"fits"), "small/a.txt", exists="replace", chmod=None)
            assert (small / "a.txt").read_bytes() == b"fits"
            assert inst.pool.connects == 1, "the control connection survived the refused upload"
            assert status.instances["ftp-test"].state == "up"
        finally:
            await inst.close()


@pytest.mark.parametrize("passive", [True, False])
def test_explicit_tls_data_channels_on_uvloop(vsftpd_factory: Any, tmp_path: Path, passive: bool) -> None:
    """The daemon runs on uvloop when installed: vsftpd must see the control channel's session
    resumed on each data channel there too, for a listing, one download and one in two parts."""
    uvloop = pytest.importorskip("uvloop")
    srv = vsftpd_factory("explicit")
    small, large = os.urandom(3 * 1024 * 1024 + 5), os.urandom(32 * 1024 * 1024 + 7)
    srv.put("in/small.bin", small)
    srv.put("in/large.bin", large)

    async def run() -> None:
        config = srv.config(passive=passive, streams=2, max_connections=2)
        inst, _, spool = ftp_instance(config, tmp_path / "spool")
        try:
            files = {f.path: f async for f in inst.list("in", True)}
            for name, data in (("in/small.bin", small), ("in/large.bin", large)):
                w = spool.writer()
                await inst.download(files[name], w)
                assert w.segmented == (name == "in/large.bin")
                body = w.finish()
                assert await body.digest() == hashlib.sha256(data).hexdigest()
                body.release()
        finally:
            await inst.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(run())
