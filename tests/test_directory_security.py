"""The directory target against a local user who can write into its folder, and payloads named to
pass for a sidecar: nothing is written through a planted symlink, a planted FIFO blocks nothing,
no sidecar is forged, nothing planted makes a payload count as delivered, and delivered files get
the configured mode whatever the umask. Real files, FIFOs and symlinks; RabbitMQ is the real broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor.errors import Rejected, Transient
from conveyor.payload import Body, Payload, Spool
from conveyor.targets.directory import target as target_module
from conveyor.targets.directory.config import DirectoryTargetConfig
from conveyor.targets.directory.target import DirectoryTarget
from tests.harness import bodies, running, wait_for, write_config
from tests.servers.rabbitmq import Vhost, declare, publish, rabbit_vhost_fixture  # noqa: F401 (fixture)


def payload(pid: str, data: bytes, name: str | None = "x.csv") -> Payload:
    return Payload(id=pid, flow="f", source_instance="i", source_type="local", body=Body.from_bytes(data), name=name)


def target(folder: Path, **cfg: Any) -> DirectoryTarget:
    return DirectoryTarget("f", DirectoryTargetConfig(type="directory", path=str(folder), **cfg))


def body_of(kind: str, tmp_path: Path, data: bytes) -> Body:
    """A body in memory, a spool file (hard-linked into place), or a file read in place (copied)."""
    if kind == "memory":
        return Body.from_bytes(data)
    if kind == "spooled":
        spool = Spool(tmp_path / "spool", threshold=10)
        spool.prepare()
        w = spool.writer()
        w.write(data)
        return w.finish()
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    return Body.from_file(src, owned=False)


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


# --- temporary files ---------------------------------------------------------------------------


async def test_symlinks_planted_at_temp_names_redirect_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A local user plants symlinks to a victim file at the temp names a delivery will use: the
    old predictable ``pid-counter`` names, and (drawing the random part is forced here, to aim
    exactly) the very name the next temp file gets. The victim keeps its bytes; the delivery
    goes to a fresh name and succeeds."""
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "state.db"
    victim.write_bytes(b"precious")
    for n in range(3000):  # pid-counter names, for the body and the sidecar
        for suffix in (".tmp", ".meta.tmp"):
            os.symlink(victim, out / f".p1.{os.getpid()}-{n}{suffix}")
    draws = iter(
        [
            "aaaaaaaaaaaaaaaa",
            "aaaaaaaaaaaaaaaa",
            "bbbbbbbbbbbbbbbb",
            "bbbbbbbbbbbbbbbb",
            "cccccccccccccccc",
            "dddddddddddddddd",
        ]
    )

    class Forced:
        @staticmethod
        def token_hex(n: int) -> str:
            return next(draws)

    monkeypatch.setattr(target_module, "secrets", Forced, raising=False)
    os.symlink(victim, out / ".p1.aaaaaaaaaaaaaaaa.tmp")
    os.symlink(victim, out / ".p1.bbbbbbbbbbbbbbbb.meta.tmp")
    t = target(out)
    try:
        await t.deliver(payload("p1", b"attack"))
    finally:
        await t.close()
    assert victim.read_bytes() == b"precious"
    assert (out / "p1").read_bytes() == b"attack" and not (out / "p1").is_symlink()
    assert json.loads((out / "p1.meta.json").read_text())["id"] == "p1"


@pytest.mark.parametrize("kind", ["memory", "spooled", "file"])
async def test_a_symlink_at_the_final_names_is_replaced_not_followed(tmp_path: Path, kind: str) -> None:
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    os.symlink(victim, out / "p1")
    os.symlink(victim, out / "p1.meta.json")
    data = b"z" * 5000
    body = body_of(kind, tmp_path, data)
    t = target(out)
    try:
        await t.deliver(Payload(id="p1", flow="f", source_instance="i", source_type="sftp", body=body, name="b"))
    finally:
        await t.close()
    assert victim.read_bytes() == b"precious"
    assert not (out / "p1").is_symlink() and (out / "p1").read_bytes() == data
    assert not (out / "p1.meta.json").is_symlink()


