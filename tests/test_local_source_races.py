"""A local user racing the local source: names swapped for symlinks, FIFOs, devices or other files
between the listing and the read, delete or move.

The in-process cases drive the real file source: its intake is held after a listing (``poll``), the
folder is changed, and only then is the delivery run, so each race is hit every time. The through
``conveyor run`` cases race the daemon itself, holding a delivery at an HTTP sink while the folder
changes, and check that the other files keep arriving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from conveyor.config.base import FileSourceConfig
from conveyor.errors import Permanent, Transient
from conveyor.flows.delivery import Deliverer
from conveyor.flows.filesource import FileSource, FileSourceDeps
from conveyor.interfaces import Context, Target
from conveyor.payload import Payload, Spool
from conveyor.state.sqlite import SqliteStore
from conveyor.status import StatusBoard
from conveyor.supervisor import Backoff
from conveyor.targets.directory.config import DirectoryTargetConfig
from conveyor.targets.directory.target import DirectoryTarget
from conveyor.transfer.local.config import LocalConfig
from conveyor.transfer.local.instance import LocalInstance
from tests.counting_sink import counting_sink
from tests.harness import DaemonProcess, bodies, wait_for, write_config

PRIVATE = b"private: must never leave its folder"


@dataclass
class Rig:
    """One flow ``f`` from the local instance ``box`` (root ``root``) to a directory target ``out``,
    whose intake holds each delivery until the test runs it."""

    tmp: Path
    source: FileSource
    inst: LocalInstance
    store: SqliteStore
    status: StatusBoard
    held: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    @property
    def root(self) -> Path:
        return self.tmp / "root"

    @property
    def out(self) -> Path:
        return self.tmp / "out"

    async def listing(self) -> int:
        """One poll; the deliveries it started wait in ``held``. Returns how many."""
        self.held.clear()
        await self.source.poll()
        return len(self.held)

    async def run_held(self) -> Exception | None:
        """Run the deliveries the last listing started, in order; the first error (the flow's
        runner would log it and go on), or None."""
        work = list(self.held)
        self.held.clear()
        first: Exception | None = None
        for w in work:
            try:
                await asyncio.wait_for(w(), 10)  # a FIFO or an endless device read must not hang here
            except Exception as e:
                first = first or e
        return first

    async def state(self, path: str) -> tuple[str, bool] | None:
        """(state, settled) of the ledger row for ``path``, if any."""
        rows = [i for i in await self.store.list("f", None, 1000, 0) if i.path == path]
        return (rows[0].state, rows[0].settled) if rows else None


@contextlib.asynccontextmanager
async def rig(tmp_path: Path, target: Callable[[Target], Target] | None = None, **source: Any) -> AsyncIterator[Rig]:
    """The flow, with ``private/secret.txt`` beside the root as the file nobody may reach."""
    (tmp_path / "root").mkdir()
    (tmp_path / "private").mkdir()
    (tmp_path / "private" / "secret.txt").write_bytes(PRIVATE)
    status = StatusBoard()
    status.add_flow("f")
    spool = Spool(tmp_path / "spool")
    spool.prepare()
    store = SqliteStore(str(tmp_path / "state.db"), "test")
    await store.open()
    inst = LocalInstance(
        "box", LocalConfig(type="local", root=str(tmp_path / "root")), Context(spool=spool, status=status)
    )
    await inst.check()
    directory: Target = DirectoryTarget("f", DirectoryTargetConfig(type="directory", path=str(tmp_path / "out")))
    deliverer = Deliverer(
        "f",
        target(directory) if target else directory,
        store,
        status,
        attempts=1,
        backoff=Backoff(0.01, 0.01),
        timeout=None,
        lease=300.0,
    )
    held: list[Callable[[], Awaitable[None]]] = []

    async def submit(key: str, work: Callable[[], Awaitable[None]]) -> bool:
        held.append(work)
        return True

    cfg = FileSourceConfig(instance="box", min_age=0, recursive=True, **source)
    src = FileSource(
        flow="f",
        instance="box",
        instance_type="local",
        fs=inst,
        config=cfg,
        deps=FileSourceDeps(deliverer=deliverer, store=store, spool=spool, status=status, submit=submit),
    )
    r = Rig(tmp_path, src, inst, store, status, held)
    try:
        yield r
    finally:
        await directory.close()
        await inst.close()
        await store.close()


def swap_for_link(folder: Path, to: str) -> None:
    """Replace ``folder`` by a symlink to ``to`` (what a local user with write access can do)."""
    shutil.rmtree(folder)
    folder.symlink_to(to)


def says(err: Exception | None, kind: type[Exception], text: str) -> None:
    """``err`` is the one clear error expected: its class, and ``text`` in its line."""
    assert isinstance(err, kind) and text in str(err), repr(err)


def private_intact(tmp_path: Path) -> bool:
    p = tmp_path / "private" / "secret.txt"
    return p.exists() and p.read_bytes() == PRIVATE


def delivered(r: Rig) -> list[bytes]:
    return list(bodies(r.out).values())


# -- read -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [100, 3 << 20], ids=["in-memory", "by-descriptor"])
async def test_a_folder_swapped_for_a_link_after_the_listing_is_not_read(tmp_path: Path, size: int) -> None:
    """``sub`` listed with ``secret.txt`` in it, then swapped for a link to ``../private`` (which has
    a file of that name and size): the read refuses the link, delivers nothing, and the next listing
    reports the link once instead of descending into it."""
    async with rig(tmp_path) as r:
        (r.root / "sub").mkdir()
        (r.root / "sub" / "secret.txt").write_bytes(b"p" * size)
        (tmp_path / "private" / "secret.txt").write_bytes(
            PRIVATE * (size // len(PRIVATE)) + PRIVATE[: size % len(PRIVATE)]
        )
        assert await r.listing() == 1
        swap_for_link(r.root / "sub", "../private")
        err = await r.run_held()
        assert delivered(r) == [], "nothing read through the link"
        says(err, Permanent, "instance 'box', path 'sub/secret.txt': 'sub' is a symbolic link")
        assert await r.state("sub/secret.txt") == ("pending", False), "released, not stuck in flight"
        assert await r.listing() == 0
        assert r.status.flows["f"].refused == 1
        assert await r.listing() == 0
        assert r.status.flows["f"].refused == 1, "reported once while it stays"
    assert (tmp_path / "private" / "secret.txt").stat().st_size == size


async def test_a_file_swapped_for_a_link_after_the_listing_is_not_read(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        (r.root / "a.txt").write_bytes(b"x" * len(PRIVATE))
        assert await r.listing() == 1
        (r.root / "a.txt").unlink()
        (r.root / "a.txt").symlink_to(tmp_path / "private" / "secret.txt")
        err = await r.run_held()
        assert delivered(r) == [], "nothing read through the link"
        says(err, Permanent, "'a.txt' is a symbolic link")


@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
async def test_a_fifo_or_device_swapped_in_after_the_listing_does_not_hang(tmp_path: Path, kind: str) -> None:
    """A regular file listed, then replaced by a FIFO or a link to /dev/zero: refused at once (a
    FIFO opened for reading would wait for a writer forever, /dev/zero never ends)."""
    async with rig(tmp_path) as r:
        (r.root / "a.txt").write_bytes(b"0123456789")
        assert await r.listing() == 1
        (r.root / "a.txt").unlink()
        if kind == "fifo":
            os.mkfifo(r.root / "a.txt")
        else:
            (r.root / "a.txt").symlink_to("/dev/zero")
        try:
            err = await r.run_held()
        finally:
            if kind == "fifo":  # on a build that blocks in open(), let it go
                with contextlib.suppress(OSError):
                    os.close(os.open(r.root / "a.txt", os.O_WRONLY | os.O_NONBLOCK))
        assert delivered(r) == []
        says(err, Permanent, "'a.txt' is a FIFO" if kind == "fifo" else "'a.txt' is a symbolic link")


async def test_fifos_and_links_in_the_folder_are_reported_never_opened(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """What the listing shows that is no regular file is counted and logged once, with the flow
    and the name, and never opened; the regular files beside it are delivered."""
    async with rig(tmp_path, after="delete") as r:
        os.mkfifo(r.root / "pipe.csv")
        (r.root / "zero.csv").symlink_to("/dev/zero")
        (r.root / "secret.csv").symlink_to(tmp_path / "private" / "secret.txt")
        (r.root / "up").symlink_to("..")
        (r.root / "ok.csv").write_bytes(b"ok")
        with caplog.at_level(logging.ERROR, logger="conveyor.files"):
            assert await r.listing() == 1
            await r.run_held()
            assert await r.listing() == 0
        assert delivered(r) == [b"ok"]
        assert r.status.flows["f"].refused == 4
        lines = [rec for rec in caplog.records if rec.getMessage().startswith("skipping")]
        assert len(lines) == 4, [rec.getMessage() for rec in lines]
        assert all(getattr(rec, "flow", None) == "f" for rec in lines)
        said = " | ".join(rec.getMessage() for rec in lines)
        assert "'pipe.csv': it is a FIFO" in said and "'zero.csv': it is a symbolic link" in said
        assert "'up': it is a symbolic link" in said
        assert sorted(p.name for p in r.root.iterdir()) == ["pipe.csv", "secret.csv", "up", "zero.csv"]
    assert private_intact(tmp_path)


async def test_a_file_replaced_after_the_listing_is_not_read(tmp_path: Path) -> None:
    """``a.txt`` listed, then replaced by another file renamed over it with the same size and mtime
    (only the inode tells them apart): the read refuses the other file, and the next listing takes
    what the name holds then."""
    async with rig(tmp_path, after="delete") as r:
        (r.root / "a.txt").write_bytes(b"first")
        os.utime(r.root / "a.txt", (1_700_000_000, 1_700_000_000))
        assert await r.listing() == 1
        (r.root / ".new").write_bytes(b"other")
        os.utime(r.root / ".new", (1_700_000_000, 1_700_000_000))
        os.replace(r.root / ".new", r.root / "a.txt")
        err = await r.run_held()
        assert delivered(r) == [], "a file the listing never saw is not delivered under its id"
        says(err, Transient, "'a.txt' was replaced by another file since it was listed")
        assert await r.listing() == 1
        await r.run_held()
        assert delivered(r) == [b"other"] and not (r.root / "a.txt").exists()


async def test_a_file_rewritten_in_place_after_the_listing_is_not_delivered_as_the_listed_version(
    tmp_path: Path,
) -> None:
    """Same inode, other size: the listed version is gone, so nothing goes out under its id."""
    async with rig(tmp_path) as r:
        (r.root / "a.txt").write_bytes(b"first")
        assert await r.listing() == 1
        fd = os.open(r.root / "a.txt", os.O_WRONLY | os.O_APPEND)
        os.write(fd, b" and more")
        os.close(fd)
        err = await r.run_held()
        assert delivered(r) == []
        says(err, Transient, "'a.txt' changed since it was listed (14 bytes, listed 5)")
        assert await r.listing() == 1
        await r.run_held()
        assert delivered(r) == [b"first and more"]


# -- after actions ----------------------------------------------------------------------------------
class SwapWhileDelivering:
    """The directory target; once it has written the first payload, ``swap`` runs: the folder
    changes between that file's read and its after action."""

    def __init__(self, inner: Target, swap: Callable[[], None]) -> None:
        self.inner = inner
        self.swap: Callable[[], None] | None = swap

    async def deliver(self, payload: Payload) -> None:
        await self.inner.deliver(payload)
        swap, self.swap = self.swap, None
        if swap is not None:
            swap()

    async def close(self) -> None:
        await self.inner.close()


