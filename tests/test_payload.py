"""The payload package's public names; small pieces of the per-payload path rewritten for speed."""

from __future__ import annotations

import ast
import asyncio
import builtins
import hashlib
import importlib
import json
import mimetypes
import random
import threading
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, cast

import pytest

import conveyor.payload
from conveyor.errors import NotFound, Permanent
from conveyor.interfaces import Context, RemoteFile
from conveyor.payload import Spool, utc_iso
from conveyor.payload.spool import SpoolWriter
from conveyor.status import StatusBoard
from conveyor.transfer.local.config import LocalConfig
from conveyor.transfer.local.instance import LocalInstance

ROOT = Path(__file__).resolve().parents[1]

CONCEPTS = {
    "conveyor.payload.body": {"CHUNK", "Body", "hash_file"},
    "conveyor.payload.spool": {"Spool", "SpoolWriter", "disk_full", "remove_files"},
    "conveyor.payload.payload": {"Payload", "stable_id"},
    "conveyor.payload.timestamps": {"utc_iso"},
}
"""Each name of the payload package, by the module of its concept."""


def test_the_payload_package_exports_each_name_from_its_concepts_module() -> None:
    assert set(conveyor.payload.__all__) == set().union(*CONCEPTS.values())
    for module_name, names in CONCEPTS.items():
        module = importlib.import_module(module_name)
        for name in names:
            assert getattr(conveyor.payload, name) is getattr(module, name), f"{module_name}.{name}"


def names_taken_from_the_package(folder: str) -> dict[str, str]:
    """Each name imported from ``conveyor.payload`` itself under ``folder``, with one place that does."""
    used: dict[str, str] = {}
    for path in (ROOT / folder).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module == "conveyor.payload":
                used.update((a.name, f"{path.relative_to(ROOT)}:{node.lineno}") for a in node.names)
    return used


def test_every_name_taken_from_the_payload_package_is_exported() -> None:
    used = names_taken_from_the_package("tests") | names_taken_from_the_package("bench")
    assert len(used) > 5, "no imports of conveyor.payload found: the walk is broken"
    missing = {name: where for name, where in used.items() if name not in conveyor.payload.__all__}
    assert not missing, missing


def test_conveyor_imports_payload_names_from_their_concepts_module() -> None:
    # the import graph then shows which part of the payload package a module depends on
    assert names_taken_from_the_package("src") == {}


def test_the_payload_package_shadows_no_builtin() -> None:
    # a method named like a builtin (``Body.bytes``) makes the class body spell ``builtins.bytes``
    names = {n for n in dir(builtins) if not n.startswith("_")}
    found: list[str] = []
    for path in sorted((ROOT / "src" / "conveyor" / "payload").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ClassDef):
                found += [
                    f"{path.name}: {node.name}.{f.name}"
                    for f in node.body
                    if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)) and f.name in names
                ]
    assert not found


