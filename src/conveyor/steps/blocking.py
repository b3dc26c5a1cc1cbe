"""The steps' blocking work, run on a step's own thread: gzip, zip and tar, read and written
in chunks into spool files (:class:`~conveyor.payload.spool.SpoolWriter`), never whole in memory."""

from __future__ import annotations

import gzip
import io
import logging
import posixpath
import stat
import tarfile
import threading
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Protocol

from conveyor.config.steps import RATIO_FLOOR, Compress, Decompress, Limits, Unpack
from conveyor.payload.body import CHUNK, Body
from conveyor.payload.payload import Payload
from conveyor.payload.spool import Spool

log = logging.getLogger("conveyor.steps")


class StepFailed(Exception):
    """The step cannot do its work on this input (corrupt, too large, the wrong key): for good."""


@dataclass
class Produced:
    """One payload's worth of output: its body, name, and where it came from in the input."""

    body: Body
    name: str | None
    member: str | None = None
    """The archive member's path, for ``unpack``."""
    folder: str | None = None
    """The folder below the source's path (None: the parent's)."""


class Work(Protocol):
    """What a step does, blocking; :meth:`start` and each ``next`` of its iterator run on a
    worker thread, one at a time."""

    def start(self, parent: Payload, stop: threading.Event) -> Iterator[Produced]:
        """The outputs for ``parent``, computed as the iterator is advanced; ``stop`` set means
        give up early. A :class:`Produced` whose body is the parent's passes it on unchanged."""
        ...

    def close(self) -> None:
        """Release what the step holds (keyrings, agents)."""
        ...


def open_body(body: Body) -> IO[bytes]:
    """The body as a binary file to read (and seek) on this thread."""
    if body.in_memory:
        return io.BytesIO(body.data())
    assert body.path is not None
    return open(body.path, "rb")


class Meter:
    """Counts what a step writes out of one input against its bomb limits."""

    def __init__(self, limits: Limits, size_in: int) -> None:
        self.limits = limits
        self.size_in = size_in
        self.total = 0

    def add(self, n: int) -> None:
        """``n`` more bytes out; :class:`StepFailed` past ``max_size`` or ``max_ratio``."""
        self.total += n
        lim = self.limits
        if self.total > lim.max_size:
            raise StepFailed(f"more than {lim.max_size} bytes unpacked, over max_size: an archive bomb?")
        if self.total > RATIO_FLOOR and self.total > lim.max_ratio * max(self.size_in, 1):
            raise StepFailed(
                f"more than {lim.max_ratio:g} times the input's {self.size_in} bytes unpacked, over max_ratio: "
                "an archive bomb?"
            )


def fill(spool: Spool, chunks: Iterable[bytes], meter: Meter | None, stop: threading.Event) -> Body:
    """The chunks written to a new spool body."""
    w = spool.writer()
    try:
        for c in chunks:
            if stop.is_set():
                raise StepFailed("stopped")
            if meter is not None:
                meter.add(len(c))
            w.write(c)
        return w.finish()
    except BaseException:
        w.abort()
        raise


def reads(f: IO[bytes]) -> Iterator[bytes]:
    """``f`` in chunks."""
    while c := f.read(CHUNK):
        yield c


def renamed(name: str | None, drop: tuple[str, ...], swap: dict[str, str] | None = None) -> str | None:
    """``name`` without the first suffix of ``drop`` it ends with (case-insensitive), or with
    the suffix swapped (``.tgz`` → ``.tar``); unchanged if it has none."""
    if name is None:
        return None
    low = name.lower()
    for old, new in (swap or {}).items():
        if low.endswith(old) and len(name) > len(old):
            return name[: -len(old)] + new
    for suffix in drop:
        if low.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


GZIP_MAGIC = b"\x1f\x8b"


class Gunzip:
    """``decompress``: gzip (several members concatenated are one stream, as gunzip reads them)."""

    def __init__(self, config: Decompress, spool: Spool) -> None:
        self.config = config
        self.spool = spool

    def start(self, parent: Payload, stop: threading.Event) -> Iterator[Produced]:
        f = open_body(parent.body)
        try:
            gzipped = f.read(2) == GZIP_MAGIC
            f.seek(0)
        except BaseException:
            f.close()
            raise
        return self._run(parent, f, gzipped, stop)

    def _run(self, parent: Payload, f: IO[bytes], gzipped: bool, stop: threading.Event) -> Iterator[Produced]:
        with f:
            if not gzipped:
                if self.config.format == "auto":
                    yield Produced(parent.body, parent.name)
                    return
                raise StepFailed("not gzip data (no gzip header)")
            g = gzip.GzipFile(fileobj=f, mode="rb")
            body = fill(self.spool, _gunzipped(g), Meter(self.config, parent.body.size), stop)
            yield Produced(body, renamed(parent.name, (".gz", ".gzip"), {".tgz": ".tar"}))

    def close(self) -> None:
        pass


