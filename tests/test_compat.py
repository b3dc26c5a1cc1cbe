"""The dependencies' private parts (conveyor._compat): the import-time checks and the public fallbacks.

Each fallback is run for real: an SFTP download and upload against OpenSSH sshd, and a Pub/Sub
streaming pull against the emulator, on the path taken when a check fails or
``CONVEYOR_COMPAT=public`` is set.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor._compat import ENV, version_tuple
from conveyor._compat import asyncssh as ssh_compat
from conveyor.errors import Transient
from conveyor.interfaces import Inbound
from conveyor.payload import Body
from conveyor.stopping import StopSignal
from tests.backends.sftp import *  # noqa: F403  (the server fixtures)
from tests.backends.sftp import SftpBackend, sftp_folder
from tests.harness import wait_for
from tests.servers.pubsub_emulator import PubsubEmulator, pubsub_emulator
from tests.servers.ssh_keys import KeySet
from tests.servers.sshd import Sshd, own_sshd
from tests.test_sftp import download, instance

__all__ = ["pubsub_emulator"]


def public(monkeypatch: pytest.MonkeyPatch, module: Any) -> None:
    """Force ``module``'s public path the way an operator would: the environment variable, read by ``select``."""
    monkeypatch.setenv(ENV, "public")
    monkeypatch.setattr(module, "CHOICE", module.select())
    assert not module.CHOICE.private


def take_path(monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    """asyncssh's ``path``: "public" as :func:`public` forces it, "private" as the checks find it."""
    if path == "public":
        public(monkeypatch, ssh_compat)
    else:
        monkeypatch.delenv(ENV, raising=False)
        monkeypatch.setattr(ssh_compat, "CHOICE", ssh_compat.select())
        assert ssh_compat.CHOICE.private, ssh_compat.CHOICE.why


def gcm_file(
    monkeypatch: pytest.MonkeyPatch, backend: SftpBackend, path: str, name: str, size: int
) -> tuple[bytes, Any]:
    """On asyncssh's ``path``: ``size`` random bytes put at ``name`` on the server, and an instance
    that reaches it with AES-GCM (the cipher conveyor's receive path takes)."""
    take_path(monkeypatch, path)
    data = os.urandom(size)
    backend.put(name, data)
    return data, instance(backend, algorithms={"ciphers": ["aes128-gcm@openssh.com"]})


# --------------------------------------------------------------------------- the checks
def test_version_tuple() -> None:
    assert version_tuple("2.24.1") == (2, 24, 1)
    assert version_tuple("2.25.0rc1") == (2, 25, 0)
    assert version_tuple("3") == (3,)


def test_installed_versions_take_the_private_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    """What pyproject.toml allows and this machine has installed passes every check."""
    from conveyor._compat import pubsub as pubsub_compat

    monkeypatch.delenv(ENV, raising=False)
    assert ssh_compat.select().private, ssh_compat.select().why
    assert pubsub_compat.select().private, pubsub_compat.select().why


def test_environment_variable_is_read_at_import() -> None:
    code = (
        "import conveyor._compat.asyncssh as a, conveyor._compat.pubsub as p; "
        "print(a.CHOICE.private, p.CHOICE.private, a.CHOICE.why)"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, ENV: "public"}, capture_output=True, text=True, check=True
    )
    assert r.stdout.strip() == f"False False {ENV}=public"


