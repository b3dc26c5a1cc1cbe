"""Payloads: body bytes plus metadata, with large bodies streamed through the spool on disk.

One module per concept: :mod:`.body` (the bytes), :mod:`.spool` (large bodies on disk),
:mod:`.payload` (the payload and its metadata), :mod:`.timestamps`. The names below are the
package's public face, re-exported for callers that want them in one import.
"""

from conveyor.payload.body import CHUNK, Body, hash_file
from conveyor.payload.payload import Payload, stable_id
from conveyor.payload.spool import Spool, SpoolWriter, disk_full, remove_files
from conveyor.payload.timestamps import utc_iso

__all__ = [
    "CHUNK",
    "Body",
    "Payload",
    "Spool",
    "SpoolWriter",
    "disk_full",
    "hash_file",
    "remove_files",
    "stable_id",
    "utc_iso",
]