async def test_a_fifo_planted_as_a_sidecar_blocks_nothing(tmp_path: Path) -> None:
    """Reading what sits at a sidecar's name must not open a FIFO for reading (which waits for a
    writer for ever, and with it every later delivery on the folder's writer thread)."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "p1").write_bytes(b"old")
    fifo = out / "p1.meta.json"
    os.mkfifo(fifo)
    os.mkfifo(out / "p2")  # and one at a body's name
    t = target(out)
    try:
        await asyncio.wait_for(t.deliver(payload("p1", b"new")), 10)
        await asyncio.wait_for(t.deliver(payload("p2", b"two")), 10)
        await asyncio.wait_for(t.deliver(payload("p3", b"three")), 10)
    finally:
        with contextlib.suppress(OSError):  # let a blocked reader (the bug) go, so the run can end
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        await t.close()
    assert bodies(out) == {"p1": b"new", "p2": b"two", "p3": b"three"}
    assert stat.S_ISREG((out / "p1.meta.json").lstat().st_mode)


async def test_a_folder_swapped_for_a_symlink_is_not_followed(tmp_path: Path) -> None:
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    elsewhere.mkdir()
    t = target(out)
    try:
        await t.deliver(payload("p1", b"one"))
        out.rename(tmp_path / "out.old")
        out.symlink_to(elsewhere)
        with pytest.raises(Transient, match="not a folder"):
            await t.deliver(payload("p2", b"two"))
    finally:
        await t.close()
    assert list(elsewhere.iterdir()) == []
    assert bodies(tmp_path / "out.old") == {"p1": b"one"}


async def test_a_removed_folder_is_made_again(tmp_path: Path) -> None:
    out = tmp_path / "out"
    t = target(out)
    try:
        await t.deliver(payload("p1", b"one"))
        for p in out.iterdir():
            p.unlink()
        out.rmdir()
        await t.deliver(payload("p2", b"two"))
    finally:
        await t.close()
    assert bodies(out) == {"p2": b"two"}


# --- forged sidecars ---------------------------------------------------------------------------


@pytest.mark.parametrize("filename", ["{id}", "{name}"])
async def test_a_payload_named_like_a_sidecar_does_not_take_its_place(tmp_path: Path, filename: str) -> None:
    """A partner's file ``a.csv.meta.json`` (or a message id ``a.csv.meta.json``) is delivered as
    ``a.csv.meta.json_``: a.csv's sidecar stays a.csv's, and the payload is not lost either."""
    out = tmp_path / "out"
    forged = json.dumps({"id": "somebody-else", "sha256": "0" * 64}).encode()
    t = target(out, filename=filename)
    try:
        await t.deliver(payload("a.csv", b"real", name="a.csv"))
        await t.deliver(payload("a.csv.meta.json", forged, name="a.csv.meta.json"))
        await t.deliver(payload("a.csv.meta.json_", b"third", name="a.csv.meta.json_"))
    finally:
        await t.close()
    meta = json.loads((out / "a.csv.meta.json").read_text())
    assert meta["id"] == "a.csv" and meta["sha256"] == hashlib.sha256(b"real").hexdigest()
    assert bodies(out) == {"a.csv": b"real", "a.csv.meta.json_": forged, "a.csv.meta.json__": b"third"}
    assert json.loads((out / "a.csv.meta.json_.meta.json").read_text())["id"] == "a.csv.meta.json"


async def test_a_partner_file_named_like_a_sidecar_cannot_forge_one(tmp_path: Path) -> None:
    """Through the daemon: a local source folder holds ``a.csv`` and ``a.csv.meta.json``."""
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    inbox.mkdir()
    forged = json.dumps({"id": "forged", "sha256": "0" * 64}).encode()
    (inbox / "a.csv").write_bytes(b"real")
    (inbox / "a.csv.meta.json").write_bytes(forged)
    cfg = write_config(
        tmp_path,
        {"box": {"type": "local", "root": str(inbox)}},
        {
            "d": {
                "source": {"instance": "box", "poll_interval": "200ms", "min_age": "0s"},
                "target": {"type": "directory", "path": str(out), "filename": "{name}"},
            }
        },
    )
    async with running(cfg):
        await wait_for(lambda: len(bodies(out)) == 2 and (out / "a.csv.meta.json_.meta.json").exists(), 30)
    assert bodies(out) == {"a.csv": b"real", "a.csv.meta.json_": forged}
    meta = json.loads((out / "a.csv.meta.json").read_text())
    assert meta["name"] == "a.csv" and meta["sha256"] == hashlib.sha256(b"real").hexdigest()


async def test_a_rabbitmq_message_id_cannot_forge_a_sidecar(rabbit_vhost: Vhost, tmp_path: Path) -> None:
    """The publisher picks ``message_id``; one message claims ``order-1.meta.json``."""
    v = rabbit_vhost
    q = v.q("forge")
    await declare(v, q)
    forged = json.dumps({"id": "order-1", "sha256": "0" * 64, "note": "forged"}).encode()
    await publish(v, q, [b"real order"], message_id="order-1")
    await publish(v, q, [forged], message_id="order-1.meta.json")
    await publish(v, q, [b"newline"], message_id="order-2\n")
    out = tmp_path / "out"
    cfg = write_config(
        tmp_path,
        {"mq": v.instance_config()},
        {"d": {"source": {"instance": "mq", "queue": q}, "target": {"type": "directory", "path": str(out)}}},
    )
    async with running(cfg):
        await wait_for(lambda: len(bodies(out)) == 3, 30)
        await wait_for(lambda: v.counts().get(q) == 0, 30)
    assert bodies(out) == {"order-1": b"real order", "order-1.meta.json_": forged, "order-2_": b"newline"}
    meta = json.loads((out / "order-1.meta.json").read_text())
    assert meta["id"] == "order-1" and meta["sha256"] == hashlib.sha256(b"real order").hexdigest()
    assert "note" not in meta


@pytest.mark.parametrize("exists", ["replace", "fail", "skip"])
async def test_a_planted_sidecar_does_not_make_a_payload_count_as_delivered(tmp_path: Path, exists: str) -> None:
    """Someone plants ``x.csv`` and a sidecar naming payload p1 before p1 arrives. p1 is either
    written (replace) or refused (fail, skip): never skipped and reported delivered."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "x.csv").write_bytes(b"forged")
    (out / "x.csv.meta.json").write_text(json.dumps({"id": "p1", "sha256": hashlib.sha256(b"real").hexdigest()}))
    t = target(out, filename="{name}", exists=exists)
    try:
        if exists == "replace":
            await t.deliver(payload("p1", b"real"))
            assert (out / "x.csv").read_bytes() == b"real"
            assert json.loads((out / "x.csv.meta.json").read_text())["size"] == 4
        else:
            with pytest.raises(Rejected, match="already holds"):
                await t.deliver(payload("p1", b"real"))
    finally:
        await t.close()


