"""Symlinked folders in recursive SFTP listings, on OpenSSH with real links on disk: a loop
(``loop -> .``) yields each file once and never fails the listing; folder links are left out
unless ``follow_symlinked_folders`` is on, and then each real folder is listed once."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest

from conveyor.interfaces import Context
from conveyor.payload import Spool
from conveyor.status import StatusBoard
from conveyor.transfer.sftp.config import SftpConfig
from conveyor.transfer.sftp.instance import SftpInstance
from tests.backends.sftp import *  # noqa: F403  (the server fixtures)
from tests.backends.sftp import SftpBackend
from tests.harness import running, wait_for, write_config
from tests.servers.sshd import Sshd


def instance(backend: SftpBackend, **over: Any) -> SftpInstance:
    """An instance named ``partner`` on the backend's root."""
    cfg = SftpConfig.model_validate(backend.instance_config(**over))
    board = StatusBoard()
    board.add_instance("partner", "sftp", cfg.describe())
    return SftpInstance("partner", cfg, Context(spool=Spool(Path("/nonexistent")), status=board))


@pytest.fixture
def outside(sshd: Sshd) -> Any:
    """A folder on the server outside the instance root, readable by the sftp user."""
    d = Path(tempfile.mkdtemp(dir=sshd.root))
    d.chmod(0o755)
    sshd.chown(d)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def tree(backend: SftpBackend, outside: Path) -> None:
    """in/x, in/sub/y, in/loop -> . , in/sub/up -> .. , in/ext -> outside (z, back -> in), in/ext2 -> outside,
    in/f -> in/x (a link to a file)."""
    backend.put("in/x", b"x")
    backend.put("in/sub/y", b"y")
    (outside / "z").write_bytes(b"z")
    inbox = backend.folder / "in"
    os.symlink(".", inbox / "loop")
    os.symlink("..", inbox / "sub" / "up")
    os.symlink(str(outside), inbox / "ext")
    os.symlink(str(outside), inbox / "ext2")
    os.symlink(str(inbox), outside / "back")
    os.symlink("x", inbox / "f")


def prepared(backend: SftpBackend, outside: Path, caplog: pytest.LogCaptureFixture, **over: Any) -> SftpInstance:
    """The :func:`tree` on disk, log records captured from info up, and an instance over it."""
    tree(backend, outside)
    caplog.set_level(logging.INFO, "conveyor.sftp")
    return instance(backend, **over)


async def listing(inst: SftpInstance, path: str = "in") -> list[str]:
    try:
        return sorted([f.path async for f in inst.list(path, True)])
    finally:
        await inst.close()


async def test_folder_links_are_left_out_by_default(
    sftp_openssh_backend: SftpBackend, outside: Path, caplog: pytest.LogCaptureFixture
) -> None:
    inst = prepared(sftp_openssh_backend, outside, caplog, follow_symlinked_folders=False)
    try:
        assert sorted([f.path async for f in inst.list("in", True)]) == ["in/f", "in/sub/y", "in/x"]
        noted = [r.getMessage() for r in caplog.records if "symlinked folder" in r.getMessage()]
        assert sorted(noted) == sorted(
            f"sftp partner: not descending into symlinked folder {p} (follow_symlinked_folders is off): "
            "files under it are not listed"
            for p in ("in/loop", "in/sub/up", "in/ext", "in/ext2")
        )
        # The next poll says nothing again: the links are still there, and were reported once.
        caplog.clear()
        assert sorted([f.path async for f in inst.list("in", True)]) == ["in/f", "in/sub/y", "in/x"]
        assert not [r for r in caplog.records if "symlinked folder" in r.getMessage()]
    finally:
        await inst.close()


async def test_following_lists_each_real_folder_once(
    sftp_openssh_backend: SftpBackend, outside: Path, caplog: pytest.LogCaptureFixture
) -> None:
    got = await listing(prepared(sftp_openssh_backend, outside, caplog, follow_symlinked_folders=True))
    # ext and ext2 lead to the same folder: it is listed once, under whichever came first.
    linked = [p for p in got if p.endswith("/z")]
    assert len(got) == 4 and [p for p in got if p not in linked] == ["in/f", "in/sub/y", "in/x"]
    assert len(linked) == 1 and linked[0] in ("in/ext/z", "in/ext2/z")
    warned = {r.getMessage().split(" not followed")[0] for r in caplog.records if r.levelno == logging.WARNING}
    followed = linked[0].split("/")[1]
    other = "ext2" if followed == "ext" else "ext"
    assert warned == {
        f"sftp partner: symlinked folder {p}" for p in ("in/loop", "in/sub/up", f"in/{other}", f"in/{followed}/back")
    }


async def test_a_loop_in_the_listed_folder_itself(sftp_openssh_backend: SftpBackend) -> None:
    """``loop -> .`` in the folder being listed: with following on, no ``loop/x``, ``loop/loop/x`` ...
    and no ELOOP ending the listing."""
    sftp_openssh_backend.put("in/x", b"x")
    os.symlink(".", sftp_openssh_backend.folder / "in" / "loop")
    for follow in (False, True):
        inst = instance(sftp_openssh_backend, follow_symlinked_folders=follow)
        assert await listing(inst) == ["in/x"]


async def test_daemon_delivers_each_file_once(sftp_openssh_backend: SftpBackend, tmp_path: Path) -> None:
    """Through the daemon: a recursive source over a folder holding a link loop delivers x and
    sub/y once each, fails nothing, and keeps polling."""
    b = sftp_openssh_backend
    b.put("in/x", b"x")
    b.put("in/sub/y", b"y")
    os.symlink(".", b.folder / "in" / "loop")
    out = tmp_path / "out"
    flows = {
        "f": {
            "source": {
                "instance": "partner",
                "path": "in",
                "recursive": True,
                "poll_interval": "200ms",
                "min_age": "0s",
            },
            "target": {"type": "directory", "path": str(out)},
        }
    }
    for follow in (False, True):
        (tmp_path / str(follow)).mkdir()
        cfg = write_config(
            tmp_path / str(follow), {"partner": b.instance_config(follow_symlinked_folders=follow)}, flows
        )
        async with running(cfg) as d:
            st = await wait_for(lambda: d.status.flows.get("f"), 10)
            await wait_for(lambda: st.delivered >= 2 and st.last_poll is not None, 30)  # noqa: B023
            polled = st.last_poll
            await wait_for(lambda: st.last_poll != polled, 10)  # noqa: B023  (one more full listing)
            assert (st.delivered, st.failed) == (2, 0)
            assert st.last_error is None
        shutil.rmtree(out, ignore_errors=True)
