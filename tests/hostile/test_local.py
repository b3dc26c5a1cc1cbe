"""A local attacker against ``conveyor run``: racing the local source (a listed folder swapped for a
symlink to a private one, a listed file swapped for a symlink to ``/dev/zero`` or for a FIFO) and
the directory target (symlinks planted at the temporary names it will use, a FIFO where a sidecar
will be read, a planted sidecar claiming the id of a file about to arrive). What each case must
show is in tests/hostile/harness.py; private files must neither reach a target nor be deleted."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor.payload.payload import stable_id
from tests.hostile.harness import MARK, PRIVATE, Case, Outcome, Sent, assert_case, grouped, run_groups, sha


class LocalCase(Case):
    """A local source folder (``src``, the instance root) into a directory target writing ``{name}``."""

    path = "in"
    recursive = False

    def __init__(self, name: str, group: str) -> None:
        super().__init__(name)
        self.group = group
        self.inst = f"disk-{name}"

    @property
    def src(self) -> Path:
        return self.dir / "src"

    async def prepare(self) -> None:
        (self.src / self.path).mkdir(parents=True, exist_ok=True)
        self.volatile.append(self.src)
        self.g.instances[self.inst] = {"type": "local", "root": str(self.src)}

    def flow(self) -> dict[str, Any]:
        return {
            "source": {
                "instance": self.inst,
                "path": self.path,
                "poll_interval": "100ms",
                "min_age": "0s",
                "after": "delete",
                "recursive": self.recursive,
            },
            "target": self.directory(filename="{name}"),
            "retry": {"attempts": 2, "backoff": "200ms", "max_backoff": "1s"},
        }

    def drop(self, name: str, data: bytes, expect: str = "deliver") -> Sent:
        """A file in the source folder."""
        (self.src / self.path / name).write_bytes(data)
        return self.add(name, data, expect, ident={"name": name}, path=f"{self.path}/{name}")

    def completed(self, s: Sent) -> bool:
        return s.path is not None and not os.path.lexists(self.src / s.path) and not self.stashed(s)

    def stashed(self, s: Sent) -> bool:
        """Whether the attacker holds the file aside right now (a swap in progress)."""
        return False


def _in_thread(fn: Callable[[], None]) -> asyncio.Future[None]:
    """Run a tight attack loop on a thread of its own (the event loop must keep watching)."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()

    def run() -> None:
        try:
            fn()
            loop.call_soon_threadsafe(fut.set_result, None)
        except BaseException as e:
            loop.call_soon_threadsafe(fut.set_exception, e)

    threading.Thread(target=run, daemon=True, name="hostile-attacker").start()
    return fut


class SwapFolder(LocalCase):
    """The listed folder ``sub`` swapped, again and again, for a symlink to ``../private``, which
    holds files of the same names: conveyor must never read or delete those."""

    path = ""
    recursive = True
    deadline = 30.0

    def __init__(self) -> None:
        super().__init__("swap-folder", "race")
        self.private_files: dict[str, bytes] = {}

    async def prepare(self) -> None:
        await super().prepare()
        self.stash, self.private = self.dir / "stash", self.dir / "private"
        for d in (self.src / "sub", self.stash, self.private):
            d.mkdir(parents=True)
        self.volatile += [self.stash, self.private]
        os.symlink("../private", self.stash / "link")

    def _attack(self) -> None:
        sub, real, link = self.src / "sub", self.stash / "sub", self.stash / "link"
        end = time.monotonic() + 5
        n = 0
        while time.monotonic() < end:
            name = f"{MARK}-r{n}"
            n += 1
            data = f"round {n} of the swap\n".encode()
            (sub / name).write_bytes(data)
            self.add(name, data, "any", ident={"name": name}, path=f"sub/{name}")
            secret = PRIVATE + name.encode()
            (self.private / name).write_bytes(secret)
            self.private_files[name] = secret
            for _ in range(100):
                os.rename(sub, real)  # the folder goes aside...
                os.rename(link, sub)  # ...and a symlink to the private folder takes its name
                time.sleep(0.0003)
                os.rename(sub, link)
                os.rename(real, sub)
                time.sleep(0.0003)

    async def attack(self) -> None:
        await _in_thread(self._attack)

    def stashed(self, s: Sent) -> bool:
        return s.path is not None and (self.stash / s.path).exists()

    def extra_escapes(self) -> list[str]:
        out = []
        for name, data in self.private_files.items():
            try:
                same = (self.private / name).read_bytes() == data
            except OSError:
                same = False
            if not same:
                out.append(f"private file {name} outside the source root was deleted or changed")
        return out


