"""File sources on real servers: files over ``max_file_size`` and listings without end
(``max_listing_entries``)."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import asyncssh
import pytest

from conveyor.errors import TooLarge
from conveyor.flows.filesource import FileSource
from conveyor.interfaces import FileSystem, RemoteFile
from conveyor.payload import Spool
from tests.harness import bodies, running, wait_for, write_config
from tests.servers.asyncssh_server import AsyncsshSftpServer

FAST = {"poll_interval": "200ms", "min_age": "0s"}
RETRY = {"attempts": 3, "backoff": "100ms", "max_backoff": "1s"}


def flow(out: Path, **source: Any) -> dict[str, Any]:
    return {
        "source": {"instance": "remote", "path": "in", "after": "delete", **FAST, **source},
        "target": {"type": "directory", "path": str(out), "filename": "{name}"},
        "retry": RETRY,
    }


def errors_about(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR and text in r.getMessage()]


# --------------------------------------------------------------------------- max_file_size
@pytest.fixture(params=["local_backend", "sftp_openssh_backend", "ftp_pyftpdlib_backend"])
def fb(request: pytest.FixtureRequest) -> Any:
    """A file backend on a real server (the local folder, OpenSSH, pyftpdlib)."""
    return request.getfixturevalue(request.param)


async def test_a_file_over_max_file_size_is_refused_once_and_left_alone(
    fb: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fb.put("in/big.bin", os.urandom(3000))
    fb.put("in/small.bin", b"fits")
    out = tmp_path / "out"
    cfg = write_config(tmp_path, {"remote": fb.instance_config()}, {"f": flow(out, max_file_size="2KiB")})
    async with running(cfg) as d:
        await wait_for(lambda: bodies(out) == {"small.bin": b"fits"}, 30)
        polls = d.status.flows["f"].last_poll
        await wait_for(lambda: d.status.flows["f"].last_poll != polls, 10)
        await asyncio.sleep(1.0)  # several more polls: counted and logged once, not fetched
        assert d.status.flows["f"].refused == 1
        assert fb.names("in") == ["big.bin"], "the refused file stays where it was"
    assert list(bodies(out)) == ["small.bin"]
    refused = errors_about(caplog, "big.bin")
    assert len(refused) == 1, [r.getMessage() for r in refused]
    assert getattr(refused[0], "flow", None) == "f"
    assert "3000 bytes" in refused[0].getMessage() and "max_file_size" in refused[0].getMessage()


class Understated:
    """A real local folder served as a lying server would: its listing says each file is 10
    bytes, and a download sends the whole file, in 4 KiB blocks, into the spool writer."""

    def __init__(self, inner: Any, root: Path) -> None:
        self.inner = inner
        self.root = root
        self.downloads = 0

    async def list(self, path: str, recursive: bool, max_entries: int | None = None) -> AsyncIterator[RemoteFile]:
        async for f in self.inner.list(path, recursive, max_entries):
            yield RemoteFile(f.path, 10, f.mtime)

    async def stat(self, path: str) -> RemoteFile | None:
        return await self.inner.stat(path)  # type: ignore[no-any-return]

    async def download(self, f: RemoteFile, sink: Any) -> None:
        self.downloads += 1
        data = (self.root / f.path).read_bytes()
        for i in range(sink.size, len(data), 4096):
            sink.write(data[i : i + 4096])

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def test_a_file_longer_than_listed_is_cut_at_max_file_size(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "remote"
    (root / "in").mkdir(parents=True)
    out = tmp_path / "out"
    cfg = write_config(
        tmp_path, {"remote": {"type": "local", "root": str(root)}}, {"f": flow(out, max_file_size="1KiB", after="keep")}
    )
    async with running(cfg) as d:
        runner, _ = d.flows["f"]
        source = runner.source
        assert isinstance(source, FileSource)
        fs = Understated(source.fs, root)
        assert isinstance(fs, FileSystem)
        source.fs, source._in_place = cast(FileSystem, fs), None
        # A poll under way may still list the folder through the real file system: two more first.
        polled = d.status.flows["f"].last_poll
        await wait_for(lambda: d.status.flows["f"].last_poll != polled, 10)
        again = d.status.flows["f"].last_poll
        await wait_for(lambda: d.status.flows["f"].last_poll != again, 10)
        (root / "in" / "liar.bin").write_bytes(os.urandom(50_000))
        await wait_for(lambda: d.status.flows["f"].refused == 1, 20)
        await asyncio.sleep(1.0)  # more polls: not fetched again while listed the same
        assert fs.downloads == 1 and d.status.flows["f"].refused == 1
    assert bodies(out) == {}
    assert list((tmp_path / "spool").iterdir()) == []
    refused = errors_about(caplog, "liar.bin")
    assert len(refused) == 1 and "max_file_size" in refused[0].getMessage()


async def test_the_spool_writer_stops_at_its_limit(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", threshold=1024)
    spool.prepare()
    w = spool.writer(limit=4096, what="max_file_size")
    w.write(b"x" * 4000)
    with pytest.raises(TooLarge, match="max_file_size"):
        w.write(b"x" * 200)
    w.abort()
    assert spool.used == 0 and list(spool.directory.iterdir()) == []


# --------------------------------------------------------------------------- max_listing_entries
async def test_an_endless_sftp_listing_is_cut_and_the_folder_still_delivers(
    asyncssh_server: AsyncsshSftpServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    listed = 0

    async def endless() -> AsyncIterator[asyncssh.SFTPName]:
        nonlocal listed
        attrs = asyncssh.SFTPAttrs(type=asyncssh.FILEXFER_TYPE_REGULAR, size=1, mtime=1_000_000_000)
        while True:
            listed += 1
            yield asyncssh.SFTPName(f"junk-{listed}.dat".encode(), attrs=attrs)

    asyncssh_server.more_listing = endless
    asyncssh_server.put("in/real.csv", b"a,b\n")
    out = tmp_path / "out"
    cfg = write_config(
        tmp_path,
        {"remote": asyncssh_server.instance_config()},
        {"f": flow(out, pattern="*.csv", max_listing_entries=2000)},
    )
    async with running(cfg) as d:
        await wait_for(lambda: bodies(out) == {"real.csv": b"a,b\n"}, 30)
        first = d.status.flows["f"].last_poll
        assert first is not None, "a listing without end still ends a poll"
        await wait_for(lambda: d.status.flows["f"].last_poll != first, 10)
        source = d.flows["f"][0].source
        assert isinstance(source, FileSource)
        assert len(source._seen) <= 2000 and len(source._reported) <= 2000
        assert "max_listing_entries" in (d.status.flows["f"].last_error or "")
    polls = len([r for r in caplog.records if "max_listing_entries (2000)" in r.getMessage()])
    assert polls >= 2
    # What the server listed is what conveyor read, a client's read-ahead more: never the endless rest.
    assert listed < 2000 * (polls + 2) + 10_000