@pytest.mark.parametrize("sidecar_id", ["p1", "other"])
async def test_skip_with_a_sidecar_and_no_body_writes(tmp_path: Path, sidecar_id: str) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "x.csv.meta.json").write_text(json.dumps({"id": sidecar_id}))
    t = target(out, filename="{name}", exists="skip")
    try:
        await t.deliver(payload("p1", b"real"))
    finally:
        await t.close()
    assert (out / "x.csv").read_bytes() == b"real"
    assert json.loads((out / "x.csv.meta.json").read_text())["id"] == "p1"


async def test_skip_counts_the_same_bytes_as_delivered(tmp_path: Path) -> None:
    """The same bytes under the name, whoever's sidecar is beside them: skip writes nothing."""
    out = tmp_path / "out"
    t = target(out, filename="{name}", exists="skip")
    try:
        await t.deliver(payload("p1", b"same"))
        before = (out / "x.csv.meta.json").read_bytes()
        await t.deliver(payload("p2", b"same"))
        assert (out / "x.csv.meta.json").read_bytes() == before
        await t.deliver(payload("p1", b"same"))  # a redelivery
    finally:
        await t.close()


async def test_the_same_bytes_without_a_sidecar_get_theirs(tmp_path: Path) -> None:
    """A delivery cut between its two renames left the body alone: the retry adds the sidecar."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "p1").write_bytes(b"body")
    t = target(out, exists="fail")
    try:
        await t.deliver(payload("p1", b"body"))
    finally:
        await t.close()
    assert json.loads((out / "p1.meta.json").read_text())["id"] == "p1"


async def test_a_folder_at_the_name_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "p1").mkdir(parents=True)
    t = target(out)
    try:
        with pytest.raises(Rejected, match="is a folder"):
            await t.deliver(payload("p1", b"x"))
    finally:
        await t.close()


# --- names -------------------------------------------------------------------------------------


@pytest.mark.parametrize("exists", ["replace", "fail"])
async def test_two_long_names_stay_two_files(tmp_path: Path, exists: str) -> None:
    """Names that share their first 240 characters used to be cut to one name, and then one
    payload replaced (or was refused for) the other."""
    out = tmp_path / "out"
    a, b = "r" * 240 + "-january.csv", "r" * 240 + "-february.csv"
    t = target(out, filename="{name}", exists=exists)
    try:
        await t.deliver(payload("a", b"jan", name=a))
        await t.deliver(payload("b", b"feb", name=b))
    finally:
        await t.close()
    got = bodies(out)
    assert sorted(got.values()) == [b"feb", b"jan"]
    assert all(n.endswith(".csv") and len(os.fsencode(n + ".meta.json")) <= 255 for n in got)


@pytest.mark.parametrize("name", ["é" * 130, "日本" * 60 + ".xml", "😀" * 70])
async def test_long_names_are_measured_in_bytes(tmp_path: Path, name: str) -> None:
    """130 times "é" is 260 bytes: once it failed with ENAMETOOLONG on every retry."""
    out = tmp_path / "out"
    t = target(out, filename="{name}")
    try:
        await t.deliver(payload("p", b"x", name=name))
    finally:
        await t.close()
    (got,) = bodies(out)
    assert len(os.fsencode(got + ".meta.json")) <= 255
    assert got.startswith(name[:50])


async def test_an_id_ending_in_a_newline_is_no_file_name(tmp_path: Path) -> None:
    out = tmp_path / "out"
    t = target(out)
    try:
        await t.deliver(payload("abc\n", b"x"))
    finally:
        await t.close()
    assert bodies(out) == {"abc_": b"x"}


@pytest.mark.parametrize(
    ("policy", "name", "want"),
    [
        ("rename", ".env", "_.env"),
        ("rename", "CON.txt", "CON_.txt"),
        ("rename", "nul", "nul_"),
        ("rename", "a:b?.txt", "a_b_.txt"),
        ("rename", "report.", "report_"),
        ("rename", "plain.csv", "plain.csv"),
        ("keep", ".env", ".env"),
        ("keep", "CON.txt", "CON.txt"),
        ("refuse", ".env", None),
        ("refuse", "COM1", None),
        ("refuse", "plain.csv", "plain.csv"),
    ],
)
async def test_unsafe_names_policy(tmp_path: Path, policy: str, name: str, want: str | None) -> None:
    out = tmp_path / "out"
    t = target(out, filename="{name}", unsafe_names=policy)
    try:
        if want is None:
            with pytest.raises(Rejected, match=r"unsafe_names: refuse"):
                await t.deliver(payload("p", b"x", name=name))
            assert bodies(out) == {}
        else:
            await t.deliver(payload("p", b"x", name=name))
            assert bodies(out) == {want: b"x"}
    finally:
        await t.close()


async def test_the_default_id_name_of_a_device_name_is_renamed(tmp_path: Path) -> None:
    out = tmp_path / "out"
    t = target(out)
    try:
        await t.deliver(payload("AUX", b"x"))
        await t.deliver(payload("msg-1", b"y"))
    finally:
        await t.close()
    assert bodies(out) == {"AUX_": b"x", "msg-1": b"y"}


# --- modes and groups --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["memory", "spooled", "file"])
async def test_delivered_files_are_0640_whatever_the_umask(tmp_path: Path, kind: str) -> None:
    out = tmp_path / "out" / "deeper"
    data = b"q" * 5000
    body = body_of(kind, tmp_path, data)
    t = target(out)
    try:
        with umask(0):
            await t.deliver(Payload(id="p1", flow="f", source_instance="i", source_type="sftp", body=body, name="b"))
    finally:
        await t.close()
    assert stat.S_IMODE((out / "p1").stat().st_mode) == 0o640
    assert stat.S_IMODE((out / "p1.meta.json").stat().st_mode) == 0o640
    assert stat.S_IMODE(out.stat().st_mode) == 0o750, "a folder conveyor makes"
    assert stat.S_IMODE(out.parent.stat().st_mode) == 0o750


async def test_a_world_writable_folder_is_named_in_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from conveyor.targets.folders import writable_folder

    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o1777)
    assert "writable by every user (mode 1777)" in writable_folder(out)
    t = target(out)
    try:
        await t.deliver(payload("p1", b"x"))
    finally:
        await t.close()
    assert any("writable by every user" in r.getMessage() and str(out) in r.getMessage() for r in caplog.records)


async def test_file_mode_and_group_are_set(tmp_path: Path) -> None:
    gid = 4321 if os.geteuid() == 0 else os.getgid()  # root may give any group
    out = tmp_path / "out"
    out.mkdir()
    t = target(out, file_mode="0604", group=str(gid))
    try:
        with umask(0o077):
            await t.deliver(payload("p1", b"x"))
    finally:
        await t.close()
    for name in ("p1", "p1.meta.json"):
        st = (out / name).stat()
        assert stat.S_IMODE(st.st_mode) == 0o604 and st.st_gid == gid


async def test_a_setgid_folder_gives_its_group(tmp_path: Path) -> None:
    """The documented set-up: the folder carries the readers' group and the setgid bit; files keep
    that group (no ``group`` configured) and are readable by it, not by the world."""
    out = tmp_path / "out"
    out.mkdir()
    gid = 4322 if os.geteuid() == 0 else os.getgid()
    os.chown(out, -1, gid)
    out.chmod(0o2770)
    t = target(out)
    try:
        await t.deliver(payload("p1", b"x"))
    finally:
        await t.close()
    st = (out / "p1").stat()
    assert st.st_gid == gid and stat.S_IMODE(st.st_mode) == 0o640


def test_mode_and_group_are_checked_at_load(tmp_path: Path) -> None:
    from tests.test_config import problems

    text = f"""
instances:
  inbox: {{type: local, root: {tmp_path}/in}}
flows:
  a:
    source: {{instance: inbox}}
    target: {{type: directory, path: {tmp_path}/a, file_mode: 0640}}
  b:
    source: {{instance: inbox}}
    target: {{type: directory, path: {tmp_path}/b, file_mode: "0647x", group: no-such-group-here}}
  c:
    source: {{instance: inbox}}
    target: {{type: directory, path: {tmp_path}/c, unsafe_names: sometimes}}
"""
    got = problems(tmp_path, text)
    assert any(
        p.startswith("flows.a.target.file_mode (line 7): write the mode as a quoted octal string") for p in got
    ), got
    assert any(p.startswith("flows.b.target.file_mode (line 10): '0647x' is not a file mode") for p in got), got
    assert any(p.startswith("flows.b.target.group (line 10): no group named 'no-such-group-here'") for p in got), got
    assert any(p.startswith("flows.c.target.unsafe_names (line 13)") for p in got), got