class SwapFile(LocalCase):
    """A listed file swapped, again and again, for a symlink to ``/dev/zero`` or for a FIFO: no
    endless read, no thread stuck on an open; the file is taken once it is a file again."""

    deadline = 30.0

    def __init__(self, name: str, group: str, make: Callable[[Path], None]) -> None:
        super().__init__(name, group)
        self.make = make

    async def prepare(self) -> None:
        await super().prepare()
        self.stash = self.dir / "stash"
        self.stash.mkdir()
        self.volatile.append(self.stash)

    def _attack(self) -> None:
        folder = self.src / self.path
        end = time.monotonic() + 3
        n = 0
        while time.monotonic() < end:
            name = f"{MARK}-{self.name}-{n}"
            n += 1
            data = f"file {n} of {self.name}\n".encode()
            for _ in range(30):
                bad = self.stash / "bad"
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(bad)
                self.make(bad)
                os.rename(bad, folder / name)  # the special file takes the listed name...
                time.sleep(0.002)
                good = self.stash / "good"
                good.write_bytes(data)
                os.rename(good, folder / name)  # ...and a regular file takes it back
                time.sleep(0.002)
            self.add(name, data, "any", ident={"name": name}, path=f"{self.path}/{name}")

    async def attack(self) -> None:
        await _in_thread(self._attack)


class TempSymlinks(LocalCase):
    """Symlinks to a file outside the target planted at the temporary names the target will use
    next (``.<name>.<pid>-<n>.tmp`` on main): deliveries must not write through them."""

    deadline = 25.0

    def __init__(self) -> None:
        super().__init__("temp-symlinks", "target")

    async def prepare(self) -> None:
        await super().prepare()
        self.victim = self.outside / "victim.txt"
        self.victim.write_bytes(b"a file the target must not touch\n")

    async def attack(self) -> None:
        assert self.g.daemon is not None
        pid = self.g.daemon.pid
        self.target.mkdir(parents=True, exist_ok=True)
        names = [f"{MARK}-t{i}.txt" for i in range(5)]
        for name in names:
            for n in range(400):
                for suffix in (".tmp", ".meta.tmp"):
                    with contextlib.suppress(FileExistsError):
                        os.symlink(self.victim, self.target / f".{name}.{pid}-{n}{suffix}")
        for name in names:
            self.drop(name, f"payload {name}\n".encode())


class SidecarFifo(LocalCase):
    """A FIFO where the sidecar of the next file will be read: that file fails with an error line,
    the next file into the same folder still arrives."""

    def __init__(self) -> None:
        super().__init__("sidecar-fifo", "target-fifo")

    async def attack(self) -> None:
        self.target.mkdir(parents=True, exist_ok=True)
        first = f"{MARK}-s1.txt"
        os.mkfifo(self.target / f"{first}.meta.json")
        self.drop(first, b"first\n", "any")
        await asyncio.sleep(1.0)
        self.drop(f"{MARK}-s2.txt", b"second\n")


class PlantedSidecar(LocalCase):
    """A body and a sidecar claiming the id of a file that is about to arrive, planted in the target:
    the file must be delivered (its bytes differ), not skipped as already there and deleted."""

    def __init__(self) -> None:
        super().__init__("planted-sidecar-local", "target")

    async def attack(self) -> None:
        self.target.mkdir(parents=True, exist_ok=True)
        name, data, mtime = f"{MARK}-v.txt", b"the real file\n", 1_700_000_000.25
        victim_id = stable_id(self.inst, f"{self.path}/{name}", len(data), round(mtime, 3))
        planted_body = b"planted\n"
        planted_meta = json.dumps(
            {"id": victim_id, "sha256": sha(planted_body), "size": len(planted_body), "name": name}
        ).encode()
        (self.target / name).write_bytes(planted_body)
        (self.target / f"{name}.meta.json").write_bytes(planted_meta)
        self.planted[f"{name}.meta.json"] = sha(planted_meta)
        tmp = self.src / f".{name}.tmp"
        tmp.write_bytes(data)
        os.utime(tmp, (mtime, mtime))
        os.rename(tmp, self.src / self.path / name)
        self.add(name, data, "deliver", ident={"name": name}, path=f"{self.path}/{name}")


def _dev_zero(p: Path) -> None:
    os.symlink("/dev/zero", p)


def cases() -> list[Case]:
    """Every local case."""
    return [
        SwapFolder(),
        SwapFile("swap-dev-zero", "dev-zero", _dev_zero),
        SwapFile("swap-fifo", "fifo", os.mkfifo),
        TempSymlinks(),
        SidecarFifo(),
        PlantedSidecar(),
    ]


CASES = [c.name for c in cases()]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Outcome]]:
    """Every case, each group of cases on a daemon of its own, the groups at once."""
    root: Path = tmp_path_factory.mktemp("hostile-local")
    yield run_groups(grouped("local", root, cases()))


@pytest.mark.parametrize("case", CASES)
def test_hostile_local_user(results: dict[str, Outcome], case: str) -> None:
    assert_case(results, case)
