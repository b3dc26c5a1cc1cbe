"""Hostile file servers: the cases SFTP and FTP share, written once over a small adapter per protocol.

Each case gets a server of its own (on the module's server thread), an instance of its own (its
own connection pool: one case's endless listing must not hold another's connections) and a
folder named with the run's marker, so an error line naming it names this case and no other.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, Protocol

from conveyor.payload.payload import stable_id
from tests.hostile.ftp_peer import FEntry, FtpTree, HostileFtp
from tests.hostile.harness import MARK, Case, Sent, sha, unique
from tests.hostile.loop_thread import LoopThread
from tests.hostile.sftp_peer import MTIME, HostileSftp, VFile, VirtualSftp


class Server(Protocol):
    """What a case needs from a hostile file server, whatever its protocol."""

    def file(
        self,
        folder: str,
        name: bytes,
        data: bytes = b"",
        *,
        listed: int | None = None,
        endless: bool = False,
        mtime: int = MTIME,
    ) -> None: ...
    def link(self, folder: str, name: bytes, target: str) -> None: ...
    def endless_listing(self, folder: str) -> None: ...
    def removed(self, path: str) -> bool: ...
    def removed_paths(self) -> list[str]: ...
    def served(self, path: str) -> int:
        """The most bytes one download of ``path`` was sent."""
        ...

    def notes(self) -> list[str]: ...
    def start(self) -> dict[str, Any]: ...
    def stop(self) -> None: ...


class SftpServer:
    """The :class:`Server` adapter over :mod:`tests.hostile.sftp_peer`."""

    def __init__(self, loop: LoopThread) -> None:
        self.fs = VirtualSftp()
        self.peer = HostileSftp(self.fs, loop)

    def file(
        self,
        folder: str,
        name: bytes,
        data: bytes = b"",
        *,
        listed: int | None = None,
        endless: bool = False,
        mtime: int = MTIME,
    ) -> None:
        f = VFile(data, listed, endless, mtime)
        self.fs.add(b"/" + folder.encode(), name, f)
        # Also where a client that normalises the joined path would look (``folder/../x`` → ``x``).
        import posixpath

        self.fs.files.setdefault(posixpath.normpath(b"/" + folder.encode() + b"/" + name), f)

    def link(self, folder: str, name: bytes, target: str) -> None:
        self.fs.link(b"/" + folder.encode(), name, b"/" + target.encode())

    def endless_listing(self, folder: str) -> None:
        self.fs.mkdir(b"/" + folder.encode())
        self.fs.endless.add(b"/" + folder.encode())

    def removed(self, path: str) -> bool:
        return ("/" + path).encode("utf-8", "surrogateescape") in self.fs.removed

    def removed_paths(self) -> list[str]:
        return [p.decode("utf-8", "surrogateescape") for p in self.fs.removed]

    def served(self, path: str) -> int:
        return self.fs.peak.get(("/" + path).encode("utf-8", "surrogateescape"), 0)

    def notes(self) -> list[str]:
        return self.fs.notes

    def start(self) -> dict[str, Any]:
        return self.peer.start().instance()

    def stop(self) -> None:
        self.peer.stop()


class FtpServer:
    """The :class:`Server` adapter over :mod:`tests.hostile.ftp_peer`."""

    def __init__(self, loop: LoopThread, **tree: Any) -> None:
        self.tree = FtpTree(**tree)
        self.peer = HostileFtp(self.tree, loop)

    def file(
        self,
        folder: str,
        name: bytes,
        data: bytes = b"",
        *,
        listed: int | None = None,
        endless: bool = False,
        mtime: int = MTIME,
    ) -> None:
        self.tree.folder(folder).append(FEntry(name, "file", data, listed, endless, mtime=mtime))

    def link(self, folder: str, name: bytes, target: str) -> None:
        self.tree.folder(folder).append(FEntry(name, "link", target=b"/" + target.encode()))

    def endless_listing(self, folder: str) -> None:
        self.tree.folder(folder)
        self.tree.endless_listing.add("/" + folder)

    def removed(self, path: str) -> bool:
        return "/" + path in self.tree.removed

    def removed_paths(self) -> list[str]:
        return list(self.tree.removed)

    def served(self, path: str) -> int:
        return self.tree.sent.get("/" + path, 0)

    def notes(self) -> list[str]:
        return self.tree.notes

    def start(self) -> dict[str, Any]:
        return self.peer.start().instance()

    def stop(self) -> None:
        self.peer.stop()


class FileCase(Case):
    """A case on a hostile file server: one folder, one instance, a flow into a directory target."""

    loop: LoopThread | None = None
    """The module's server thread (set by its fixture)."""
    source: dict[str, Any] = {}
    target_config: dict[str, Any] = {}
    server_options: dict[str, Any] = {}

    def __init__(self, proto: str, name: str) -> None:
        super().__init__(name)
        self.proto = proto
        self.folder = unique(name)
        self.inst = f"src-{name}"
        self.server: Server | None = None
        self.ok: Sent | None = None

    @property
    def srv(self) -> Server:
        assert self.server is not None
        return self.server

    async def prepare(self) -> None:
        assert self.loop is not None
        self.server = SftpServer(self.loop) if self.proto == "sftp" else FtpServer(self.loop, **self.server_options)
        self.populate()
        # An ordinary file beside the hostile ones: the rest of the folder must keep flowing.
        data = f"ordinary file of {self.name}\n".encode()
        self.srv.file(self.folder, f"ok-{self.name}.txt".encode(), data)
        self.ok = self.add(
            f"ok-{self.name}.txt",
            data,
            "deliver",
            ident={"name": f"ok-{self.name}.txt"},
            path=f"{self.folder}/ok-{self.name}.txt",
        )
        self.g.instances[self.inst] = await asyncio.to_thread(self.srv.start)

    def populate(self) -> None:
        """Put the hostile files on the server."""

    def put(self, key: str, name: bytes, data: bytes, expect: str = "any", **kw: Any) -> Sent:
        """A file on the server, recorded as sent."""
        self.srv.file(self.folder, name, data, **kw)
        return self.add(key, data, expect, path=f"{self.folder}/{name.decode('utf-8', 'surrogateescape')}")

    def flow(self) -> dict[str, Any]:
        return {
            "source": {
                "instance": self.inst,
                "path": self.folder,
                "poll_interval": "300ms",
                "min_age": "0s",
                "after": "delete",
                **self.source,
            },
            "target": self.directory(**self.target_config),
            "retry": {"attempts": 2, "backoff": "200ms", "max_backoff": "1s"},
        }

    def completed(self, s: Sent) -> bool:
        return s.path is not None and self.srv.removed(s.path)

    def extra(self) -> list[str]:
        return list(self.srv.notes())

    async def after_stop(self) -> None:
        await asyncio.to_thread(self.srv.stop)

    def extra_escapes(self) -> list[str]:
        return [
            f"deleted on the server outside the watched folder: {p[:100]!r}"
            for p in self.srv.removed_paths()
            if not p.startswith(f"/{self.folder}/")
        ]

    def only_ordinary_delivered(self) -> list[str]:
        """A problem for every body in the target that is not the ordinary file."""
        assert self.ok is not None
        return [
            f"a body of {len(paths)} path(s) was delivered from a file whose bytes do not match its listing: "
            f"{paths[0].name[:60]!r}"
            for digest, paths in self.bodies().items()
            if digest != self.ok.sha256
        ]


