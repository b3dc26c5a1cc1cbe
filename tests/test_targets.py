"""The directory target and uploads to a local instance: atomic, idempotent, contained."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import threading
from pathlib import Path

import pytest

from conveyor.config.base import FileTargetConfig
from conveyor.errors import Rejected
from conveyor.interfaces import Context
from conveyor.payload import Body, Payload, Spool
from conveyor.status import StatusBoard
from conveyor.targets.directory.config import DirectoryTargetConfig
from conveyor.targets.directory.target import DirectoryTarget
from conveyor.targets.directory.writer import THREADS
from conveyor.targets.upload import UploadTarget
from conveyor.transfer.local.config import LocalConfig
from conveyor.transfer.local.instance import LocalInstance


def payload(pid: str, data: bytes, name: str | None = "x.csv") -> Payload:
    return Payload(id=pid, flow="f", source_instance="i", source_type="local", body=Body.from_bytes(data), name=name)


async def test_same_id_twice_leaves_one_copy(tmp_path: Path) -> None:
    t = DirectoryTarget("f", DirectoryTargetConfig(type="directory", path=str(tmp_path)))
    await t.deliver(payload("abc", b"1"))
    first = (tmp_path / "abc").stat().st_mtime_ns
    await t.deliver(payload("abc", b"1"))
    assert sorted(os.listdir(tmp_path)) == ["abc", "abc.meta.json"]
    assert (tmp_path / "abc").stat().st_mtime_ns == first, "rewritten"
    meta = json.loads((tmp_path / "abc.meta.json").read_text())
    assert meta["id"] == "abc" and meta["size"] == 1 and len(meta["sha256"]) == 64


@pytest.mark.parametrize("name", ["../../etc/passwd", "..", "a/b/c", "evil\nname", "\x00nul", "...", "con\\x"])
async def test_templated_names_stay_inside(tmp_path: Path, name: str) -> None:
    out = tmp_path / "out"
    t = DirectoryTarget("f", DirectoryTargetConfig(type="directory", path=str(out), filename="{flow}-{name}"))
    await t.deliver(payload("id1", b"data", name=name))
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert all(p.parent == out for p in files), files
    assert len(files) == 2
    body = next(p for p in files if not p.name.endswith(".meta.json"))
    assert "/" not in body.name and "\n" not in body.name and "\x00" not in body.name


async def test_exists_policy_for_a_different_payload(tmp_path: Path) -> None:
    cfg = DirectoryTargetConfig(type="directory", path=str(tmp_path), filename="{name}", exists="fail")
    t = DirectoryTarget("f", cfg)
    await t.deliver(payload("one", b"1"))
    with pytest.raises(Rejected, match=r"already holds another file \(its sidecar names payload 'one'\)"):
        await t.deliver(payload("two", b"2"))
    with pytest.raises(Rejected, match="already holds payload 'one'"):
        await t.deliver(payload("two", b"1"))  # the same bytes, but another payload's sidecar
    skip = DirectoryTarget("f", cfg.model_copy(update={"exists": "skip"}))
    await skip.deliver(payload("two", b"1"))  # the same bytes are there: nothing is lost
    with pytest.raises(Rejected, match="already holds different bytes"):
        await skip.deliver(payload("two", b"2"))  # other bytes: refused, not dropped
    assert (tmp_path / "x.csv").read_bytes() == b"1"
    replace = DirectoryTarget("f", cfg.model_copy(update={"exists": "replace"}))
    await replace.deliver(payload("two", b"2"))
    assert (tmp_path / "x.csv").read_bytes() == b"2"


async def test_many_folders_share_a_bounded_pool_of_writer_threads(tmp_path: Path) -> None:
    """200 directory targets, three small bodies each under one name: all delivered, the last one
    given to each folder is the one left there (its jobs kept their order), and the writer threads
    number no more than the pool's, not one per folder; they end once the targets are closed."""
    before = threading.active_count()
    cfg = DirectoryTargetConfig(type="directory", path=str(tmp_path), filename="{name}", exists="replace")
    targets = [DirectoryTarget(f"f{i}", cfg.model_copy(update={"path": str(tmp_path / f"d{i}")})) for i in range(200)]
    try:
        await asyncio.gather(
            *(t.deliver(payload(f"p{j}", f"{i}-{j}".encode())) for j in range(3) for i, t in enumerate(targets))
        )
        assert threading.active_count() - before <= THREADS
    finally:
        for t in targets:
            await t.close()
    for i in range(200):
        assert (tmp_path / f"d{i}" / "x.csv").read_bytes() == f"{i}-2".encode()
        assert json.loads((tmp_path / f"d{i}" / "x.csv.meta.json").read_text())["id"] == "p2"
    for _ in range(200):
        if threading.active_count() <= before:
            break
        await asyncio.sleep(0.01)
    assert threading.active_count() <= before, "the writer threads ended"


