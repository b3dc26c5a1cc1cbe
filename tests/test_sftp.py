"""The sftp connector against real servers: asyncssh in-process and OpenSSH sshd.

Auth modes and key formats, host keys in every fingerprint form, file operations, pooling.
Fault cases (dropped connections, timeouts, 1 GiB) are in test_sftp_faults.py.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from conveyor.errors import AuthError, HostKeyError, NotFound, Permanent, Rejected, Transient
from conveyor.payload import Body, Spool
from conveyor.status import StatusBoard
from conveyor.supervisor import retries
from conveyor.transfer.sftp.config import SftpConfig
from conveyor.transfer.sftp.hostkeys import md5_fp, sha256_fp, sha512_fp
from conveyor.transfer.sftp.instance import SftpInstance
from tests.backends.sftp import *  # noqa: F403  (the server fixtures)
from tests.backends.sftp import SftpBackend
from tests.servers.ssh_keys import KeySet
from tests.tcp_proxy import TcpProxy


@pytest.fixture(params=["asyncssh", "openssh"])
def backend(request: pytest.FixtureRequest) -> SftpBackend:
    """Each test runs against both servers."""
    b: SftpBackend = request.getfixturevalue(f"sftp_{request.param}_backend")
    return b


class Counter:
    """A StatusBoard observer counting connect attempts."""

    def __init__(self) -> None:
        self.attempts: list[str] = []

    def on_event(self, kind: str, **f: Any) -> None:
        if kind == "connect_attempt":
            self.attempts.append(f["outcome"])


def instance(backend: SftpBackend, board: StatusBoard | None = None, **over: Any) -> SftpInstance:
    from conveyor.interfaces import Context

    cfg = SftpConfig.model_validate(backend.instance_config(**over))
    board = board or StatusBoard()
    board.add_instance("partner", "sftp", cfg.describe())
    return SftpInstance("partner", cfg, Context(spool=Spool(Path("/nonexistent")), status=board))


async def download(inst: SftpInstance, path: str, tmp_path: Path) -> bytes:
    f = await inst.stat(path)
    assert f is not None
    spool = Spool(tmp_path / "spool", threshold=1 << 20)
    spool.prepare()
    w = spool.writer()
    await inst.download(f, w)
    body = w.finish()
    data = body.data() if body.in_memory else Path(str(body.path)).read_bytes()
    body.release()
    return data


# --------------------------------------------------------------------------- auth
async def test_password_auth(backend: SftpBackend) -> None:
    inst = instance(backend)
    try:
        desc = await inst.check()
    finally:
        await inst.close()
    assert desc.startswith(f"{inst.config.username}@127.0.0.1:{backend.port} (ssh-ed25519, SHA256:")


@pytest.mark.parametrize(
    "key", ["rsa-pem", "rsa-pem-pass", "ed25519", "ed25519-pass", "ecdsa", "ecdsa-pass", "rsa", "rsa-pass"]
)
async def test_key_auth_every_format(backend: SftpBackend, ssh_client_keys: KeySet, key: str) -> None:
    path = ssh_client_keys.keys[key]
    if key.startswith("rsa-pem"):
        assert "BEGIN RSA PRIVATE KEY" in path.read_text()
    inst = instance(backend, password=None, private_key_file=str(path), passphrase=ssh_client_keys.passphrase(key))
    try:
        assert "ssh-ed25519" in await inst.check()
    finally:
        await inst.close()


async def test_inline_private_key(backend: SftpBackend, ssh_client_keys: KeySet) -> None:
    text = ssh_client_keys.keys["rsa-pem-pass"].read_text()
    inst = instance(backend, password=None, private_key=text, passphrase=ssh_client_keys.passphrase("rsa-pem-pass"))
    try:
        await inst.check()
    finally:
        await inst.close()


async def _auth_fails(backend: SftpBackend, **over: Any) -> str:
    board = StatusBoard()
    counter = Counter()
    board.observers.append(counter)
    inst = instance(backend, board, max_connection_attempts=3, **over)
    try:
        with pytest.raises(AuthError) as ei:
            await inst.check()
    finally:
        await inst.close()
    assert counter.attempts == ["error"], "an auth failure must not be retried within the connect"
    st = board.instances["partner"]
    assert st.state == "down" and st.permanent
    return str(ei.value)


async def test_wrong_password(backend: SftpBackend) -> None:
    msg = await _auth_fails(backend, password="nope")
    assert "wrong username or password" in msg and "nope" not in msg


async def test_wrong_key(backend: SftpBackend, ssh_client_keys: KeySet) -> None:
    msg = await _auth_fails(backend, password=None, private_key_file=str(ssh_client_keys.keys["stranger"]))
    assert "did not accept the private key (ssh-ed25519 SHA256:" in msg


@pytest.mark.parametrize("key", ["rsa-pem-pass", "ed25519-pass"])
async def test_wrong_passphrase(backend: SftpBackend, ssh_client_keys: KeySet, key: str) -> None:
    msg = await _auth_fails(
        backend, password=None, private_key_file=str(ssh_client_keys.keys[key]), passphrase="wrong passphrase"
    )
    assert "wrong passphrase" in msg


async def test_missing_passphrase(backend: SftpBackend, ssh_client_keys: KeySet) -> None:
    msg = await _auth_fails(backend, password=None, private_key_file=str(ssh_client_keys.keys["ecdsa-pass"]))
    assert "encrypted: set passphrase" in msg


# --------------------------------------------------------------------------- host keys
def _forms(blob: bytes) -> list[str]:
    s256 = sha256_fp(blob)
    md5 = md5_fp(blob)
    return [
        s256,
        s256 + "=",
        md5,
        md5.removeprefix("MD5:"),
        md5.removeprefix("MD5:").replace(":", ""),
        sha512_fp(blob),
        sha512_fp(blob).upper(),
    ]


@pytest.mark.parametrize("kind", ["ed25519", "rsa"])
async def test_every_fingerprint_form(backend: SftpBackend, kind: str) -> None:
    """Each form pins the key; a fingerprint of the RSA key works although the server prefers ed25519."""
    for fp in _forms(backend.host_blob(kind)):
        inst = instance(backend, host_fingerprint=fp)
        try:
            desc = await inst.check()
        finally:
            await inst.close()
        assert f"(ssh-{kind}," in desc, fp


async def test_md5_of_rsa_key_then_one_handshake(backend: SftpBackend) -> None:
    """The Patchworks case: MD5 of the RSA key; later connects go straight to RSA."""
    inst = instance(backend, host_fingerprint=md5_fp(backend.host_blob("rsa")), max_connections=1)
    try:
        assert "(ssh-rsa," in await inst.check()
        assert inst.pool.handshakes == 1
        await inst.pool.close()
        await inst.check()  # a reconnect: the cached family is asked for first
        assert inst.pool.handshakes == 2
        assert inst.pool._server._family == "ssh-rsa"
    finally:
        await inst.close()


async def test_pinned_preferred_key_logs_in_on_one_connection(backend: SftpBackend) -> None:
    """The first login with the server's ed25519 key pinned is one connection: no separate read of
    the server's host-key algorithms first (a round trip or two on a distant server)."""
    async with TcpProxy("127.0.0.1", backend.port) as proxy:
        inst = instance(backend, port=proxy.port, host_fingerprint=sha256_fp(backend.host_blob("ed25519")))
        try:
            assert "(ssh-ed25519," in await inst.check()
            assert proxy.connections == 1
        finally:
            await inst.close()