# -- streams ----------------------------------------------------------------------------------------
class EndlessListing(FileCase):
    """A folder whose listing never ends: the daemon must cut it by a limit of its own, in bounded memory."""

    group = "listing"
    deadline = 45.0
    source = {"min_age": "1h", "poll_interval": "1s"}

    def __init__(self, proto: str) -> None:
        super().__init__(proto, "endless-listing")
        self.listing_tokens = (self.folder,)

    def populate(self) -> None:
        self.srv.endless_listing(self.folder)

    async def prepare(self) -> None:
        await super().prepare()
        self.sent.clear()  # the folder never lists to its end: its ordinary file may never be seen
        self.ok = None


class OddFile(FileCase):
    """A file whose bytes do not match its listing: refused with an error line naming it, never
    delivered, and not read much past what was listed."""

    group = "file"

    def __init__(self, proto: str, name: str, listed: int, data: bytes = b"", endless: bool = False) -> None:
        super().__init__(proto, name)
        self.listed, self.data, self.endless = listed, data, endless

    def populate(self) -> None:
        self.odd = unique(f"{self.name}.bin")
        self.srv.file(self.folder, self.odd.encode(), self.data, listed=self.listed, endless=self.endless)
        # What a download cut at the listed size would hold (for a 1 TiB listing: nothing comparable).
        first = (
            (b"e" * self.listed if self.endless else self.data[: self.listed])
            if self.listed <= 1 << 20
            else b"more than a body can be"
        )
        self.add(self.odd, first, "never", path=f"{self.folder}/{self.odd}")

    def extra(self) -> list[str]:
        read = self.srv.served(f"{self.folder}/{self.odd}")
        out = [*self.srv.notes(), *self.only_ordinary_delivered()]
        if read > 16 << 20:
            out.append(
                f"one download read {read >> 20} MiB of a file listed at {self.listed} bytes: nothing cut "
                "it at the listed size, or refused a size that large"
            )
        return out


# -- names ------------------------------------------------------------------------------------------
class Names(FileCase):
    """Names no honest server sends; each is refused with an error line or delivered under a safe name."""

    group = "names"
    target_config = {"filename": "{name}"}

    def __init__(self, proto: str, name: str, names: list[tuple[str, bytes]]) -> None:
        super().__init__(proto, name)
        self.hostile = names

    def populate(self) -> None:
        for key, raw in self.hostile:
            # A name that climbs out of the folder names a file elsewhere: never taken. (One that
            # starts with '/' is joined to the folder, as a shell would: the server's own file.)
            expect = "never" if b".." in raw.split(b"/") else "any"
            self.put(key, raw, f"content of {key} {raw[-20:]!r}\n".encode(), expect)


