"""Hostile FTP servers (a small asyncio FTP server of the suite's own) against ``conveyor run``: the
cases shared with SFTP (tests/hostile/file_cases.py), plus a multi-line reply that never ends,
names with CR/LF in a ``LIST`` (not MLSD) listing, and a PASV reply that points the upload's data
connection at another host."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.hostile.file_cases import FileCase, FtpServer, Names, all_cases
from tests.hostile.harness import Case, Outcome, Sent, assert_case, grouped, run_groups, unique
from tests.hostile.loop_thread import LoopThread


class EndlessReply(FileCase):
    """CWD into the folder is answered with a multi-line reply that never ends."""

    group = "reply"
    deadline = 40.0

    def __init__(self) -> None:
        super().__init__("ftp", "endless-reply")
        self.listing_tokens = (self.folder, self.inst)

    def populate(self) -> None:
        assert isinstance(self.server, FtpServer)
        self.server.tree.folder(self.folder)
        self.server.tree.endless_reply.add("/" + self.folder)

    async def prepare(self) -> None:
        await super().prepare()
        self.sent.clear()  # nothing in the folder can be listed
        self.ok = None
        # A patient timeout (the reply keeps coming, so only a limit on its size can end it early).
        self.g.instances[self.inst]["timeout"] = "60s"


class ListCrlf(Names):
    """Names with line breaks in a ``LIST -a`` listing (the server has no MLSD)."""

    server_options = {"mlsd": False}

    def __init__(self) -> None:
        t = unique
        super().__init__(
            "ftp",
            "name-crlf-list",
            [
                (t("crlf-list"), f"{t('crlf-list')}\r\nFORGED.txt".encode()),
                (t("lf-list"), f"{t('lf-list')}\n-rw-r--r-- 1 a b 9 Nov 14  2023 forged.txt".encode()),
            ],
        )


class PasvRedirect(FileCase):
    """An upload target whose server refuses EPSV and answers PASV with another host (127.0.0.2,
    where a thief listens on the same port): the upload's bytes must go to the server itself."""

    group = "names"
    server_options: dict[str, Any] = {"epsv": False, "pasv_announce": "127.0.0.2"}

    def __init__(self) -> None:
        super().__init__("ftp", "pasv-redirect")
        self.disk = f"disk-{self.name}"

    async def prepare(self) -> None:
        assert self.loop is not None
        self.server = FtpServer(self.loop, upload_root=self.target, **self.server_options)
        self.target.mkdir(parents=True, exist_ok=True)
        src = self.dir / "src"
        (src / "in").mkdir(parents=True)
        self.volatile.append(src)
        for i in range(3):
            name = f"{unique('up')}-{i}.txt"
            data = f"upload {i} of {self.name}\n".encode()
            (src / "in" / name).write_bytes(data)
            self.add(name, data, "deliver", path=f"in/{name}")
        self.g.instances[self.inst] = await asyncio.to_thread(self.srv.start)
        self.g.instances[self.disk] = {"type": "local", "root": str(src)}

    def flow(self) -> dict[str, Any]:
        return {
            "source": {
                "instance": self.disk,
                "path": "in",
                "poll_interval": "300ms",
                "min_age": "0s",
                "after": "delete",
            },
            "target": {"instance": self.inst, "path": "up", "filename": "{name}"},
            "retry": {"attempts": 2, "backoff": "200ms", "max_backoff": "1s"},
        }

    def completed(self, s: Sent) -> bool:
        return s.path is not None and not (self.dir / "src" / s.path).exists()

    def extra_escapes(self) -> list[str]:
        assert isinstance(self.server, FtpServer)
        got = self.server.peer.thief_bytes
        return (
            [
                f"{got} bytes of an upload went to 127.0.0.2:{self.server.peer.thief_port}, the address a PASV "
                "reply named instead of the server's"
            ]
            if got
            else []
        )


def cases() -> list[Case]:
    """Every FTP case."""
    return [*all_cases("ftp"), EndlessReply(), ListCrlf(), PasvRedirect()]


CASES = [c.name for c in cases()]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Outcome]]:
    """Every case, each group of cases on a daemon of its own, the groups at once."""
    loop = LoopThread("hostile-ftp")
    FileCase.loop = loop
    try:
        root: Path = tmp_path_factory.mktemp("hostile-ftp")
        yield run_groups(grouped("ftp", root, cases()))
    finally:
        loop.close()


@pytest.mark.parametrize("case", CASES)
def test_hostile_ftp_server(results: dict[str, Outcome], case: str) -> None:
    assert_case(results, case)