def test_asyncssh_check_rejects_shapes_it_was_not_written_for(monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncssh

    monkeypatch.delenv(ENV, raising=False)

    class NoSendPacket:
        pass

    class OtherSignature:
        def send_packet(self, pkttype: int, *args: bytes, handler: Any = None, extra: Any = None) -> None:
            pass

    class NoPadding:  # the same signature, but it no longer pads through self.send_packet
        def send_packet(self, pkttype: int, *args: bytes, handler: Any = None) -> None:
            pass

    for shape, said in [
        (NoSendPacket, "send_packet is missing"),
        (OtherSignature, "unknown signature"),
        (NoPadding, "no longer sends its padding"),
    ]:
        choice = ssh_compat.select(conn_class=shape)
        assert not choice.private and said in choice.why, choice.why
    too_new = ssh_compat.select(version="2.25.0")
    assert not too_new.private and "outside the tested range" in too_new.why
    assert not ssh_compat.select(version="2.23.0").private

    class SlicesElsewise(asyncssh.SSHClientConnection):  # a receive path that takes packets some other way
        def _recv_packet(self) -> bool:
            return False

    choice = ssh_compat.select(conn_class=SlicesElsewise)
    assert not choice.private and "_recv_packet no longer parses packets" in choice.why, choice.why

    from asyncssh.channel import SSHClientChannel

    def take_data(self: Any, pkttype: int, pktid: int, packet: Any) -> None:
        pass

    handlers = {**SSHClientChannel._packet_handlers, 94: take_data}  # channel data handled elsewise
    monkeypatch.setattr(SSHClientChannel, "_packet_handlers", handlers)
    choice = ssh_compat.select()
    assert not choice.private and "channel data" in choice.why, choice.why
    monkeypatch.undo()

    from asyncssh.sftp import SFTPClientHandler

    def send_request(self: Any, pkttype: Any, args: Any, waiter: Any) -> None:  # requests kept some other way
        pass

    monkeypatch.setattr(SFTPClientHandler, "_send_request", send_request)
    choice = ssh_compat.select()
    assert not choice.private and "_send_request no longer works" in choice.why, choice.why
    monkeypatch.undo()
    monkeypatch.delenv(ENV, raising=False)
    assert ssh_compat.select(conn_class=asyncssh.SSHClientConnection, version="2.24.1").private


def test_pubsub_check_rejects_shapes_it_was_not_written_for(monkeypatch: pytest.MonkeyPatch) -> None:
    from conveyor._compat import pubsub as pubsub_compat

    monkeypatch.delenv(ENV, raising=False)
    base = pubsub_compat.MANAGER_CLASS
    assert base is not None

    class OpensWithoutHook(base):  # type: ignore[misc, valid-type]
        def open(self, callback: Any, on_callback_error: Any) -> None:
            pass

    class NoHook:
        pass

    class HookRenamed(base):  # type: ignore[misc, valid-type]
        def _should_recover(self, exc: BaseException) -> bool:
            return True

    for shape, said in [
        (None, "StreamingPullManager"),
        (NoHook, "_should_recover(self, exception) is missing"),
        (HookRenamed, "_should_recover(self, exception) is missing"),
        (OpensWithoutHook, "no longer asks self._should_recover"),
    ]:
        choice = pubsub_compat.select(manager_class=shape)
        assert not choice.private and said in choice.why, choice.why
    too_new = pubsub_compat.select(version="2.45.0")
    assert not too_new.private and "outside the tested range" in too_new.why


# --------------------------------------------------------------------------- asyncssh, for real
def packets_sent(inst: Any) -> int:
    """asyncssh's count of packets sent on the pool's first connection (private: the tests' own look)."""
    seq: int = inst.pool._sessions[0].conn._send_seq
    return seq


async def test_sftp_on_the_public_path(
    sftp_openssh_backend: SftpBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """CONVEYOR_COMPAT=public: a download and an upload are correct, and asyncssh's padding is left on."""
    public(monkeypatch, ssh_compat)
    backend = sftp_openssh_backend
    data = os.urandom(3_000_000)
    backend.put("in/a.bin", data)
    inst = instance(backend)
    caplog.set_level(logging.INFO, "conveyor.sftp")
    try:
        got = await download(inst, "in/a.bin", tmp_path)
        assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
        before = packets_sent(inst)
        up = os.urandom(1 << 20)
        assert await inst.upload(Body.from_bytes(up), "out/b.bin", exists="replace", chmod=None)
        sent = packets_sent(inst) - before
    finally:
        await inst.close()
    assert backend.read("out/b.bin") == up
    assert sent > 70, f"{sent} packets for 1 MiB: the empty ignores should still go out on the public path"
    said = [r.getMessage() for r in caplog.records if "asyncssh" in r.getMessage()]
    assert said == [f"asyncssh: using its public API only: {ENV}=public"]


@pytest.mark.parametrize(
    ("cipher", "path"),
    [
        ("aes128-gcm@openssh.com", "private"),
        ("chacha20-poly1305@openssh.com", "private"),
        ("aes128-gcm@openssh.com", "public"),
    ],
)
async def test_sftp_receive_buffer_holds_one_packet(
    sftp_openssh_backend: SftpBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cipher: str, path: str
) -> None:
    """8 MiB downloaded intact whichever way asyncssh is fed; with AES-GCM on the private path, its
    receive buffer never holds more than the packet it is parsing, where a socket read of several
    packets (OpenSSH sends 32 KiB ones) would otherwise sit in it whole."""
    take_path(monkeypatch, path)
    backend = sftp_openssh_backend
    data = os.urandom(8 << 20)
    backend.put("in/w.bin", data)
    inst = instance(backend, algorithms={"ciphers": [cipher]})
    beyond: list[int] = []
    try:
        await inst.check()
        conn: Any = inst.pool._sessions[0].conn
        assert conn.get_extra_info("recv_cipher") == cipher
        parse = conn._recv_data

        def recv_data() -> None:  # private: the tests' own look at what asyncssh is given
            buf, gcm = conn._inpbuf, cipher.startswith("aes")
            if gcm and conn._recv_handler == conn._recv_pkthdr and len(buf) >= 4:
                beyond.append(len(buf) - (4 + int.from_bytes(buf[:4], "big") + 16))
            elif gcm and conn._recv_handler == conn._recv_packet:
                beyond.append(len(buf) - (4 + conn._pktlen))
            parse()

        conn._recv_data = recv_data
        got = await download(inst, "in/w.bin", tmp_path)
    finally:
        await inst.close()
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    if path == "private" and cipher.startswith("aes"):
        # (a download's packets may all bypass asyncssh's parser, and give it nothing at all)
        assert max(beyond, default=0) <= 0, f"asyncssh was given {max(beyond)} bytes beyond a packet"
    elif path == "public":  # what it is otherwise given: several packets per socket read
        assert max(beyond) > 0, beyond


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_sftp_channel_data_skips_asyncssh_packet_parser(
    sftp_openssh_backend: SftpBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, loop: str
) -> None:
    """On the private path with AES-GCM, most of a download's packets (channel data, whole in a
    socket read) are decrypted and delivered without asyncssh's per-packet parser, and the file
    arrives intact: on asyncio's event loop and on uvloop's (the daemon's when installed)."""
    factory = None
    if loop == "uvloop":
        factory = pytest.importorskip("uvloop").new_event_loop
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.setattr(ssh_compat, "CHOICE", ssh_compat.select())
    backend = sftp_openssh_backend
    data = os.urandom(8 << 20)
    backend.put("in/f.bin", data)
    parsed: list[int] = []

    async def fetch() -> tuple[bytes, int]:
        inst = instance(backend, algorithms={"ciphers": ["aes128-gcm@openssh.com"]})
        try:
            await inst.check()
            conn: Any = inst.pool._sessions[0].conn
            finish = conn._finish_recv_packet

            def finish_recv_packet(pkttype: int, seq: int, *args: Any, **kw: Any) -> None:  # private: a count
                parsed.append(pkttype)
                finish(pkttype, seq, *args, **kw)

            conn._finish_recv_packet = finish_recv_packet
            seq0 = conn._recv_seq
            got = await download(inst, "in/f.bin", tmp_path)
            return got, (conn._recv_seq - seq0) & 0xFFFFFFFF
        finally:
            await inst.close()

    with asyncio.Runner(loop_factory=factory) as runner:
        got, received = runner.run(fetch())
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    assert received > 200, received  # OpenSSH sends 32 KiB packets: about 260 for 8 MiB
    assert len(parsed) < received / 2, f"asyncssh parsed {len(parsed)} of {received} packets"


def _pieces(read: bytes, how: str) -> list[bytes]:
    """One socket read cut the way ``how`` says."""
    if how == "small":  # packets and their lengths cut at every offset, across many reads
        return [read[i : i + 4099] for i in range(0, len(read), 4099)]
    return [read[i : i + 1] for i in range(5)] + [read[5:]]  # "bytes": single bytes, then the rest


@pytest.mark.parametrize("how", ["small", "bytes"])
async def test_sftp_packets_cut_across_reads_skip_asyncssh_packet_parser(
    sftp_openssh_backend: SftpBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """Socket reads that end inside a packet, or inside its length: the start is kept until the
    rest arrives, and the whole packet then takes conveyor's receive path like any other. The
    file arrives intact and asyncssh parses few of its packets."""
    data, inst = gcm_file(monkeypatch, sftp_openssh_backend, "private", "in/s.bin", 4 << 20)
    parsed: list[int] = []
    try:
        await inst.check()
        conn: Any = inst.pool._sessions[0].conn
        receive, finish = conn.data_received, conn._finish_recv_packet  # conveyor's wrapper; private: a count

        def data_received(read: bytes, datatype: Any = None) -> None:
            for piece in _pieces(read, how):
                receive(piece, datatype)

        def finish_recv_packet(pkttype: int, seq: int, *args: Any, **kw: Any) -> None:
            parsed.append(pkttype)
            finish(pkttype, seq, *args, **kw)

        conn.data_received, conn._finish_recv_packet = data_received, finish_recv_packet
        seq0 = conn._recv_seq
        got = await download(inst, "in/s.bin", tmp_path)
        received = (conn._recv_seq - seq0) & 0xFFFFFFFF
    finally:
        await inst.close()
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    assert received > 100, received  # OpenSSH sends 32 KiB packets: about 130 for 4 MiB
    assert parsed.count(94) <= 2, f"asyncssh parsed {parsed.count(94)} channel data packets of {received}"


@pytest.mark.parametrize("path", ["private", "public"])
async def test_sftp_read_requests_share_packets(
    sftp_openssh_backend: SftpBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """On the private path a download's read requests go out several to one SSH packet (fewer
    packets to encrypt, one system call for them); the public path sends one packet each. The
    file arrives intact either way, its end checked (one byte past it must be the end)."""
    data, inst = gcm_file(monkeypatch, sftp_openssh_backend, path, "in/q.bin", 8 << 20)
    try:
        await inst.check()
        before = packets_sent(inst)
        got = await download(inst, "in/q.bin", tmp_path)
        sent = packets_sent(inst) - before
    finally:
        await inst.close()
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    requests = len(data) // (255 << 10) + 2  # 255 KiB reads (the server's limit), and the one past the end
    if path == "private":
        assert sent < requests / 2, f"{sent} packets sent for {requests} read requests"
    else:
        assert sent > requests, f"{sent} packets sent for {requests} read requests"


@pytest.mark.parametrize("path", ["private", "public"])
async def test_sftp_answers_taken_off_the_channel(
    sftp_openssh_backend: SftpBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """On the private path, once a download starts on a session with nothing outstanding, its SFTP
    answers are cut from the channel's data directly (asyncssh's SFTP stream is not read again),
    for that download and for what the session does next; on the public path the stream reads
    each. Files, listings and a missing file's error come out the same either way."""
    data, inst = gcm_file(monkeypatch, sftp_openssh_backend, path, "in/m.bin", 3 << 20)
    sftp_openssh_backend.put("in/small.txt", b"small")
    reads: list[int] = []
    try:
        await inst.check()
        handler: Any = inst.pool._sessions[0].sftp._handler  # private: the tests' own look
        readexactly = handler._reader.readexactly

        async def counted(n: int) -> bytes:
            reads.append(n)
            got: bytes = await readexactly(n)
            return got

        handler._reader.readexactly = counted
        assert hashlib.sha256(await download(inst, "in/m.bin", tmp_path)).digest() == hashlib.sha256(data).digest()
        first = len(reads)  # the stat and the open before the download's reads: a length and a body each
        assert await download(inst, "in/small.txt", tmp_path) == b"small"
        assert sorted([f.path async for f in inst.list("in", recursive=True)]) == ["in/m.bin", "in/small.txt"]
        assert await inst.stat("in/nothing.bin") is None
    finally:
        await inst.close()
    if path == "private":
        assert first <= 4 and reads[first:] == [], f"asyncssh's SFTP stream was read: {reads}"
    else:
        assert len(reads) - first > 10 and first > 20, reads


async def test_sftp_framed_answer_with_unknown_id_ends_the_session(
    sftp_openssh_backend: SftpBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An answer cut from the channel whose id no request has ends the SFTP session as asyncssh's
    own reader would (its clean-up); the next operation gets a fresh session and works."""
    data, inst = gcm_file(monkeypatch, sftp_openssh_backend, "private", "in/u.bin", 1 << 20)
    try:
        await inst.check()
        assert await download(inst, "in/u.bin", tmp_path) == data
        handler: Any = inst.pool._sessions[0].sftp._handler  # private: the tests' own look
        assert handler in ssh_compat._FRAMED
        stray = (9).to_bytes(4, "big") + bytes([101]) + (0xFFFF_FFF0).to_bytes(4, "big") + bytes(4)
        handler._reader._session.data_received(memoryview(stray)[:6], None)  # cut, as packets may be
        handler._reader._session.data_received(memoryview(stray)[6:], None)
        await wait_for(lambda: handler._writer is None, 5)
        with pytest.raises(Transient):  # as after asyncssh's own reader ends: an error, never a hang
            await download(inst, "in/u.bin", tmp_path)
        assert await download(inst, "in/u.bin", tmp_path) == data
    finally:
        await inst.close()


@pytest.fixture
def rekeying_sshd(ssh_client_keys: KeySet) -> Iterator[Sshd]:
    """An sshd that renews its keys after every MiB it sends."""
    yield from own_sshd(ssh_client_keys, ("ed25519",), ("RekeyLimit 1M",))


async def test_sftp_channel_data_across_new_keys(rekeying_sshd: Sshd, tmp_path: Path) -> None:
    """A download through several key renewals by the server: conveyor's receive path follows each
    new key as asyncssh does, and the file arrives intact."""
    backend = sftp_folder(rekeying_sshd)
    data = os.urandom(6 << 20)
    backend.put("in/r.bin", data)
    inst = instance(backend, algorithms={"ciphers": ["aes128-gcm@openssh.com"]})
    try:
        await inst.check()
        conn: Any = inst.pool._sessions[0].conn
        first, finish, parsed = conn._recv_encryption, conn._finish_recv_packet, []

        def finish_recv_packet(pkttype: int, seq: int, *args: Any, **kw: Any) -> None:  # private: a count
            parsed.append(pkttype)
            finish(pkttype, seq, *args, **kw)

        conn._finish_recv_packet = finish_recv_packet
        got = await download(inst, "in/r.bin", tmp_path)
        assert conn._recv_encryption is not first, "the server renewed no keys"
    finally:
        await inst.close()
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    data_packets = len(data) // (32 << 10)
    assert parsed.count(94) < data_packets / 2, f"asyncssh parsed {parsed.count(94)} of about {data_packets}"


async def test_sftp_tampered_packet_is_refused(sftp_openssh_backend: SftpBackend, tmp_path: Path) -> None:
    """A flipped bit in a received packet fails its AES-GCM tag: the download fails, nothing of
    it is taken as data (asyncssh refuses the packet as it would without conveyor's receive path)."""
    backend = sftp_openssh_backend
    backend.put("in/t.bin", os.urandom(4 << 20))
    inst = instance(backend, algorithms={"ciphers": ["aes128-gcm@openssh.com"]}, max_connection_attempts=1)
    reads = 0
    try:
        await inst.check()
        conn: Any = inst.pool._sessions[0].conn
        receive = conn.data_received  # conveyor's wrapper, as installed on the connection

        def data_received(data: bytes, datatype: Any = None) -> None:
            nonlocal reads
            reads += 1
            if reads == 20 and len(data) > 200:  # inside the first packet of a read, past its length
                data = data[:100] + bytes([data[100] ^ 1]) + data[101:]
            receive(data, datatype)

        conn.data_received = data_received
        with pytest.raises(Transient):
            await download(inst, "in/t.bin", tmp_path)
        assert reads >= 20
        assert conn.is_closed()
    finally:
        await inst.close()


async def test_sftp_shape_rejected_at_runtime_falls_back(
    sftp_openssh_backend: SftpBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A connection class whose send_packet lost its padding call is rejected; transfers go the public way."""
    import asyncssh

    monkeypatch.delenv(ENV, raising=False)
    original = asyncssh.SSHClientConnection.send_packet

    def send_packet(self: Any, pkttype: int, *args: bytes, handler: Any = None) -> None:
        original(self, pkttype, *args, handler=handler)

    monkeypatch.setattr(asyncssh.SSHClientConnection, "send_packet", send_packet)
    monkeypatch.setattr(ssh_compat, "CHOICE", ssh_compat.select())
    assert not ssh_compat.CHOICE.private
    caplog.set_level(logging.INFO, "conveyor.sftp")
    backend = sftp_openssh_backend
    inst = instance(backend)
    try:
        await inst.check()
        assert "send_packet" not in vars(inst.pool._sessions[0].conn), "the connection was patched anyway"
        up = os.urandom(1 << 20)
        assert await inst.upload(Body.from_bytes(up), "out/c.bin", exists="replace", chmod=None)
    finally:
        await inst.close()
    assert backend.read("out/c.bin") == up
    warned = [r for r in caplog.records if r.levelno == logging.WARNING and "asyncssh" in r.getMessage()]
    assert len(warned) == 1 and "no longer sends its padding" in warned[0].getMessage()


# --------------------------------------------------------------------------- Pub/Sub, for real
async def test_pubsub_streaming_pull_on_the_public_path(
    pubsub_emulator: PubsubEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CONVEYOR_COMPAT=public: the library's own subscribe delivers every message once, acked."""
    from conveyor._compat import pubsub as pubsub_compat
    from tests.test_pubsub_source import consume, publish, pull_now, source_cfg, unique
    from tests.test_pubsub_source import instance as pubsub_instance

    public(monkeypatch, pubsub_compat)
    emu = pubsub_emulator
    topic, sub = unique("topic"), unique("sub")
    emu.create(topic, sub)
    ids = publish(emu, topic, [f"body {i}".encode() for i in range(20)])
    inst = pubsub_instance(emu, tmp_path)
    source = inst.source("flow-c", source_cfg(sub, max_messages=5))
    got: dict[str, bytes] = {}
    futures: set[type] = set()

    async def emit(item: Inbound) -> None:
        futures.update(type(s.future) for s in source._streams)
        got[item.payload.id] = item.payload.body.data()
        await item.ack()

    await consume(source, emit, lambda: len(got) >= 20)
    assert futures == {pubsub_compat._Watched}, "the stream was not opened the public way"
    assert sorted(got) == sorted(ids)
    assert sorted(got.values()) == sorted(f"body {i}".encode() for i in range(20))
    await asyncio.sleep(1)  # acks are sent in batches by the library's dispatcher
    assert pull_now(emu, sub) == 0, "every message was acked"
    await inst.close()


@pytest.mark.parametrize("path", ["private", "public"])
async def test_pubsub_stream_ends_when_the_server_is_gone(
    pubsub_emulator: PubsubEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """The emulator dies under a running stream: on either path run() raises Transient and the instance
    is down, so the supervisor backs off (the public path notices through its probe)."""
    from conveyor._compat import pubsub as pubsub_compat
    from conveyor.brokers.pubsub.config import PubsubConfig
    from conveyor.brokers.pubsub.instance import PubsubInstance
    from conveyor.interfaces import Context
    from conveyor.payload import Spool
    from conveyor.status import StatusBoard
    from tests.test_pubsub_source import source_cfg, unique

    if path == "public":
        public(monkeypatch, pubsub_compat)
    else:
        monkeypatch.delenv(ENV, raising=False)
        monkeypatch.setattr(pubsub_compat, "CHOICE", pubsub_compat.select())
        assert pubsub_compat.CHOICE.private
    emu = pubsub_emulator
    topic, sub = unique("topic"), unique("sub")
    emu.create(topic, sub)
    cfg = PubsubConfig(type="pubsub", project=emu.project, emulator_host=emu.host, timeout="2s")
    inst = PubsubInstance("gcp", cfg, Context(spool=Spool(tmp_path / "spool"), status=StatusBoard()))
    source = inst.source("flow-d", source_cfg(sub))
    state = inst.ctx.status.instances

    async def emit(item: Inbound) -> None:
        raise AssertionError("nothing was published")

    task = asyncio.create_task(source.run(emit, StopSignal()))
    try:
        # No message in flight: an unsent ack would hold the library's shutdown for its 60 s retry.
        await wait_for(lambda: "gcp" in state and state["gcp"].state == "up" and source._streams)
        await asyncio.to_thread(emu.stop)
        with pytest.raises(Transient):
            await asyncio.wait_for(task, 60)
    finally:
        task.cancel()
        if emu.proc is None:
            await asyncio.to_thread(emu.start)
        await inst.close()
    assert state["gcp"].state == "down" and state["gcp"].last_error
