"""Upload temp names for remote targets (sftp, ftp): the same for every retry of the same body.

An upload goes to a hidden temporary name beside its destination and is renamed into place,
so the partner never sees a partial file. When an attempt dies half-way (the connection dropped, the server was
killed, conveyor itself crashed), the partial temp file stays on the partner's server. The
retry, in this run or after a restart, uses the same name, so it writes over that leftover
and renames it away instead of leaving one more file behind.
"""

from __future__ import annotations

import asyncio
import hashlib
import os

from conveyor.names import NAME_MAX, cut_bytes
from conveyor.payload.body import Body


def temp_name(name: str, digest: str) -> str:
    """A hidden temporary name beside ``name``: ``.name.conveyor-<digest[:12]>.tmp``.

    ``digest`` comes from :func:`temp_key`. A file source skips names like this one (a dot,
    ``.tmp``), so a folder that is both a target and a source never takes a partial file.
    The name is cut (in bytes of UTF-8, between characters) so that the temp name takes at
    most 255 bytes, as the final name does.
    """
    suffix = f".conveyor-{digest[:12]}.tmp"
    return f".{cut_bytes(name, NAME_MAX - 1 - len(suffix))}{suffix}"


async def temp_key(body: Body) -> str:
    """What names an upload's temp file: the body's SHA-256 when known (spooled bodies) or cheap
    (in memory); for a file read in place whose hash is not known yet (a local source), a hash
    of the file's identity and version (path, device, inode, size, mtime in ns) instead.

    Both stay the same across retries of an unchanged body and change when the bytes do.
    Hashing a local file first would read it in full once more, at SHA-256 speed, before the
    first byte is sent.
    """
    known = body.known_digest
    if known is not None or body.in_memory or body.path is None:
        return known or await body.digest()
    path = body.path
    st = await asyncio.to_thread(os.stat, path)
    # A body read through a held descriptor names its file by origin: the descriptor's number
    # differs after a restart, the file's path does not.
    ident = f"{body.origin or path}\0{st.st_dev}\0{st.st_ino}\0{st.st_size}\0{st.st_mtime_ns}"
    return hashlib.sha256(ident.encode()).hexdigest()
