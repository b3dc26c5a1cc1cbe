"""Flow steps through the daemon on real servers: a zip on OpenSSH's SFTP unpacked into a
folder, a signed PGP file decrypted (made with Debian's ``gpg`` in a private home), files
encrypted onto SFTP that ``gpg`` then decrypts, gzip decompressed and compressed; and bad
input (a corrupt zip, an archive bomb, truncated gzip, PGP for another key or with a bad
signature), each a failed item naming its step with the source file left where it was, then
delivered by a retry once the cause is fixed."""

from __future__ import annotations

import asyncio
import gzip
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from conveyor.config import load_config
from conveyor.errors import ConfigError
from conveyor.payload.payload import stable_id
from tests.backends.local import LocalBackend
from tests.backends.sftp import SftpBackend, sftp_openssh_backend, sshd
from tests.harness import DaemonProcess, running, sidecars, wait_for, write_config
from tests.servers.ops import CONVEYOR, free_port

__all__ = ["sftp_openssh_backend", "sshd"]

pytestmark = pytest.mark.skipif(shutil.which("gpg") is None, reason="needs Debian's gnupg (scripts/test-setup)")


class Gpg:
    """A throwaway gpg home with keys made for the test, and their files exported."""

    def __init__(self, home: Path) -> None:
        self.home = home
        home.mkdir(mode=0o700, parents=True)

    def run(self, *args: str, data: bytes | None = None) -> bytes:
        cmd = ["gpg", "--homedir", str(self.home), "--batch", "--yes", "--pinentry-mode", "loopback", *args]
        return subprocess.run(cmd, input=data, capture_output=True, check=True).stdout

    def key(self, uid: str, passphrase: str = "") -> tuple[Path, Path]:
        """A new key: its (public, private) key files."""
        self.run("--passphrase", passphrase, "--quick-gen-key", uid, "future-default", "default", "never")
        pub = self.home.parent / f"{uid.split('@')[0]}.pub.asc"
        sec = self.home.parent / f"{uid.split('@')[0]}.sec.asc"
        pub.write_bytes(self.run("--armor", "--export", uid))
        sec.write_bytes(self.run("--passphrase", passphrase, "--armor", "--export-secret-keys", uid))
        return pub, sec

    def encrypt(self, data: bytes, to: str, sign: str | None = None, passphrase: str = "") -> bytes:
        extra = ["--local-user", sign, "--sign", "--passphrase", passphrase] if sign else []
        return self.run("--trust-model", "always", "--encrypt", "--recipient", to, *extra, data=data)

    def decrypt(self, data: bytes, passphrase: str) -> tuple[bytes, str]:
        """The plaintext and gpg's status lines."""
        status = self.home.parent / "status.txt"
        out = self.run("--passphrase", passphrase, "--status-file", str(status), "--decrypt", data=data)
        return out, status.read_text()


@pytest.fixture
def gpg(tmp_path: Path) -> Gpg:
    return Gpg(tmp_path / "keys" / "home")