async def test_wrong_fingerprint_names_offered_keys(backend: SftpBackend) -> None:
    backend.put("secret.txt", b"x")
    inst = instance(backend, host_fingerprint="SHA256:" + "A" * 43)
    logins_before = getattr(backend.server, "logins", 0)
    try:
        with pytest.raises(HostKeyError) as ei:
            await inst.list("", False).__anext__()
    finally:
        await inst.close()
    msg = str(ei.value)
    for kind in ("ed25519", "rsa"):
        blob = backend.host_blob(kind)
        assert sha256_fp(blob) in msg and md5_fp(blob) in msg and sha512_fp(blob) in msg
    assert getattr(backend.server, "logins", 0) == logins_before, "no login may be attempted"


async def test_rotated_key_list_form(backend: SftpBackend) -> None:
    old = "SHA256:" + "B" * 43  # the key before rotation, no longer offered
    inst = instance(backend, host_fingerprint=[old, md5_fp(backend.host_blob("rsa"))])
    try:
        assert "(ssh-rsa," in await inst.check()
    finally:
        await inst.close()


async def test_known_hosts(backend: SftpBackend, tmp_path: Path) -> None:
    kh = tmp_path / "known_hosts"
    import base64

    b64 = base64.b64encode(backend.host_blob("rsa")).decode()
    kh.write_text(f"[127.0.0.1]:{backend.port} ssh-rsa {b64}\n")
    inst = instance(backend, host_fingerprint=None, known_hosts=str(kh))
    try:
        assert "(ssh-rsa," in await inst.check()
    finally:
        await inst.close()
    other = base64.b64encode(backend.host_blob("ed25519")).decode()
    kh.write_text(f"[127.0.0.1]:{backend.port + 1} ssh-ed25519 {other}\n")  # another port: no entry
    inst = instance(backend, host_fingerprint=None, known_hosts=str(kh))
    try:
        with pytest.raises(HostKeyError, match="not in known_hosts"):
            await inst.check()
    finally:
        await inst.close()