async def test_spooled_body_is_linked_not_copied(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", threshold=10)
    spool.prepare()
    w = spool.writer()
    w.write(b"z" * 5000)
    body = w.finish()
    p = Payload(id="big", flow="f", source_instance="i", source_type="sftp", body=body, name="big.bin")
    t = DirectoryTarget("f", DirectoryTargetConfig(type="directory", path=str(tmp_path / "out")))
    await t.deliver(p)
    body.release()
    assert (tmp_path / "out" / "big").read_bytes() == b"z" * 5000
    assert not list((tmp_path / "spool").iterdir())


async def test_large_body_syncs_its_own_files_not_the_file_system(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A spooled body is made durable by fsyncs of its own files and then of the folder, never by
    a syncfs that would wait for every other writer's dirty pages on the file system."""
    from conveyor.targets import fsync as fsync_module

    spool = Spool(tmp_path / "spool", threshold=10)
    spool.prepare()
    w = spool.writer()
    w.write(b"z" * 5000)
    body = w.finish()
    out = tmp_path / "out"
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    def syncfs(fd: int) -> None:
        synced.append("syncfs")

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(fsync_module, "_sync_fs", syncfs)
    p = Payload(id="big", flow="f", source_instance="i", source_type="sftp", body=body, name="big.bin")
    t = DirectoryTarget("f", DirectoryTargetConfig(type="directory", path=str(out)))
    await t.deliver(p)
    body.release()
    assert "syncfs" not in synced
    # the body and its sidecar under their temporary names, then the folder after the renames
    assert len(synced) == 3 and synced[-1] == str(out)
    assert {Path(s).name.endswith(".tmp") for s in synced[:2]} == {True}
    assert (out / "big").read_bytes() == b"z" * 5000
    assert json.loads((out / "big.meta.json").read_text())["id"] == "big"


async def test_upload_to_a_local_instance(tmp_path: Path) -> None:
    inst = LocalInstance(
        "dst",
        LocalConfig(type="local", root=str(tmp_path)),
        Context(spool=Spool(tmp_path / "spool"), status=StatusBoard()),
    )
    cfg = FileTargetConfig(instance="dst", path="inbound/today", filename="{stem}-{id}{ext}", chmod="0640")
    t = UploadTarget("f", cfg, inst)
    await t.deliver(payload("p1", b"hello", name="order.csv"))
    dest = tmp_path / "inbound" / "today" / "order-p1.csv"
    assert dest.read_bytes() == b"hello"
    assert stat.S_IMODE(dest.stat().st_mode) == 0o640
    assert [p.name for p in dest.parent.iterdir()] == ["order-p1.csv"]  # no temp file left
    fail = UploadTarget("f", cfg.model_copy(update={"exists": "fail"}), inst)
    with pytest.raises(Rejected):
        await fail.deliver(payload("p1", b"again", name="order.csv"))
    skip = UploadTarget("f", cfg.model_copy(update={"exists": "skip"}), inst)
    await skip.deliver(payload("p1", b"again", name="order.csv"))
    assert dest.read_bytes() == b"hello"