@pytest.mark.parametrize("after", ["delete", "move"])
async def test_the_after_action_does_not_follow_a_folder_swapped_for_a_link(tmp_path: Path, after: str) -> None:
    """``sub/secret.txt`` delivered, then ``sub`` swapped for a link to ``../private`` before the
    after action: the private file is neither deleted nor moved."""
    action: Any = "delete" if after == "delete" else {"move": "done"}
    swap = lambda: swap_for_link(tmp_path / "root" / "sub", "../private")  # noqa: E731
    async with rig(tmp_path, target=lambda t: SwapWhileDelivering(t, swap), after=action) as r:
        (r.root / "sub").mkdir()
        (r.root / "sub" / "secret.txt").write_bytes(b"public")
        assert await r.listing() == 1
        err = await r.run_held()
        assert private_intact(tmp_path), "the after action went through the link"
        assert delivered(r) == [b"public"]
        assert not (r.root / "done").exists()
        says(err, Permanent, "'sub' is a symbolic link")


@pytest.mark.parametrize("after", ["delete", "move"])
@pytest.mark.parametrize("swap", ["link", "new-upload", "appended"])
async def test_the_after_action_leaves_a_name_that_holds_another_file(
    tmp_path: Path, after: str, swap: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The delivered file replaced, before the after action, by a link to the private file or by
    a new upload (which may well get the freed inode), or appended to: none is deleted or moved,
    and the flow says so; a new version has its own id and is taken by a later listing."""
    action: Any = "delete" if after == "delete" else {"move": "done"}
    a = tmp_path / "root" / "a.txt"
    new = b"public, and more" if swap == "appended" else b"a new upload"

    def replace() -> None:
        if swap == "appended":
            with a.open("ab") as f:
                f.write(b", and more")
            return
        a.unlink()
        if swap == "link":
            a.symlink_to(tmp_path / "private" / "secret.txt")
        else:
            a.write_bytes(new)

    async with rig(tmp_path, target=lambda t: SwapWhileDelivering(t, replace), after=action) as r:
        a.write_bytes(b"public")
        assert await r.listing() == 1
        with caplog.at_level(logging.WARNING, logger="conveyor.files"):
            assert await r.run_held() is None
        assert delivered(r) == [b"public"]
        if swap == "link":
            assert a.is_symlink() and not (r.root / "done").exists()
        else:
            assert a.read_bytes() == new, "never delivered: not to be deleted or moved"
        assert f"a.txt was not {'deleted' if after == 'delete' else 'moved'}" in caplog.text
        if swap != "link":
            assert await r.listing() == 1
            assert await r.run_held() is None
            assert sorted(delivered(r)) == sorted([new, b"public"]) and not a.exists()
    assert private_intact(tmp_path)


# -- through conveyor run ---------------------------------------------------------------------------
@pytest.mark.timeout(120)
async def test_the_daemon_refuses_the_swap_and_keeps_delivering(tmp_path: Path) -> None:
    """``conveyor run``: while the HTTP target holds the delivery of ``sub/a.txt``, ``sub`` becomes a
    link to ``../private``; once answered, the after action (delete) refuses the link, the private
    file stays, and FIFOs, links to /dev/zero and files dropped later do not stop the flow."""
    disk = tmp_path / "disk"
    (disk / "sub").mkdir(parents=True)
    (disk / "sub" / "secret.txt").write_bytes(b"public")
    (tmp_path / "private").mkdir()
    (tmp_path / "private" / "secret.txt").write_bytes(PRIVATE)
    async with counting_sink() as sink:
        sink.hold = asyncio.Event()
        cfg = write_config(
            tmp_path,
            {"disk": {"type": "local", "root": str(disk)}},
            {
                "f": {
                    "source": {
                        "instance": "disk",
                        "recursive": True,
                        "poll_interval": "100ms",
                        "min_age": "0s",
                        "after": "delete",
                    },
                    "target": {"type": "http", "url": sink.url},
                }
            },
        )
        d = DaemonProcess(cfg).start()
        try:
            await wait_for(lambda: sink.open == 1, 30)
            swap_for_link(disk / "sub", "../private")
            os.mkfifo(disk / "pipe.bin")
            (disk / "zero.bin").symlink_to("/dev/zero")
            sink.hold.set()
            await wait_for(lambda: sink.distinct() == 1, 30)
            for i in range(5):  # each whole at once: with min_age 0 a half-written file would be taken
                (disk / f".late{i}.tmp").write_bytes(os.urandom(2000))
                os.replace(disk / f".late{i}.tmp", disk / f"late{i}.bin")
            await wait_for(lambda: sink.distinct() == 6 and not list(disk.glob("late*")), 30)
            assert d.proc is not None and d.proc.poll() is None, d.text()[-3000:]
        finally:
            d.stop()
    assert private_intact(tmp_path), "the after action went through the link"
    assert "path 'sub/secret.txt': 'sub' is a symbolic link" in d.text()
    assert os.path.islink(disk / "sub") and stat.S_ISFIFO(os.lstat(disk / "pipe.bin").st_mode)
    logs = d.logs()
    refused = [r for r in logs if str(r.get("msg", "")).startswith("skipping")]
    assert sorted(r["msg"].split(":")[0] for r in refused) == [
        "skipping 'pipe.bin'",
        "skipping 'sub'",
        "skipping 'zero.bin'",
    ], refused
    assert all(r.get("flow") == "f" for r in refused)
    assert "Traceback" not in d.text()


# -- the instance on its own --------------------------------------------------------------------------
def instance(tmp_path: Path) -> LocalInstance:
    return LocalInstance(
        "box",
        LocalConfig(type="local", root=str(tmp_path / "root")),
        Context(spool=Spool(tmp_path / "spool"), status=StatusBoard()),
    )


async def test_without_proc_large_files_are_copied_from_the_checked_descriptor(tmp_path: Path) -> None:
    """Where /proc/self/fd is missing, a large file goes through the spool, with the same checks."""
    async with rig(tmp_path) as r:
        r.inst.by_descriptor = False
        data = os.urandom(3 << 20)
        (r.root / "big.bin").write_bytes(data)
        (r.root / "sub").mkdir()
        (r.root / "sub" / "secret.txt").write_bytes(b"p" * (2 << 20))
        assert await r.listing() == 2
        swap_for_link(r.root / "sub", "../private")
        err = await r.run_held()  # big.bin (the root is listed before its sub-folders), then sub/secret.txt
        assert delivered(r) == [data]
        says(err, Permanent, "'sub' is a symbolic link")
        assert not list((tmp_path / "spool").iterdir())


async def test_a_held_descriptor_keeps_its_files_upload_temp_name(tmp_path: Path) -> None:
    """Two reads of one unchanged large file: other descriptors, the same upload temp name (a
    retry after a restart writes over its own leftover)."""
    from conveyor.transfer.tempname import temp_key

    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "big.bin").write_bytes(b"z" * (2 << 20))
    inst = instance(tmp_path)
    f = await inst.stat("big.bin")
    assert f is not None
    one, two = await inst.open_in_place(f, 8 << 20), await inst.open_in_place(f, 8 << 20)
    try:
        assert one.path != two.path and await temp_key(one) == await temp_key(two)
    finally:
        one.release()
        two.release()
        await inst.close()


async def test_a_source_path_through_a_link_is_an_error_that_says_so(tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    (tmp_path / "private" / "in").mkdir(parents=True)
    (tmp_path / "root" / "in").symlink_to(tmp_path / "private" / "in")
    (tmp_path / "root" / "one.csv").symlink_to(tmp_path / "private" / "in")
    inst = instance(tmp_path)
    try:
        assert await inst.stat("in") is None and await inst.stat("one.csv") is None
        for path in ("in", "in/x.csv"):
            with pytest.raises(Permanent, match="'in' is a symbolic link"):
                [f async for f in inst.list(path, False)]
        with pytest.raises(Permanent, match="'in' is a symbolic link"):
            await inst.is_dir("in")
    finally:
        await inst.close()


async def test_uploads_do_not_follow_links_below_the_root(tmp_path: Path) -> None:
    """A target folder swapped for a link to a private folder is refused; a link at the
    destination name is replaced by the file, the file it pointed to untouched."""
    from conveyor.payload import Body

    (tmp_path / "root").mkdir()
    (tmp_path / "private").mkdir()
    (tmp_path / "private" / "secret.txt").write_bytes(PRIVATE)
    (tmp_path / "root" / "out").symlink_to("../private")
    (tmp_path / "root" / "a.txt").symlink_to(tmp_path / "private" / "secret.txt")
    inst = instance(tmp_path)
    try:
        with pytest.raises(Permanent, match="'out' is a symbolic link"):
            await inst.upload(Body.from_bytes(b"hi"), "out/secret.txt", exists="replace", chmod=None)
        assert await inst.upload(Body.from_bytes(b"hi"), "a.txt", exists="replace", chmod=0o640)
        assert not (tmp_path / "root" / "a.txt").is_symlink()
        assert (tmp_path / "root" / "a.txt").read_bytes() == b"hi"
        assert [p.name for p in (tmp_path / "private").iterdir()] == ["secret.txt"]
    finally:
        await inst.close()
    assert private_intact(tmp_path)
