"""Downloading one large file in tests of segmented reads (SFTP and FTP alike): the bytes on disk
and the SHA-256 the spool computed are both checked against the source's."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from conveyor.payload import SpoolWriter


async def finished(w: SpoolWriter, size: int, digest: str) -> None:
    """Finish ``w``; its body has ``size`` bytes whose SHA-256, computed and re-read, is ``digest``."""
    body = w.finish()
    assert body.size == size and await body.digest() == digest
    assert hashlib.sha256(Path(str(body.path)).read_bytes()).hexdigest() == digest
    body.release()


async def fetch(inst: Any, w: SpoolWriter, digest: str, name: str = "big.bin") -> SpoolWriter:
    """Download ``name`` from ``inst`` (an SFTP or FTP instance) into ``w`` and check it; ``w``."""
    f = await inst.stat(name)
    assert f is not None
    await inst.download(f, w)
    await finished(w, f.size, digest)
    return w