def _gunzipped(g: gzip.GzipFile) -> Iterator[bytes]:
    while True:
        try:
            c = g.read(CHUNK)
        except EOFError:
            raise StepFailed("truncated gzip data: the input ends before the end of the compressed stream") from None
        except (gzip.BadGzipFile, zlib.error, OSError) as e:
            raise StepFailed(f"corrupt gzip data: {e}") from None
        if not c:
            return
        yield c


class _SpoolSink(io.RawIOBase):
    """A file object writing into a spool writer (what GzipFile writes to)."""

    def __init__(self, spool: Spool, stop: threading.Event) -> None:
        self.writer = spool.writer()
        self.stop = stop

    def writable(self) -> bool:
        return True

    def write(self, b: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        if self.stop.is_set():
            raise StepFailed("stopped")
        self.writer.write(bytes(b))
        return len(b)


class Gzip:
    """``compress: gzip``: written with no name and time 0 in its header, so a redo is byte-identical."""

    def __init__(self, config: Compress, spool: Spool) -> None:
        self.config = config
        self.spool = spool

    def start(self, parent: Payload, stop: threading.Event) -> Iterator[Produced]:
        sink = _SpoolSink(self.spool, stop)
        try:
            with (
                open_body(parent.body) as f,
                gzip.GzipFile(filename="", fileobj=sink, mode="wb", compresslevel=self.config.level, mtime=0) as g,
            ):
                for c in reads(f):
                    g.write(c)
            body = sink.writer.finish()
        except BaseException:
            sink.writer.abort()
            raise
        name = None if parent.name is None else parent.name + ".gz"
        return iter([Produced(body, name)])

    def close(self) -> None:
        pass


class Unpacker:
    """``unpack``: each regular file of a zip or tar archive, in archive order."""

    def __init__(self, config: Unpack, spool: Spool) -> None:
        self.config = config
        self.spool = spool

    def start(self, parent: Payload, stop: threading.Event) -> Iterator[Produced]:
        return self._run(parent, open_body(parent.body), stop)

    def _run(self, parent: Payload, f: IO[bytes], stop: threading.Event) -> Iterator[Produced]:
        meter = Meter(self.config, parent.body.size)
        with f:
            try:
                if self.config.format == "zip":
                    members = self._zip(f)
                else:
                    gz = self.config.format == "tar.gz"
                    # closed with f: a stream-mode TarFile holds nothing else
                    members = self._tar(tarfile.open(fileobj=f, mode="r|gz" if gz else "r|"))  # noqa: SIM115
                for path, data in members:
                    body = fill(self.spool, data, meter, stop)
                    folder, _, name = path.rpartition("/")
                    yield Produced(body, name, member=path, folder="/".join(p for p in (parent.folder, folder) if p))
            except StepFailed:
                raise
            except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
                raise StepFailed(f"corrupt {self.config.format} archive: {e or type(e).__name__}") from None
            except (RuntimeError, NotImplementedError) as e:  # zipfile: encrypted or unknown compression
                raise StepFailed(f"cannot read a member of the {self.config.format} archive: {e}") from None

    def _count(self, n: int) -> None:
        if n > self.config.max_members:
            raise StepFailed(f"more than {self.config.max_members} members, over max_members: an archive bomb?")

    def _zip(self, f: IO[bytes]) -> Iterator[tuple[str, Iterator[bytes]]]:
        zf = zipfile.ZipFile(f)
        infos = zf.infolist()
        self._count(len(infos))
        # Sizes a zip declares are checked before anything is read; what members really
        # inflate to is counted as they are read (a zip can lie about both).
        declared = sum(i.file_size for i in infos)
        if declared > self.config.max_size:
            raise StepFailed(f"members declare {declared} bytes, over max_size ({self.config.max_size})")
        paths = {i.filename: member_path(i.filename) for i in infos if not i.is_dir()}  # all, before any is delivered
        for info in infos:
            if info.is_dir():
                continue
            path = paths[info.filename]
            if stat.S_IFMT(info.external_attr >> 16) not in (0, stat.S_IFREG):
                log.warning("unpack: member %r is not a regular file: skipped", path)
                continue
            with zf.open(info) as m:
                yield path, reads(m)

    def _tar(self, tf: tarfile.TarFile) -> Iterator[tuple[str, Iterator[bytes]]]:
        n = 0
        for info in tf:
            n += 1
            self._count(n)
            if info.isdir():
                continue
            path = member_path(info.name)
            if not info.isreg():
                log.warning("unpack: member %r is not a regular file: skipped", path)
                continue
            m = tf.extractfile(info)
            assert m is not None
            yield path, reads(m)

    def close(self) -> None:
        pass


def member_path(raw: str) -> str:
    """An archive member's path, '/'-separated and relative; one that would leave the folder
    it is unpacked into (absolute, ``..``) fails the archive rather than being rewritten."""
    path = posixpath.normpath(raw.replace("\\", "/"))
    if raw.startswith(("/", "\\")) or path == ".." or path.startswith("../") or path in ("", "."):
        raise StepFailed(f"member {raw!r} points outside the archive (absolute or '..')")
    return path