def by_datetime(ts: float) -> str:
    """The reference for utc_iso: datetime's rounding and formatting."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def test_utc_iso_matches_datetime() -> None:
    rng = random.Random(7)
    edges = [0.0, -0.0000004, -1.5, 1.9999995, 1.0000005, 1764230000.9999999, 1e9 + 0.0005, 1e9 + 0.0015]
    # half a microsecond past a microsecond: where datetime's half-to-even rounding decides
    halves = [rng.randrange(2_000_000_000) + k / 1e6 + 0.5e-6 for k in range(2000)]
    spread = [rng.uniform(-1e9, 4e9) for _ in range(20000)]
    for ts in edges + halves + spread:
        assert utc_iso(ts) == by_datetime(ts), ts
    assert utc_iso(datetime(2026, 1, 1, 12, tzinfo=UTC)) == "2026-01-01T12:00:00.000Z"
    # Aware datetimes (Pub/Sub's publish_time) go through their timestamp: the same text.
    plus2 = timezone(timedelta(hours=2))
    for ts in halves[:500] + spread[:2000]:
        for tz in (UTC, plus2):
            dt = datetime.fromtimestamp(ts, tz)
            assert utc_iso(dt) == dt.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"), dt
    naive = datetime(2026, 1, 1, 12, 0, 0, 999_999)
    assert utc_iso(naive) == naive.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    now = utc_iso()
    assert now.endswith("Z") and len(now) == len("2026-01-01T12:00:00.000Z")


async def test_local_paths_stay_under_the_root(tmp_path: Path) -> None:
    (tmp_path / "root" / "in").mkdir(parents=True)
    (tmp_path / "root" / "in" / "a.txt").write_bytes(b"a")
    (tmp_path / "secret").write_bytes(b"s")
    inst = LocalInstance(
        "box",
        LocalConfig(type="local", root=str(tmp_path / "root")),
        Context(spool=None, status=StatusBoard()),  # type: ignore[arg-type]
    )
    body = await inst.open_in_place(RemoteFile("in/a.txt", 1, 0.0), 1 << 20)
    assert body.data() == b"a"
    assert body.known_digest == hashlib.sha256(b"a").hexdigest()  # hashed on the I/O thread, with the read
    for bad in ("../secret", "in/../../secret", ".."):
        with pytest.raises(Permanent, match="leaves the instance root"):
            await inst.open_in_place(RemoteFile(bad, 1, 0.0), 1 << 20)
    # Over 1 MiB: handed over as a held descriptor, read through its path in /proc, whatever the
    # file's own name holds meanwhile; gone: NotFound.
    big = tmp_path / "root" / "in" / "big.bin"
    big.write_bytes(b"b" * (2 << 20))
    body = await inst.open_in_place(RemoteFile("in/big.bin", 2 << 20, 0.0), 8 << 20)
    assert not body.in_memory and body.size == 2 << 20 and body.origin == str(big)
    big.unlink()
    assert body.path is not None and body.path.read_bytes() == b"b" * (2 << 20)
    body.release()
    with pytest.raises(NotFound, match="no such file"):
        await inst.open_in_place(RemoteFile("in/big.bin", 2 << 20, 0.0), 8 << 20)
    # An absolute path names a file under the root, never the machine's own /etc/hostname.
    assert await inst.stat("/etc/hostname") is None
    await inst.remove("in/a.txt")
    await inst.remove("in/a.txt")  # already gone is fine
    assert not (tmp_path / "root" / "in" / "a.txt").exists()
    await inst.close()


def test_content_type_guess_matches_mimetypes() -> None:
    from conveyor.targets.http.target import _guess_type

    names = [
        "a.csv",
        "A.CSV",
        "x.tar.gz",
        "x.tgz",
        "x.GZ",
        "x.Z",
        "x.json",
        "x",
        "x.",
        "...",
        ".bashrc",
        "data:text/plain,x.csv",
        "a.b.c.xml",
        "x.svgz",
        "x.unknown",
        "x.PDF",
        "dir/x.txt",
        "x.tar.bz2",
    ]
    for name in names * 2:  # the second time from the cache
        assert _guess_type(name) == mimetypes.guess_type(name)[0], name


def test_meta_header_json_is_json_dumps() -> None:
    from conveyor.targets.http.target import _META_JSON

    docs = [
        {"id": "a", "size": 1, "message": None, "file": {"path": 'é/x\\"y\u0007', "mtime": "t"}},
        {"n": [1, 2.5, True, None, {"k": "\u2028"}], "f": 1e300, "neg": -0.0},
        {},
    ]
    for doc in docs:
        assert _META_JSON(doc) == json.dumps(doc, separators=(",", ":"), ensure_ascii=True)


async def test_the_spool_hashes_while_a_file_write_is_stuck(tmp_path: Path, monkeypatch: Any) -> None:
    """A disk that stalls holds up the file writes, not the SHA-256 of what already came."""
    import conveyor.payload.spool as spool_module

    go = threading.Event()
    real = spool_module._writev_all

    def stuck(fd: int, block: list[bytes | memoryview], n: int) -> None:
        go.wait(10)
        real(fd, block, n)

    monkeypatch.setattr(spool_module, "_writev_all", stuck)
    spool = Spool(tmp_path / "spool", threshold=1024)
    spool.prepare()
    w = spool.writer()
    chunks = [random.randbytes(SpoolWriter._BLOCK) for _ in range(4)]
    for c in chunks:
        w.write(c)
    want = hashlib.sha256(b"".join(chunks)).hexdigest()
    deadline = time.monotonic() + 10
    while w._hash.copy().hexdigest() != want and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert w._hash.copy().hexdigest() == want, "SHA-256 waited for the stuck file write"
    go.set()
    body = w.finish()
    assert await body.digest() == want and body.path is not None
    assert body.path.read_bytes() == b"".join(chunks)
    body.release()
    assert spool.used == 0


def test_the_spool_writer_keeps_each_piece_as_handed_over(tmp_path: Path) -> None:
    """Pieces of any size and type, from a buffer the caller refills at once (as the FTP client
    does), past the in-memory threshold: the file and its SHA-256 are the bytes handed over."""
    from conveyor.payload import Spool

    spool = Spool(tmp_path / "spool", threshold=64 * 1024)
    spool.prepare()
    rng = random.Random(7)
    data = rng.randbytes(5 * 1024 * 1024 + 11)
    buf = bytearray(1024 * 1024)
    w = spool.writer()
    at = 0
    while at < len(data):
        n = min(rng.choice([1, 100, 4096, 65536, 1024 * 1024, 1024 * 1024 + 1]), len(data) - at)
        if n > len(buf) or rng.random() < 0.3:
            w.write(data[at : at + n])  # bytes, kept as they are
        else:
            buf[:n] = data[at : at + n]
            cast(Any, w.write)(memoryview(buf)[:n])  # as the FTP client hands its receive buffer
            buf[:n] = bytes(n)  # refilled before the spool's threads are done
        at += n
    body = w.finish()
    assert body.size == len(data) and body.known_digest == hashlib.sha256(data).hexdigest()
    assert body.path is not None and body.path.read_bytes() == data
    body.release()
