"""C library calls Python's ``os`` module does not offer (``syncfs``, ``sync_file_range``).

ctypes is loaded at the first call, not at start-up: importing it costs about 30 ms, and most
runs reach these calls only when the first large file or batch is delivered.
"""

from __future__ import annotations

import functools
from typing import Any


@functools.cache
def function(name: str, *argtypes: str) -> Any | None:
    """The C library's function ``name`` taking arguments of the ctypes types named (``"c_int"``)
    and returning an int (errno kept for :func:`errno`), or None where the library has no such
    function (not Linux)."""
    import ctypes

    try:
        call = getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):
        return None
    call.argtypes = [getattr(ctypes, t) for t in argtypes]
    call.restype = ctypes.c_int
    return call


def errno() -> int:
    """The errno the last call through :func:`function` left on this thread."""
    import ctypes

    return ctypes.get_errno()