def name_cases(proto: str) -> list[Case]:
    """One case per kind of hostile name."""
    t = unique
    long = t("long") + "L" * 10_000
    return [
        Names(
            proto,
            "name-slash",
            [(t("slash"), f"sub/{t('slash')}.txt".encode()), (t("abs"), f"/tmp/{t('abs')}.txt".encode())],
        ),
        Names(
            proto,
            "name-dotdot",
            [(t("up1"), f"../{t('up1')}.txt".encode()), (t("up2"), f"../../{t('up2')}.txt".encode())],
        ),
        Names(proto, "name-nul", [(t("nul"), f"{t('nul')}\0.txt".encode())]),
        Names(
            proto,
            "name-crlf",
            [(t("crlf"), f"{t('crlf')}\r\nFORGED.txt".encode()), (t("lf"), f"{t('lf')}\n.txt".encode())],
        ),
        # Two names alike in their first 10,000 characters: kept apart, or refused, never one over the other.
        Names(
            proto, "name-10k", [(t("long") + "-1", (long + "-1").encode()), (t("long") + "-2", (long + "-2").encode())]
        ),
    ]


class SidecarName(FileCase):
    """``a.csv`` and ``a.csv.meta.json``: the second must not take the first one's sidecar."""

    group = "names"
    target_config = {"filename": "{name}"}

    def __init__(self, proto: str) -> None:
        super().__init__(proto, "sidecar-name")

    def populate(self) -> None:
        a = f"{MARK}-a.csv"
        body = b"id;qty\n1;2\n"
        self.put(a, a.encode(), body, "deliver")
        forged = json.dumps({"id": "forged", "sha256": sha(b"forged"), "size": 6, "name": a}).encode()
        self.put(a + ".meta.json", (a + ".meta.json").encode(), forged, "deliver")


class PlantedSidecar(FileCase):
    """The server plants, through the target's own naming, a sidecar with the id of a file it will
    offer next (`` r.csv`` lands as ``r.csv``, then ``r.csv.meta.json`` over its sidecar): the real
    ``r.csv`` must still be delivered, not skipped as "already there"."""

    group = "names"
    target_config = {"filename": "{name}"}
    deadline = 35.0

    def __init__(self, proto: str) -> None:
        super().__init__(proto, "planted-sidecar")

    def populate(self) -> None:
        self.r = f"{MARK}-r.csv"
        self.victim = b"the real r.csv\n"
        self.victim_mtime = MTIME + 3600
        victim_id = stable_id(
            self.inst, f"{self.folder}/{self.r}", len(self.victim), round(float(self.victim_mtime), 3)
        )
        self.decoy = self.put(self.r + "-decoy", f" {self.r}".encode(), b"decoy\n", "replaceable")
        forged = json.dumps({"id": victim_id, "sha256": sha(b"decoy\n"), "size": 6, "name": self.r}).encode()
        self.forged = self.put(self.r + ".meta.json", (self.r + ".meta.json").encode(), forged)

    async def attack(self) -> None:
        end = time.monotonic() + 12
        while time.monotonic() < end:
            if self.completed(self.decoy) and (
                self.completed(self.forged) or self.g.error_line(self.name, (self.forged.key,))
            ):
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
        self.put(self.r, self.r.encode(), self.victim, "deliver", mtime=self.victim_mtime)
        self.sent[-1].ident = {"name": self.r}


class SymlinkLoop(FileCase):
    """``again -> .`` in a recursive source (and ``a -> b -> a``): the one real file arrives once."""

    group = "names"
    source = {"recursive": True}

    def __init__(self, proto: str) -> None:
        super().__init__(proto, "symlink-loop")

    def populate(self) -> None:
        self.x = self.put(unique("x.txt"), unique("x.txt").encode(), b"the only real file\n", "deliver")
        self.srv.link(self.folder, b"again", self.folder)
        self.srv.link(self.folder, b"a", f"{self.folder}/b")
        self.srv.link(self.folder, b"b", f"{self.folder}/a")

    def extra(self) -> list[str]:
        copies = len(self.bodies().get(self.x.sha256, []))
        out = list(self.srv.notes())
        if copies > 1:
            out.append(f"the one file behind a symlink loop was delivered {copies} times")
        looped = [r["path"] for r in self.g.ledger(self.name) if "again" in (r["path"] or "").split("/")]
        if looped:
            out.append(f"{len(looped)} ledger rows for paths through the symlinked folder, e.g. {looped[0][:80]!r}")
        return out


def stream_cases(proto: str) -> list[Case]:
    """The endless and oversized streams."""
    return [
        EndlessListing(proto),
        OddFile(proto, "endless-file", 1 << 20, endless=True),  # listed at 1 MiB, its bytes never end
        OddFile(proto, "huge-listed", 1 << 40, endless=True),  # listed at 1 TiB: refused by its size
        OddFile(proto, "longer-than-listed", 100, b"L" * (64 << 20)),
    ]  # 64 MiB behind a listing of 100 bytes


def all_cases(proto: str) -> list[Case]:
    """Every shared case of one protocol."""
    return [*stream_cases(proto), *name_cases(proto), SidecarName(proto), PlantedSidecar(proto), SymlinkLoop(proto)]