async def test_host_key_check_off_warns(backend: SftpBackend) -> None:
    board = StatusBoard()
    inst = instance(backend, board, host_fingerprint=None, host_key_check=False)
    try:
        await inst.check()
    finally:
        await inst.close()
    assert any("NOT verified" in w for w in board.instances["partner"].warnings)


# --------------------------------------------------------------------------- operations
async def test_list_stat_download(backend: SftpBackend, tmp_path: Path) -> None:
    data = os.urandom(3_000_000)
    backend.put("in/a.csv", data, mtime=1_700_000_000)
    backend.put("in/b.txt", b"b")
    backend.put("in/sub/c.csv", b"c")
    inst = instance(backend)
    try:
        flat = sorted(f.path for f in [f async for f in inst.list("in", False)])
        assert flat == ["in/a.csv", "in/b.txt"]
        deep = sorted([(f.path, f.size) async for f in inst.list("/in/", True)])
        assert deep == [("in/a.csv", 3_000_000), ("in/b.txt", 1), ("in/sub/c.csv", 1)]
        f = await inst.stat("in/a.csv")
        assert f is not None and f.mtime == 1_700_000_000 and f.name == "a.csv"
        assert await inst.stat("in/sub") is None and await inst.stat("in/nope") is None
        assert await inst.is_dir("in/sub") and not await inst.is_dir("in/a.csv") and not await inst.is_dir("x")
        got = await download(inst, "in/a.csv", tmp_path)
        assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
        with pytest.raises(NotFound):
            [f async for f in inst.list("missing", False)]
    finally:
        await inst.close()


async def test_download_size_changed_is_transient(backend: SftpBackend, tmp_path: Path) -> None:
    backend.put("f.bin", b"x" * 1000)
    inst = instance(backend)
    try:
        f = await inst.stat("f.bin")
        assert f is not None
        backend.put("f.bin", b"x" * 1500)
        w = Spool(tmp_path, threshold=1 << 20).writer()
        with pytest.raises(Transient, match="changed"):
            await inst.download(f, w)
    finally:
        await inst.close()


async def test_upload_exists_modes_and_chmod(backend: SftpBackend) -> None:
    inst = instance(backend)
    try:
        big = os.urandom(5_000_000)
        assert await inst.upload(Body.from_bytes(big), "out/deep/x.bin", exists="replace", chmod=0o640)
        assert backend.read("out/deep/x.bin") == big
        assert stat.S_IMODE((backend.folder / "out/deep/x.bin").stat().st_mode) == 0o640
        assert await inst.upload(Body.from_bytes(b"new"), "out/deep/x.bin", exists="replace", chmod=None)
        assert backend.read("out/deep/x.bin") == b"new"
        assert not await inst.upload(Body.from_bytes(b"skip"), "out/deep/x.bin", exists="skip", chmod=None)
        with pytest.raises(Rejected, match="already exists"):
            await inst.upload(Body.from_bytes(b"fail"), "out/deep/x.bin", exists="fail", chmod=None)
        assert backend.read("out/deep/x.bin") == b"new"
        assert await inst.upload(Body.from_bytes(b"fresh"), "out/deep/y.bin", exists="fail", chmod=None)
        assert backend.names("out/deep") == ["x.bin", "y.bin"], "no temp files left behind"
    finally:
        await inst.close()


async def test_upload_from_spool_file(backend: SftpBackend, tmp_path: Path) -> None:
    p = tmp_path / "body.bin"
    data = os.urandom(2_500_000)
    p.write_bytes(data)
    inst = instance(backend)
    try:
        assert await inst.upload(Body.from_file(p, owned=False), "up.bin", exists="replace", chmod=None)
    finally:
        await inst.close()
    assert backend.read("up.bin") == data


async def test_rename_and_remove(backend: SftpBackend) -> None:
    backend.put("in/a.csv", b"a")
    backend.put("done/a.csv", b"old")
    backend.put("in/b.csv", b"b")
    inst = instance(backend)
    try:
        await inst.rename("in/a.csv", "done/a.csv")  # replaces
        await inst.rename("in/b.csv", "archive/2026/b.csv")  # creates folders
        await inst.remove("done/a.csv")
        await inst.remove("done/a.csv")  # already gone: fine
    finally:
        await inst.close()
    assert backend.names("in") == [] and backend.names("done") == []
    assert backend.read("archive/2026/b.csv") == b"b"


async def test_root_is_applied(backend: SftpBackend) -> None:
    backend.put("base/in/x.txt", b"x")
    inst = instance(backend, root=backend.root.rstrip("/") + "/base")
    try:
        assert [f.path async for f in inst.list("in", False)] == ["in/x.txt"]
    finally:
        await inst.close()