def zipped(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(name, data)
    return buf.getvalue()


def files_under(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in folder.rglob("*")
        if p.is_file() and not p.name.endswith((".meta.json", ".tmp"))
    }


def to_dir(out: Path, **over: Any) -> dict[str, Any]:
    return {"type": "directory", "path": str(out), "filename": "{name}", **over}


def source(**over: Any) -> dict[str, Any]:
    return {"instance": "in", "path": "", "poll_interval": "100ms", "min_age": "0s", "after": "delete", **over}


async def failed_items(d: Any, flow: str, n: int) -> list[Any]:
    async def enough() -> list[Any] | None:
        items = await d.store.list(flow, "failed")
        return items if len(items) >= n else None

    items: list[Any] = await wait_for(enough, 60)
    return items


async def test_zip_on_sftp_unpacked_into_a_folder(sftp_openssh_backend: SftpBackend, tmp_path: Path) -> None:
    """Each member becomes a file (folders kept through ``{path}``); ids derive from the
    archive's id and the member's path; the lineage names the archive; the zip is deleted only
    after every member is written."""
    members = {"a/one.csv": b"1,2\n", "two.txt": b"two" * 1000, "a/b/three.bin": os.urandom(5000)}
    sftp_openssh_backend.put("in/batch.zip", zipped(members))
    out = tmp_path / "out"
    cfg = write_config(
        tmp_path,
        {"in": sftp_openssh_backend.instance_config()},
        {
            "f": {
                "source": source(path="in"),
                "steps": [{"unpack": "zip"}],
                "target": to_dir(out, path=f"{out}/{{path}}", sidecar=True),
            }
        },
    )
    async with running(cfg):
        await wait_for(lambda: files_under(out) == members and not sftp_openssh_backend.exists("in/batch.zip"), 60)
    docs = {d["name"]: d for d in sidecars(out) + sidecars(out / "a") + sidecars(out / "a" / "b")}
    assert set(docs) == {"one.csv", "two.txt", "three.bin"}
    parents = {d["lineage"][0]["parent"] for d in docs.values()}
    assert len(parents) == 1
    parent = parents.pop()
    for d in docs.values():
        (entry,) = d["lineage"]
        assert entry["step"] == 0 and entry["kind"] == "unpack"
        assert d["id"] == stable_id(parent, 0, entry["member"])
        assert d["file"]["path"] == "in/batch.zip"


async def test_tar_gz_unpacked_then_each_member_compressed(tmp_path: Path) -> None:
    """Two steps in a row: a tar.gz unpacked, each member gzip'd (``x`` → ``x.gz``), its lineage two entries."""
    src = LocalBackend(tmp_path / "src")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for name, data in {"x.csv": b"x" * 10_000, "d/y.csv": b"y"}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    src.put("t.tar.gz", buf.getvalue())
    out = tmp_path / "out"
    cfg = write_config(
        tmp_path,
        {"in": src.instance_config()},
        {
            "f": {
                "source": source(),
                "steps": [{"unpack": "tar.gz"}, {"compress": {"format": "gzip", "level": 9}}],
                "target": to_dir(out, path=f"{out}/{{path}}"),
            }
        },
    )
    async with running(cfg):
        await wait_for(lambda: set(files_under(out)) == {"x.csv.gz", "d/y.csv.gz"}, 30)
    got = files_under(out)
    assert gzip.decompress(got["x.csv.gz"]) == b"x" * 10_000
    assert gzip.decompress(got["d/y.csv.gz"]) == b"y"
    (doc,) = [d for d in sidecars(out) if d["name"] == "x.csv.gz"]
    assert [(e["step"], e["kind"]) for e in doc["lineage"]] == [(0, "unpack"), (1, "compress")]


async def test_gzip_decompressed_and_auto_passes_plain_files(tmp_path: Path) -> None:
    src = LocalBackend(tmp_path / "src")
    big = b"id,name\n" + b"".join(b"%d,row %d\n" % (i, i) for i in range(300_000))  # spills to the spool
    src.put("gz/x.csv.gz", gzip.compress(big))
    src.put("gz/two.csv.gz", gzip.compress(b"a\n") + gzip.compress(b"b\n"))  # two members: one stream
    src.put("auto/plain.csv", b"plain")
    src.put("auto/p.tgz", gzip.compress(b"tar bytes"))
    out = tmp_path / "out"
    cfg = write_config(
        tmp_path,
        {"in": src.instance_config()},
        {
            "gz": {"source": source(path="gz"), "steps": [{"decompress": "gzip"}], "target": to_dir(out)},
            "auto": {"source": source(path="auto"), "steps": [{"decompress": "auto"}], "target": to_dir(out)},
        },
        spool_threshold="64KiB",
    )
    async with running(cfg):
        await wait_for(lambda: len(files_under(out)) == 4, 30)
    assert files_under(out) == {"x.csv": big, "two.csv": b"a\nb\n", "plain.csv": b"plain", "p.tar": b"tar bytes"}


async def test_signed_pgp_file_decrypted_into_a_folder(
    sftp_openssh_backend: SftpBackend, gpg: Gpg, tmp_path: Path
) -> None:
    """A file encrypted for us and signed by the partner, read over SFTP: decrypted, ``.pgp``
    dropped from its name, the signature required and found."""
    ours_pub, ours_sec = gpg.key("us@example.org", "open sesame")
    partner_pub, _ = gpg.key("partner@example.org")
    secret = b"account,amount\n1,100\n" * 50_000
    sftp_openssh_backend.put("in/pay.csv.pgp", gpg.encrypt(secret, "us@example.org", sign="partner@example.org"))
    passfile = tmp_path / "keys" / "pass"
    passfile.write_text("open sesame\n")
    out = tmp_path / "out"
    step = {"private_key_file": str(ours_sec), "passphrase": f"${{file:{passfile}}}", "verify_with": [str(partner_pub)]}
    cfg = write_config(
        tmp_path,
        {"in": sftp_openssh_backend.instance_config()},
        {"f": {"source": source(path="in"), "steps": [{"decrypt": step}], "target": to_dir(out)}},
    )
    async with running(cfg):
        await wait_for(lambda: files_under(out) == {"pay.csv": secret}, 60)
        await wait_for(lambda: not sftp_openssh_backend.exists("in/pay.csv.pgp"), 30)
    assert ours_pub.exists()


async def test_encrypted_onto_sftp_decrypts_with_gpg(
    sftp_openssh_backend: SftpBackend, gpg: Gpg, tmp_path: Path
) -> None:
    """Local files encrypted for a partner and signed with our key land on SFTP as ``.pgp``;
    ``gpg`` decrypts them and reports a good signature by our key."""
    partner_pub, _ = gpg.key("partner@example.org", "theirs")
    _, ours_sec = gpg.key("us@example.org", "ours")
    src = LocalBackend(tmp_path / "src")
    data = os.urandom(3 * 1024 * 1024)
    src.put("report.bin", data)
    cfg = write_config(
        tmp_path,
        {"in": src.instance_config(), "partner": sftp_openssh_backend.instance_config()},
        {
            "f": {
                "source": source(),
                "steps": [
                    {"encrypt": {"recipients": [str(partner_pub)], "sign_with": str(ours_sec), "passphrase": "ours"}}
                ],
                "target": {"instance": "partner", "path": "outbox", "filename": "{name}"},
            }
        },
    )
    async with running(cfg):
        await wait_for(lambda: sftp_openssh_backend.exists("outbox/report.bin.pgp"), 60)
    plain, status = gpg.decrypt(sftp_openssh_backend.read("outbox/report.bin.pgp"), "theirs")
    assert plain == data
    assert "GOODSIG" in status and "us@example.org" in status


async def test_bad_input_fails_naming_the_step_and_retry_works_once_fixed(gpg: Gpg, tmp_path: Path) -> None:
    """Each bad file is a failed item whose error names the step; its source file stays where it
    was; good files keep flowing; after the cause is fixed (a key file replaced, the limit
    raised) ``retry`` delivers it."""
    ours_pub, ours_sec = gpg.key("us@example.org")
    other_pub, other_sec = gpg.key("other@example.org")
    partner_pub, partner_sec = gpg.key("partner@example.org")
    stranger_pub, _ = gpg.key("stranger@example.org")
    key_file = tmp_path / "keys" / "current.sec.asc"
    shutil.copy(other_sec, key_file)  # the wrong key, at first
    src = LocalBackend(tmp_path / "src")
    src.put("zip/corrupt.zip", zipped({"a": b"a" * 1000})[:-30])
    src.put("zip/bomb.zip", zipped({"zeros": bytes(8 * 1024 * 1024)}))
    src.put("zip/good.zip", zipped({"fine.txt": b"fine"}))
    src.put("zip/slip.zip", zipped({"ok.txt": b"ok", "../../etc/evil": b"x"}))
    src.put("ratio/zeros.zip", zipped({"zeros": bytes(80 * 1024 * 1024)}))  # about 1000:1
    src.put("gz/cut.csv.gz", gzip.compress(os.urandom(100_000))[:-5000])
    src.put("gz/ok.csv.gz", gzip.compress(b"ok"))
    src.put("pgp/for-us.pgp", gpg.encrypt(b"for us", "us@example.org", sign="partner@example.org"))
    src.put("pgp/bad-sig.pgp", gpg.encrypt(b"forged", "us@example.org", sign="stranger@example.org"))
    src.put("pgp/unsigned.pgp", gpg.encrypt(b"unsigned", "us@example.org"))
    src.put("bomb/zeros.pgp", gpg.encrypt(bytes(4 * 1024 * 1024), "us@example.org"))  # compressed inside
    out = tmp_path / "out"
    decrypt = {"private_key_file": str(key_file), "verify_with": [str(partner_pub)]}

    port = free_port()

    def config(max_size: str) -> None:
        write_config(
            tmp_path,
            {"in": src.instance_config()},
            {
                "zip": {
                    "source": source(path="zip"),
                    "steps": [{"unpack": {"format": "zip", "max_size": max_size}}],
                    "target": to_dir(out / "zip"),
                    "retry": {"attempts": 1},
                },
                "ratio": {
                    "source": source(path="ratio"),
                    "steps": [{"unpack": "zip"}],
                    "target": to_dir(out / "ratio"),
                    "retry": {"attempts": 1},
                },
                "pgp-bomb": {
                    "source": source(path="bomb"),
                    "steps": [{"decrypt": {"private_key_file": str(ours_sec), "max_size": "1MiB"}}],
                    "target": to_dir(out / "bomb"),
                    "retry": {"attempts": 1},
                },
                "gz": {
                    "source": source(path="gz"),
                    "steps": [{"decompress": "gzip"}],
                    "target": to_dir(out / "gz"),
                    "retry": {"attempts": 1},
                },
                "pgp": {
                    "source": source(path="pgp"),
                    "steps": [{"decrypt": decrypt}],
                    "target": to_dir(out / "pgp"),
                    "retry": {"attempts": 1},
                },
            },
            health={"listen": f"127.0.0.1:{port}"},
        )

    config("1MiB")
    cfg = tmp_path / "conveyor.yaml"
    async with running(cfg) as d:
        zip_failed = await failed_items(d, "zip", 3)
        gz_failed = await failed_items(d, "gz", 1)
        pgp_failed = await failed_items(d, "pgp", 3)
        await wait_for(lambda: files_under(out / "zip") == {"fine.txt": b"fine"}, 30)
        await wait_for(lambda: files_under(out / "gz") == {"ok.csv": b"ok"}, 30)
        errors = {i.name: i.last_error for i in zip_failed + gz_failed + pgp_failed}
        assert "steps[0] unpack: corrupt zip archive" in errors["corrupt.zip"]
        assert errors["bomb.zip"] == "steps[0] unpack: members declare 8388608 bytes, over max_size (1048576)"
        (bomb,) = await failed_items(d, "pgp-bomb", 1)
        assert (
            bomb.last_error == "steps[0] decrypt: more than 1048576 bytes decrypted, over max_size: a compression bomb?"
        )
        assert src.exists("bomb/zeros.pgp") and files_under(out / "bomb") == {}
        (ratio,) = await failed_items(d, "ratio", 1)
        assert ratio.last_error.startswith("steps[0] unpack: more than 200 times the input's")
        assert "over max_ratio: an archive bomb?" in ratio.last_error and src.exists("ratio/zeros.zip")
        assert (
            errors["slip.zip"]
            == "steps[0] unpack: member '../../etc/evil' points outside the archive (absolute or '..')"
        )
        assert "steps[0] decompress: truncated gzip data" in errors["cut.csv.gz"]
        assert "steps[0] decrypt: cannot decrypt" in errors["for-us.pgp"]
        assert "steps[0] decrypt:" in errors["bad-sig.pgp"]
        for name in ("corrupt.zip", "bomb.zip", "slip.zip", "cut.csv.gz", "for-us.pgp", "bad-sig.pgp", "unsigned.pgp"):
            assert src.exists(f"{'zip' if 'zip' in name else 'gz' if 'gz' in name else 'pgp'}/{name}")
        assert files_under(out / "pgp") == {}

        shutil.copy(ours_sec, key_file)  # the key it was encrypted for, now
        for item in pgp_failed:
            ledger = await asyncio.create_subprocess_exec(
                *CONVEYOR, "ledger", "-c", str(cfg), "pgp", "--retry", item.id, stdout=asyncio.subprocess.PIPE
            )
            said, _ = await ledger.communicate()
            assert ledger.returncode == 0 and b"delivered again" in said
        await wait_for(lambda: files_under(out / "pgp") == {"for-us": b"for us"}, 30)
        pgp_failed = await failed_items(d, "pgp", 2)
        errors = {i.name: i.last_error for i in pgp_failed}
        assert re.fullmatch(
            "steps\\[0\\] decrypt: signed by key [0-9A-F]{16}, which is in no verify_with file", errors["bad-sig.pgp"]
        )
        assert errors["unsigned.pgp"] == "steps[0] decrypt: no signature, and verify_with requires one"
        assert src.exists("pgp/bad-sig.pgp") and not src.exists("pgp/for-us.pgp")
    assert ours_pub.exists() and other_pub.exists() and stranger_pub.exists() and partner_sec.exists()

    config("64MiB")  # the bomb limit raised: the same item retried goes through
    async with running(cfg) as d:
        (bomb,) = [i for i in await d.store.list("zip", "failed") if i.name == "bomb.zip"]
        assert await d.store.retry("zip", bomb.id)
        await wait_for(lambda: "zeros" in files_under(out / "zip"), 30)
    assert files_under(out / "zip")["zeros"] == bytes(8 * 1024 * 1024)


def test_config_errors_name_the_step(tmp_path: Path) -> None:
    """Two kinds in one step, an unknown format and unpack into a broker are config errors with
    their key path; a missing key file is one for ``conveyor check``."""
    src = LocalBackend(tmp_path / "src")
    cfg = write_config(
        tmp_path,
        {
            "in": src.instance_config(),
            "mq": {"type": "rabbitmq", "url": "amqp://guest:guest@127.0.0.1:5672/"},
        },
        {
            "a": {
                "source": source(),
                "steps": [{"unpack": "zip", "compress": "gzip"}, {"decompress": "bzip2"}],
                "target": to_dir(tmp_path / "out"),
            },
            "b": {
                "source": source(),
                "steps": [{"decrypt": {"private_key_file": str(tmp_path / "nope.asc")}}],
                "target": to_dir(tmp_path / "out"),
            },
            "c": {
                "source": source(),
                "steps": [{"unpack": "zip"}],
                "target": {"instance": "mq", "exchange": "", "routing_key": "q"},
            },
        },
    )
    with pytest.raises(ConfigError) as e:
        load_config(cfg)
    text = str(e.value)
    assert "give exactly one of decompress, compress, unpack, decrypt, encrypt, split, collect per step (got 2)" in text
    for key, message in (
        ("flows.a.steps[0]", "give exactly one of"),
        ("flows.a.steps[1].decompress.format", "must be 'gzip' or 'auto'"),
        ("flows.c.steps[0].unpack", "unpack needs a file or directory target"),
    ):
        assert re.search(rf"{re.escape(key)} \(line \d+\): {re.escape(message)}", text), (key, text)
    doc = yaml.safe_load(cfg.read_text())
    doc["flows"] = {"b": doc["flows"]["b"]}
    cfg.write_text(yaml.safe_dump(doc))
    check = subprocess.run(
        [sys.executable, "-m", "conveyor", "check", "-c", str(cfg)], capture_output=True, text=True, check=False
    )
    assert check.returncode != 0
    missing = tmp_path / "nope.asc"
    assert f"flows.b.steps[0].decrypt.private_key_file: cannot read the key file {missing}" in check.stderr


async def test_unpack_redone_after_kill9_gives_the_same_files(tmp_path: Path) -> None:
    """``conveyor run`` killed with SIGKILL while an archive is being unpacked: the restarted
    daemon unpacks it again, the members already written are replaced under the same names with
    the same ids, every member arrives, and the archive is deleted only at the end."""
    src = LocalBackend(tmp_path / "src")
    members = {f"m{i:02}.bin": os.urandom(1024 * 1024) for i in range(60)}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    out = tmp_path / "out"
    cfg = write_config(
        tmp_path,
        {"in": src.instance_config()},
        {"f": {"source": source(), "steps": [{"unpack": "zip"}], "target": to_dir(out, sidecar=True)}},
    )
    src.put("big.zip", buf.getvalue())
    first = DaemonProcess(cfg).start()
    try:
        await wait_for(lambda: len(files_under(out)) >= 3, 60, 0.01)
    finally:
        first.kill9()
    before = {d["name"]: d["id"] for d in sidecars(out)}
    assert 0 < len(files_under(out)) < len(members), "the kill came after the last member"
    assert src.exists("big.zip")
    second = DaemonProcess(cfg).start()
    try:
        await wait_for(lambda: not src.exists("big.zip"), 60)
    finally:
        second.stop()
    assert files_under(out) == members
    after = {d["name"]: d["id"] for d in sidecars(out)}
    assert set(after) == set(members)
    assert all(after[name] == id for name, id in before.items())


async def test_without_verify_with_a_signature_is_not_required(gpg: Gpg, tmp_path: Path) -> None:
    """Without ``verify_with`` a file signed by a key conveyor does not know (gpg exits 2 for it)
    and an unsigned one are both decrypted; armored input too."""
    _, ours_sec = gpg.key("us@example.org")
    gpg.key("stranger@example.org")
    src = LocalBackend(tmp_path / "src")
    src.put("signed.csv.gpg", gpg.encrypt(b"signed", "us@example.org", sign="stranger@example.org"))
    src.put("plain.csv.asc", gpg.run("--armor", "--trust-model", "always", "-r", "us@example.org", "-e", data=b"p"))
    out = tmp_path / "out"
    cfg = write_config(
        tmp_path,
        {"in": src.instance_config()},
        {"f": {"source": source(), "steps": [{"decrypt": {"private_key_file": str(ours_sec)}}], "target": to_dir(out)}},
    )
    async with running(cfg):
        await wait_for(lambda: files_under(out) == {"signed.csv": b"signed", "plain.csv": b"p"}, 30)


async def test_tampered_signed_data_is_a_bad_signature(gpg: Gpg, tmp_path: Path) -> None:
    """A file whose signed data was changed after signing (gpg reports BADSIG for it) is a failed
    item naming the step and the bad signature; the source file stays where it was, and a good
    file beside it is delivered."""
    _, ours_sec = gpg.key("us@example.org")
    partner_pub, _ = gpg.key("partner@example.org")
    signed = bytearray(
        gpg.run("--compress-algo", "none", "--local-user", "partner@example.org", "--sign", data=b"amount,100\n")
    )
    signed[signed.index(b"100")] = ord("9")  # the literal data changed: amount,900
    # --no-literal encrypts the (tampered) signed packets as they are, rather than as a file's bytes
    forged = gpg.run(
        "--trust-model",
        "always",
        "--no-literal",
        "--compress-algo",
        "none",
        "-r",
        "us@example.org",
        "-e",
        data=bytes(signed),
    )
    src = LocalBackend(tmp_path / "src")
    src.put("forged.csv.pgp", forged)
    src.put("good.csv.pgp", gpg.encrypt(b"amount,100\n", "us@example.org", sign="partner@example.org"))
    out = tmp_path / "out"
    decrypt = {"private_key_file": str(ours_sec), "verify_with": [str(partner_pub)]}
    cfg = write_config(
        tmp_path,
        {"in": src.instance_config()},
        {"f": {"source": source(), "steps": [{"decrypt": decrypt}], "target": to_dir(out), "retry": {"attempts": 1}}},
    )
    async with running(cfg) as d:
        (item,) = await failed_items(d, "f", 1)
        await wait_for(lambda: files_under(out) == {"good.csv": b"amount,100\n"}, 30)
    assert item.name == "forged.csv.pgp"
    assert item.last_error == (
        "steps[0] decrypt: bad signature: the file was changed after it was signed, or the signature is forged"
    )
    assert src.exists("forged.csv.pgp") and not src.exists("good.csv.pgp")
