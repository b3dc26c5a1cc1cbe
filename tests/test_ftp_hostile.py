"""The ftp connector against a server that misbehaves on purpose (tests/servers/hostile_ftp.py):
endless and trickling listings, endless multi-line replies, files longer than listed or without
end, and PASV replies that point the data channel at another host. Each is stopped by a limit,
with an error naming the instance and folder or file; the next operation works."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from conveyor.errors import Permanent, Transient
from conveyor.interfaces import RemoteFile
from conveyor.payload import Body
from tests.backends.ftp import ftp_instance
from tests.harness import DaemonProcess, bodies, wait_for, write_config
from tests.servers.hostile_ftp import GIVE_UP, hostile_ftp

__all__ = ["hostile_ftp"]


async def listing(inst: Any, path: str = "in") -> list[str]:
    async with asyncio.timeout(30):
        return [f.path async for f in inst.list(path, True)]


# -- listings --------------------------------------------------------------
@pytest.mark.parametrize("mlsd", [True, False], ids=["MLSD", "LIST"])
async def test_endless_listing_stops_at_the_entry_cap(hostile_ftp: Any, tmp_path: Path, mlsd: bool) -> None:
    srv = hostile_ftp(listing="endless", mlsd=mlsd, files={"a.csv": (3, b"abc")})
    inst, _, _ = ftp_instance(srv.config(max_listing_entries=5000), tmp_path / "spool")
    try:
        with pytest.raises(Permanent) as e:
            await listing(inst)
        msg = str(e.value)
        assert msg.startswith(
            "instance 'ftp-test', path 'in': listing of this folder stopped at more than "
            "5000 entries in one poll (max_listing_entries)"
        ), msg
        assert srv.listing_bytes < GIVE_UP
        # The connection that carried it was dropped; the instance goes on working.
        assert (await inst.stat("a.csv")) is not None
        assert inst.pool.connects == 2
    finally:
        await inst.close()


async def test_endless_listing_stops_at_the_byte_cap(hostile_ftp: Any, tmp_path: Path) -> None:
    srv = hostile_ftp(listing="endless")
    inst, _, _ = ftp_instance(srv.config(max_listing_bytes="1MiB", max_listing_entries=10**9), tmp_path / "spool")
    try:
        with pytest.raises(
            Permanent,
            match=r"the instance root stopped at more than 1048576 bytes in one poll "
            r"\(max_listing_bytes\)",
        ):
            await listing(inst, "")
        assert srv.listing_bytes < GIVE_UP
    finally:
        await inst.close()


async def test_default_caps_stop_an_endless_listing(hostile_ftp: Any, tmp_path: Path) -> None:
    srv = hostile_ftp(listing="endless")
    inst, _, _ = ftp_instance(srv.config(), tmp_path / "spool")
    try:
        with pytest.raises(Permanent, match=r"more than 100000 entries in one poll \(max_listing_entries\)"):
            await listing(inst)
    finally:
        await inst.close()


async def test_trickling_listing_meets_the_listing_deadline(hostile_ftp: Any, tmp_path: Path) -> None:
    """One line every 0.2 s never trips the inactivity timeout; listing_timeout ends it."""
    srv = hostile_ftp(listing="trickle")
    inst, _, _ = ftp_instance(srv.config(listing_timeout="1500ms", timeout="5s"), tmp_path / "spool")
    try:
        t0 = time.monotonic()
        with pytest.raises(
            Transient,
            match=r"path 'in': listing of this folder took longer than "
            r"listing_timeout \(1.5s\)",
        ):
            await listing(inst)
        assert 1.4 < time.monotonic() - t0 < 4
    finally:
        await inst.close()


# -- control replies -------------------------------------------------------
@pytest.mark.parametrize(
    ("where", "long_line"),
    [("greeting", False), ("FEAT", False), ("greeting", True)],
    ids=["greeting-lines", "FEAT-lines", "greeting-one-line"],
)
async def test_endless_reply_is_a_protocol_error(hostile_ftp: Any, tmp_path: Path, where: str, long_line: bool) -> None:
    srv = hostile_ftp(endless_reply=where, long_line=long_line)
    inst, status, _ = ftp_instance(srv.config(timeout="20s"), tmp_path / "spool")
    try:
        t0 = time.monotonic()
        with pytest.raises(Transient) as e:
            await inst.check()
        to = " to FEAT" if where == "FEAT" else ""
        assert str(e.value) == (
            f"instance 'ftp-test': 127.0.0.1:{srv.port}: the server's reply{to} is longer "
            "than 1000 lines or 64 KiB; connection dropped"
        )
        assert time.monotonic() - t0 < 5, "stopped by the cap, not by the timeout"
        assert status.instances["ftp-test"].state == "down"
        assert srv.reply_bytes < GIVE_UP
    finally:
        await inst.close()


# -- downloads -------------------------------------------------------------
@pytest.mark.parametrize(
    ("size", "content"), [(10, b"0123456789 and then some more"), (100_000, None)], ids=["longer", "endless"]
)
async def test_file_longer_than_listed_is_cut_and_refused(
    hostile_ftp: Any, tmp_path: Path, size: int, content: bytes | None
) -> None:
    """As on SFTP: the listed bytes, then an error; a retry from there fails the same way, so a
    grown (or endless) file is never delivered cut short, nor read past its listed size."""
    srv = hostile_ftp(files={"grew.csv": (size, content)})
    inst, _, spool = ftp_instance(srv.config(), tmp_path / "spool")
    try:
        f = await inst.stat("grew.csv")
        assert f is not None and f.size == size
        w = spool.writer()
        for _ in range(2):
            with pytest.raises(
                Transient,
                match=r"path 'grew.csv': file changed while being read: it has more "
                rf"than the listed {size} bytes",
            ):
                await inst.download(f, w)
            assert w.size == size
        w.abort()
        assert srv.file_bytes < GIVE_UP
    finally:
        await inst.close()


async def test_resumed_download_at_the_listed_size_checks_for_more(hostile_ftp: Any, tmp_path: Path) -> None:
    srv = hostile_ftp(files={"same.csv": (10, b"0123456789")})
    inst, _, spool = ftp_instance(srv.config(), tmp_path / "spool")
    try:
        f = await inst.stat("same.csv")
        assert f is not None
        w = spool.writer()
        await inst.download(f, w)
        await inst.download(f, w)  # REST 10: nothing follows, so it is complete
        body = w.finish()
        assert body.data() == b"0123456789"
        body.release()
    finally:
        await inst.close()


async def test_file_without_a_listed_size_is_not_downloaded(hostile_ftp: Any, tmp_path: Path) -> None:
    srv = hostile_ftp(files={"endless.bin": (0, None)})
    inst, _, spool = ftp_instance(srv.config(), tmp_path / "spool")
    try:
        w = spool.writer()
        with pytest.raises(Permanent, match=r"path 'endless\.bin': the server's listing gives no size"):
            await inst.download(RemoteFile("endless.bin", -1, 0.0), w)
        assert w.size == 0 and srv.file_bytes == 0
        w.abort()
    finally:
        await inst.close()


# -- PASV ------------------------------------------------------------------
class Recorder:
    """A listener on 127.0.0.2 that records every connection and byte it gets, while the same
    port on 127.0.0.1 is held (bound, not listening) so a connection there is refused."""

    def __init__(self) -> None:
        self.connections = 0
        self.data = bytearray()
        self.server: asyncio.Server | None = None
        self.held: socket.socket | None = None
        self.port = 0

    async def start(self) -> Recorder:
        async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            self.data += await reader.read()
            writer.close()

        for _ in range(20):
            self.server = await asyncio.start_server(record, "127.0.0.2", 0)
            self.port = self.server.sockets[0].getsockname()[1]
            held = socket.socket()
            try:
                held.bind(("127.0.0.1", self.port))
            except OSError:
                held.close()
                self.server.close()
                continue
            self.held = held
            return self
        raise RuntimeError("no port free on both 127.0.0.1 and 127.0.0.2")

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        if self.held is not None:
            self.held.close()


async def test_pasv_cannot_send_the_data_channel_elsewhere(hostile_ftp: Any, tmp_path: Path, caplog: Any) -> None:
    """The server refuses EPSV and points PASV at another host: conveyor connects to the control
    connection's address instead, so the upload's bytes never reach the other host."""
    rec = await Recorder().start()
    srv = hostile_ftp(epsv=False, pasv_to=("127.0.0.2", rec.port), files={"a.csv": (3, b"abc")})
    inst, _, _ = ftp_instance(srv.config(), tmp_path / "spool")
    try:
        with caplog.at_level(logging.DEBUG, logger="conveyor.ftp"):
            with pytest.raises(Transient, match=r"path 'out/x.csv': .*Connect call failed \('127.0.0.1'"):
                await inst.upload(Body.from_bytes(b"confidential"), "out/x.csv", exists="replace", chmod=None)
            with pytest.raises(Transient):
                await listing(inst, "")
        await asyncio.sleep(0.2)
        assert rec.connections == 0 and bytes(rec.data) == b""
        assert srv.uploads == {}
        assert any(
            "PASV announced 127.0.0.2; connecting to the control connection's address 127.0.0.1" in r.getMessage()
            for r in caplog.records
        )
    finally:
        await inst.close()
        rec.close()


async def test_pasv_trust_address_is_an_opt_in(hostile_ftp: Any, tmp_path: Path) -> None:
    rec = await Recorder().start()
    srv = hostile_ftp(epsv=False, pasv_to=("127.0.0.2", rec.port))
    inst, _, _ = ftp_instance(srv.config(pasv_trust_address=True), tmp_path / "spool")
    try:
        await inst.upload(Body.from_bytes(b"for the announced host"), "x.csv", exists="replace", chmod=None)
        await asyncio.sleep(0.2)
        assert bytes(rec.data) == b"for the announced host"
    finally:
        await inst.close()
        rec.close()


# -- the daemon ------------------------------------------------------------
def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


async def test_daemon_keeps_delivering_past_hostile_ftp_servers(hostile_ftp: Any, tmp_path: Path) -> None:
    """``conveyor run`` with three hostile FTP sources (an endless listing under the default caps, a
    file longer than listed, an endless FEAT reply) beside a local flow: each hostile flow logs a
    clear error naming its flow, instance and folder or file, nothing cut short is delivered, and the
    local flow keeps delivering; memory stays bounded and the daemon stops cleanly."""
    endless = hostile_ftp(listing="endless")
    grew = hostile_ftp(files={"grew.csv": (10, b"0123456789 and then some more")})
    chatty = hostile_ftp(endless_reply="FEAT")
    box = tmp_path / "box"
    (box / "in").mkdir(parents=True)

    def flow(instance: str, out: str) -> dict[str, Any]:
        return {
            "source": {"instance": instance, "path": "in", "poll_interval": "200ms", "min_age": "0s"},
            "target": {"type": "directory", "path": str(tmp_path / out), "filename": "{name}"},
        }

    cfg = write_config(
        tmp_path,
        {
            "endless": endless.config(),
            "grew": grew.config(),
            "chatty": chatty.config(),
            "box": {"type": "local", "root": str(box)},
        },
        {
            "f-endless": flow("endless", "out-endless"),
            "f-grew": flow("grew", "out-grew"),
            "f-chatty": flow("chatty", "out-chatty"),
            "f-good": flow("box", "out-good"),
        },
    )
    d = DaemonProcess(cfg).start()

    async def deliver(name: str) -> None:
        (box / "in" / name).write_bytes(name.encode())
        await wait_for(lambda: name in bodies(tmp_path / "out-good"), 30)

    def logged(flow: str, text: str) -> list[dict[str, Any]]:
        return [r for r in d.logs() if r.get("flow") == flow and text in str(r.get("msg"))]

    try:
        for i in range(6):
            await deliver(f"good{i}.csv")
            await asyncio.sleep(0.3)
        await wait_for(
            lambda: logged(
                "f-endless", "instance 'endless', path 'in': listing of this folder stopped at more than 100000 entries"
            ),
            30,
        )
        await wait_for(
            lambda: logged(
                "f-grew",
                "instance 'grew', path 'in/grew.csv': file changed while "
                "being read: it has more than the listed 10 bytes",
            ),
            30,
        )
        await wait_for(lambda: logged("f-chatty", "instance 'chatty': 127.0.0.1:"), 30)
        assert "reply to FEAT is longer than 1000 lines" in logged("f-chatty", "instance 'chatty'")[0]["msg"]
        assert d.proc is not None and d.proc.poll() is None, d.text()[-3000:]
        rss = peak_rss_mb(d.proc.pid)
    finally:
        d.stop()
    assert bodies(tmp_path / "out-grew") == {} and bodies(tmp_path / "out-endless") == {}
    assert len(bodies(tmp_path / "out-good")) == 6
    assert endless.listing_bytes < GIVE_UP and chatty.reply_bytes < GIVE_UP
    assert "Traceback" not in d.text()
    assert rss < 200, f"peak RSS {rss:.0f} MB"
    print(f"peak RSS of the daemon: {rss:.0f} MB")