async def test_sessions_reused_across_polls(backend: SftpBackend) -> None:
    backend.put("in/a.csv", b"a")
    inst = instance(backend)
    try:
        for _ in range(5):
            assert [f.path async for f in inst.list("in", False)] == ["in/a.csv"]
        assert inst.pool.handshakes == 1
    finally:
        await inst.close()


async def test_max_connections_bound(backend: SftpBackend, tmp_path: Path) -> None:
    import asyncio

    for i in range(6):
        backend.put(f"m/{i}.bin", os.urandom(400_000))
    inst = instance(backend, max_connections=2)
    try:
        got = await asyncio.gather(*(download(inst, f"m/{i}.bin", tmp_path) for i in range(6)))
        assert all(len(g) == 400_000 for g in got)
        assert 1 <= inst.pool.handshakes <= 2
    finally:
        await inst.close()


async def test_unreachable_is_transient_and_down(tmp_path: Path) -> None:
    from tests.servers.ops import free_port

    board = StatusBoard()
    counter = Counter()
    board.observers.append(counter)
    cfg = SftpConfig.model_validate(
        {
            "type": "sftp",
            "host": "127.0.0.1",
            "port": free_port(),
            "username": "u",
            "password": "p",
            "host_key_check": "off",
            "max_connection_attempts": 2,
        }
    )
    from conveyor.interfaces import Context

    inst = SftpInstance("partner", cfg, Context(spool=Spool(tmp_path), status=board))
    waits = retries["connect"]
    with pytest.raises(Transient):
        await inst.check()
    assert counter.attempts == ["error", "error"]
    assert retries["connect"] - waits == 1  # the pause between the two tries is the supervisor's
    assert board.instances["partner"].state == "down" and not board.instances["partner"].permanent


async def test_listing_refused_exact_file(sftp_asyncssh_backend: SftpBackend, tmp_path: Path) -> None:
    """A server whose readdir is refused: the source path names one exact file, which is stat'ed."""
    b = sftp_asyncssh_backend
    b.put("private/ORD_1.csv", b"order")
    b.server.refuse_listing = True  # type: ignore[union-attr]
    inst = instance(b)
    try:
        assert [f.path async for f in inst.list("private/ORD_1.csv", False)] == ["private/ORD_1.csv"]
        with pytest.raises(Permanent, match="permission denied"):
            [f async for f in inst.list("private", False)]
        assert await download(inst, "private/ORD_1.csv", tmp_path) == b"order"
    finally:
        await inst.close()


async def test_listing_refused_openssh(sftp_openssh_backend: SftpBackend, tmp_path: Path) -> None:
    """On OpenSSH: a folder with execute but no read permission (listing forbidden, files readable)."""
    b = sftp_openssh_backend
    b.put("private/ORD_1.csv", b"order")
    (b.folder / "private").chmod(0o311)
    inst = instance(b)
    try:
        assert [f.path async for f in inst.list("private/ORD_1.csv", False)] == ["private/ORD_1.csv"]
        with pytest.raises(Permanent):
            [f async for f in inst.list("private", False)]
        assert await download(inst, "private/ORD_1.csv", tmp_path) == b"order"
    finally:
        await inst.close()


async def test_replace_without_posix_rename(
    sftp_asyncssh_backend: SftpBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server without the posix-rename extension: replace falls back to remove + rename."""
    import asyncssh.sftp

    exts = [e for e in asyncssh.sftp.SFTPServerHandler._extensions if e[0] != b"posix-rename@openssh.com"]
    monkeypatch.setattr(asyncssh.sftp.SFTPServerHandler, "_extensions", exts)
    b = sftp_asyncssh_backend
    b.put("out/x.txt", b"old")
    inst = instance(b)
    try:
        assert await inst.upload(Body.from_bytes(b"new"), "out/x.txt", exists="replace", chmod=None)
        await inst.rename("out/x.txt", "out/y.txt")
        assert not inst.pool._sessions[0].posix_rename
    finally:
        await inst.close()
    assert b.names("out") == ["y.txt"] and b.read("out/y.txt") == b"new"


async def test_download_shrunk_file_and_empty_file(backend: SftpBackend, tmp_path: Path) -> None:
    backend.put("s.bin", b"x" * 300_000)
    backend.put("empty.bin", b"")
    inst = instance(backend)
    try:
        f = await inst.stat("s.bin")
        assert f is not None
        backend.put("s.bin", b"x" * 1000)
        with pytest.raises(Transient, match="changed"):
            await inst.download(f, Spool(tmp_path, threshold=1 << 20).writer())
        assert await download(inst, "empty.bin", tmp_path) == b""
    finally:
        await inst.close()
