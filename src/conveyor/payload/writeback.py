"""Start the kernel writing a file's dirty pages to disk now, without waiting for it.

A large body written to the spool is made durable by an fsync at the target. Left to itself,
the kernel keeps all of it in memory until then (with gigabytes of RAM it writes back only past
``dirty_background_ratio`` or after 30 s), so the delivery waits for the whole file to reach the
disk after its last byte arrived. Starting the writes while the download runs overlaps them with
the network, and the final fsync finds little left to do.
"""

from __future__ import annotations

from conveyor import libc

_SYNC_FILE_RANGE_WRITE = 2
"""Start writing the range's dirty pages; do not wait for them (Linux ``<fcntl.h>``)."""


def start_writeback(fd: int) -> None:
    """Ask the kernel to start writing the open file's dirty pages (Linux; elsewhere a no-op).

    Its result is not checked: the fsync that makes the file durable reports a real disk error,
    and a file system without the call (EINVAL) only loses the head start.
    """
    call = libc.function("sync_file_range", "c_int", "c_int64", "c_int64", "c_uint")
    if call is not None:
        call(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)  # offset 0, length 0: the whole file
