"""Segmented FTP/FTPS downloads from vsftpd: one large file read over several control and data
connections at once (REST at each part's offset, RETR cut at its end), written at its offsets into
the spool with the right SHA-256, resumed after a cut; TLS sessions reused on every data channel
(vsftpd's ``require_ssl_reuse=YES``)."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from conveyor.errors import Transient
from conveyor.payload import SpoolWriter
from conveyor.transfer.segments import PartPlan
from tests.backends.ftp import ftp_instance
from tests.segments import fetch
from tests.servers.vsftpd import vsftpd_certs, vsftpd_factory
from tests.test_ftp_vsftpd import KillingSink

__all__ = ["vsftpd_certs", "vsftpd_factory"]

MIB = 1024 * 1024


def served(srv: Any, rel: str, size: int) -> str:
    """A file of ``size`` bytes no two MiB alike at ``rel`` on the server; its SHA-256."""
    p: Path = srv.root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    srv.own(p.parent)
    block = os.urandom(MIB)
    h = hashlib.sha256()
    with open(p, "wb") as out:
        for i in range(0, size, MIB):
            chunk = (i.to_bytes(8, "big") + block[8:])[: size - i]
            h.update(chunk)
            out.write(chunk)
    srv.own(p)
    return h.hexdigest()


def test_a_connection_done_early_takes_half_of_the_largest_part_left() -> None:
    """One part per connection, as lftp's ``pget``; a connection whose part is done while another
    still has a lot to read takes the back half of it, so that none sits idle to the end. A part
    left too small to halve is not split, nor the empty one that checks the end."""
    plan = PartPlan([(0, 96 * MIB)], 3, 96 * MIB, min_part=16 * MIB)
    a, b, c = plan.take(), plan.take(), plan.take()
    assert a is not None and b is not None and c is not None
    assert [(x.start, x.end) for x in (a, b, c)] == [(0, 32 * MIB), (32 * MIB, 64 * MIB), (64 * MIB, 96 * MIB)]
    plan = PartPlan([(0, 96 * MIB)], 3, 96 * MIB, min_part=16 * MIB)
    a, b, c = plan.take(), plan.take(), plan.take()
    assert a is not None and b is not None and c is not None
    a.pos, b.pos, c.pos = a.end, 40 * MIB, 64 * MIB  # a done; c, started late, has the most left
    plan.done(a)
    d = plan.take()
    assert d is not None and (d.start, d.end) == (80 * MIB, 96 * MIB) and c.end == 80 * MIB
    assert d.last and not c.last  # the new part is the one that reads on to see the end
    b.pos, c.pos = 62 * MIB, 78 * MIB
    assert plan.take() is None  # what is left is under two minimum parts: not worth a new connection


def test_a_split_leaves_the_reader_what_it_reads_while_a_new_connection_gets_going() -> None:
    """A new part needs a data connection and a TCP slow start (``ramp`` seconds) before it goes
    at full speed; meanwhile the part it was cut from goes on at its measured rate. The cut leaves
    that part those bytes, and there is no cut when what would be left to take is under a part."""
    plan = PartPlan([(0, 128 * MIB)], 2, 128 * MIB, min_part=16 * MIB, ramp=1.0)
    a, b = plan.take(now=0.0), plan.take(now=0.0)
    assert a is not None and b is not None
    a.pos, b.pos = a.end, 64 * MIB + 16 * MIB  # b read 16 MiB in 1 s: 48 MiB left, 16 of them during a ramp
    plan.done(a)
    c = plan.take(now=1.0)
    assert c is not None and (c.start, c.end) == (112 * MIB, 128 * MIB) and b.end == 112 * MIB
    plan.done(c)
    b.pos = 96 * MIB  # 16 MiB left at 16 MiB/s: a new connection would not be faster
    assert plan.take(now=2.0) is None


def test_a_resumed_download_plans_only_the_missing_ranges() -> None:
    plan = PartPlan([(0, 8 * MIB), (40 * MIB, 64 * MIB)], 4, 64 * MIB, min_part=16 * MIB)
    parts = []
    while (p := plan.take()) is not None:
        parts.append((p.start, p.end))
        p.pos = p.end
        plan.done(p)
    assert parts == [(0, 8 * MIB), (40 * MIB, 56 * MIB), (56 * MIB, 64 * MIB)]
    plan = PartPlan([(0, 8 * MIB)], 4, 64 * MIB, min_part=16 * MIB)  # the end was fetched before a cut
    ranges = []
    while (p := plan.take()) is not None:
        ranges.append((p.start, p.end))
        p.pos = p.end
        plan.done(p)
    assert ranges == [(0, 8 * MIB), (64 * MIB, 64 * MIB)]  # asked once more whether it grew


@pytest.mark.parametrize(
    ("tls", "over", "connections"),
    [
        ("none", {"streams": 4, "max_connections": 4}, 4),
        ("explicit", {"streams": 4, "max_connections": 4}, 4),
        ("explicit", {"streams": 8}, 2),  # bounded by max_connections (2)
    ],
)
async def test_segmented_download_right_bytes_and_sha256(
    vsftpd_factory: Any, tmp_path: Path, tls: str, over: dict[str, int], connections: int
) -> None:
    srv = vsftpd_factory(tls)
    digest = served(srv, "big.bin", 70 * MIB + 4321)  # four parts, the last one short
    inst, _, spool = ftp_instance(srv.config(**over), tmp_path / "spool")
    try:
        assert (await fetch(inst, spool.writer(), digest)).segmented
        assert inst.pool.connects == connections
        # Every part ended with the connection still usable: the next download reuses them all.
        assert (await fetch(inst, spool.writer(), digest)).segmented
        assert inst.pool.connects == connections
    finally:
        await inst.close()


@pytest.mark.parametrize(
    ("tls", "streams"),
    [("none", 1), ("explicit", 1), ("none", None)],  # unset: loopback is near, one stream
)
async def test_one_stream_reads_in_order_as_before(
    vsftpd_factory: Any, tmp_path: Path, tls: str, streams: int | None
) -> None:
    srv = vsftpd_factory(tls)
    digest = served(srv, "big.bin", 80 * MIB)
    inst, _, spool = ftp_instance(srv.config(streams=streams, max_connections=4), tmp_path / "spool")
    try:
        assert not (await fetch(inst, spool.writer(), digest)).segmented
        assert inst.pool.connects == 1
    finally:
        await inst.close()


@pytest.mark.parametrize("tls", ["none", "explicit"])
async def test_segmented_download_in_active_mode(vsftpd_factory: Any, tmp_path: Path, tls: str) -> None:
    """Active mode (``passive: false``): every part's data channel is one the server opens back to
    a port of its own (PORT, then REST and RETR); passive mode is off at the server, so only active
    transfers can work."""
    srv = vsftpd_factory(tls, extra={"pasv_enable": "NO"})
    digest = served(srv, "big.bin", 50 * MIB + 77)
    inst, _, spool = ftp_instance(srv.config(passive=False, streams=4, max_connections=4), tmp_path / "spool")
    try:
        assert (await fetch(inst, spool.writer(), digest)).segmented
        assert inst.pool.connects == 4
    finally:
        await inst.close()


@pytest.mark.fault
@pytest.mark.parametrize("tls", ["none", "explicit"])
async def test_cut_mid_segment_resumes_the_missing_parts(vsftpd_factory: Any, tmp_path: Path, tls: str) -> None:
    srv = vsftpd_factory(tls)
    size = 100 * MIB
    digest = served(srv, "big.bin", size)
    inst, status, spool = ftp_instance(srv.config(streams=4, max_connections=4), tmp_path / "spool")
    try:
        # Once over, so that all four connections are logged in when the sessions are killed (a
        # vsftpd session killed during its login may answer in plain text inside TLS).
        await fetch(inst, spool.writer(), digest)
        f = await inst.stat("big.bin")
        w = KillingSink(spool, srv, after=24 * MIB)
        with pytest.raises(Transient):
            await inst.download(f, w)
        assert w.killed and w.segmented and 0 < w.size < size
        gaps = w.missing(size)  # several, or one where the sockets' buffers completed the earlier parts
        assert sum(e - s for s, e in gaps) == size - w.size
        await fetch(inst, w, digest)  # only the missing ranges, on new connections
        assert inst.pool.connects > 4, "the killed connections were replaced"
        assert status.instances["ftp-test"].state == "up"
    finally:
        await inst.close()


@pytest.mark.parametrize(("change", "said"), [("grew", "more than the listed"), ("shrank", "ended it at")])
async def test_segmented_file_changed_is_transient(vsftpd_factory: Any, tmp_path: Path, change: str, said: str) -> None:
    srv = vsftpd_factory("none")
    served(srv, "big.bin", 40 * MIB)
    inst, _, spool = ftp_instance(srv.config(streams=3, max_connections=3), tmp_path / "spool")
    try:
        f = await inst.stat("big.bin")
        if change == "grew":
            with open(srv.root / "big.bin", "ab") as out:  # noqa: ASYNC230 (a test's few bytes)
                out.write(b"more")
        else:
            os.truncate(srv.root / "big.bin", 30 * MIB)
        w = spool.writer()
        with pytest.raises(Transient, match=said):
            await inst.download(f, w)
        w.abort()
    finally:
        await inst.close()


@pytest.mark.parametrize("tls", ["none", "explicit"])
async def test_daemon_segmented_download(vsftpd_factory: Any, tmp_path: Path, tls: str) -> None:
    """End to end: `conveyor run` reads a 40 MiB file over three connections into a folder, once,
    whole, with its SHA-256 in the sidecar."""
    from tests.harness import bodies, running, sidecars, wait_for, write_config

    srv = vsftpd_factory(tls)
    digest = served(srv, "in/big.bin", 40 * MIB)
    out = tmp_path / "out"
    flow = {
        "source": {"instance": "remote", "path": "in", "poll_interval": "200ms", "min_age": "0s", "after": "delete"},
        "target": {"type": "directory", "path": str(out)},
    }
    cfg = write_config(tmp_path, {"remote": srv.config(streams=3, max_connections=3)}, {"f": flow})
    async with running(cfg):
        await wait_for(lambda: len(bodies(out)) == 1, 60)
        await wait_for(lambda: not (srv.root / "in/big.bin").exists(), 20)
    got = bodies(out)
    assert [hashlib.sha256(v).hexdigest() for v in got.values()] == [digest]
    assert [s["sha256"] for s in sidecars(out)] == [digest]


class SlowHashSink(SpoolWriter):
    """Holds the hashing back until every byte of the file has been received (at most
    ``patience`` seconds): the writes, and so the connections, must go on meanwhile."""

    def __init__(self, spool: Any, total: int, patience: float = 10.0) -> None:
        super().__init__(spool)
        self._total, self._patience = total, patience
        self.all_in = threading.Event()
        self.ran_out = False

    def write_at(self, offset: int, data: bytes | memoryview) -> None:
        super().write_at(offset, data)
        if self.size == self._total:
            self.all_in.set()

    def _hash_to(self, frontier: int) -> None:
        if not self.all_in.wait(self._patience):
            self.ran_out = True
            self.all_in.set()  # once is enough to tell
        super()._hash_to(frontier)


@pytest.mark.parametrize("tls", ["none", "explicit"])
async def test_hashing_the_prefix_does_not_hold_up_the_other_parts(
    vsftpd_factory: Any, tmp_path: Path, tls: str
) -> None:
    """The hash follows the part of the file complete from its start; while it catches up (a
    first part done, the later ones already in), the writes of the other connections go on."""
    srv = vsftpd_factory(tls)
    size = 64 * MIB  # well past what may wait for the spool's threads
    digest = served(srv, "big.bin", size)
    inst, _, spool = ftp_instance(srv.config(streams=2, max_connections=2), tmp_path / "spool")
    try:
        sink = SlowHashSink(spool, size)
        await fetch(inst, sink, digest)
        assert sink.segmented and not sink.ran_out, "the writes waited for the hash"
    finally:
        await inst.close()
