"""The sftp upload's temp name: stable for a retry of the same body, different once the bytes change,
and, for a local file whose hash is not known, found without reading the whole file first.

Against OpenSSH sshd (the server partners run); the name function itself needs no server.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from conveyor.payload import Body
from conveyor.transfer.tempname import temp_key, temp_name
from tests.backends.sftp import *  # noqa: F403  (the server fixtures)
from tests.backends.sftp import SftpBackend
from tests.test_sftp import instance


async def test_temp_key_known_digest_and_memory_bodies_use_the_hash(tmp_path: Path) -> None:
    data = b"payload bytes"
    digest = hashlib.sha256(data).hexdigest()
    assert await temp_key(Body.from_bytes(data)) == digest
    p = tmp_path / "f.bin"
    p.write_bytes(data)
    assert await temp_key(Body.from_file(p, owned=True, sha256=digest)) == digest


async def test_temp_key_of_a_local_file_follows_its_version_without_hashing_it(tmp_path: Path) -> None:
    p = tmp_path / "f.bin"
    p.write_bytes(b"a" * 1000)
    os.utime(p, ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
    body = Body.from_file(p, owned=False)
    first = await temp_key(body)
    assert body.known_digest is None, "the file must not be hashed just to name the temp file"
    assert await temp_key(Body.from_file(p, owned=False)) == first, "a retry of the same file reuses the name"
    p.write_bytes(b"b" * 1000)  # same size, new content and mtime
    os.utime(p, ns=(1_700_000_000_000_000_001, 1_700_000_000_000_000_001))
    assert await temp_key(Body.from_file(p, owned=False)) != first
    p.write_bytes(b"b" * 1001)
    os.utime(p, ns=(1_700_000_000_000_000_001, 1_700_000_000_000_000_001))  # size alone changed
    assert await temp_key(Body.from_file(p, owned=False)) != first


async def test_upload_of_a_local_file_overwrites_its_own_leftover_temp(
    sftp_openssh_backend: SftpBackend, tmp_path: Path
) -> None:
    """A cut upload leaves its temp file; the retry of the same file writes over it and leaves nothing."""
    backend = sftp_openssh_backend
    src = tmp_path / "local.bin"
    data = os.urandom(3_000_000)
    src.write_bytes(data)
    body = Body.from_file(src, owned=False)
    leftover = temp_name("x.bin", await temp_key(body))
    backend.put(f"out/{leftover}", os.urandom(5_000_000))  # longer than the body: must be truncated
    inst = instance(backend)
    try:
        assert await inst.upload(body, "out/x.bin", exists="replace", chmod=None)
    finally:
        await inst.close()
    assert backend.read("out/x.bin") == data
    assert backend.names("out") == ["x.bin"], "the retry reused the leftover temp name"


async def test_upload_sends_no_ignore_packet_per_data_packet(sftp_openssh_backend: SftpBackend) -> None:
    """asyncssh would put an empty SSH_MSG_IGNORE before every packet; the pool drops them
    (conveyor._compat.asyncssh). 1 MiB travels in 32 KiB channel packets (OpenSSH's limit):
    about 36 data packets plus a dozen requests, where the ignores would double that."""
    inst = instance(sftp_openssh_backend)
    try:
        await inst.check()
        conn = inst.pool._sessions[0].conn
        before = conn._send_seq  # asyncssh's count of packets sent (private: this guards a workaround)
        assert await inst.upload(Body.from_bytes(os.urandom(1 << 20)), "out/y.bin", exists="replace", chmod=None)
        sent = conn._send_seq - before
    finally:
        await inst.close()
    assert 32 <= sent <= 60, f"{sent} packets sent for 1 MiB"


async def test_server_disk_full_is_retried_and_leaves_nothing(
    sftp_openssh_backend: SftpBackend, tmp_path: Path
) -> None:
    """The partner's disk fills mid-upload (OpenSSH sshd, its folder on a 2 MiB tmpfs).
    sftp-server reports ENOSPC as a bare "Failure": that must stay a retryable error (the item
    is not failed for good over someone else's full disk), the temp file goes, and the next
    upload that fits works."""
    from conveyor.errors import Permanent, Transient
    from tests.servers.ops import small_disk

    backend = sftp_openssh_backend
    async with small_disk(backend.mkdir("small")):
        backend.mkdir("small")  # the mount's own root, owned by the server's user
        inst = instance(backend)
        try:
            with pytest.raises(Transient) as e:
                await inst.upload(Body.from_bytes(os.urandom(8 << 20)), "small/big.bin", exists="replace", chmod=None)
            assert not isinstance(e.value, Permanent)
            assert backend.names("small") == [], "the partial temp file was removed"
            assert await inst.upload(Body.from_bytes(b"fits"), "small/a.txt", exists="replace", chmod=None)
            assert backend.read("small/a.txt") == b"fits"
        finally:
            await inst.close()
