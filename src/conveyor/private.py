"""The daemon's own files and folders (state store, spool) are its alone, whatever the umask.

Outside systemd (whose unit sets ``UMask=0077``) a umask of 022 would leave the ledger and
the bodies of partners' files readable by every local user.
"""

from __future__ import annotations

import os
from pathlib import Path


def private_dirs(path: Path, *, ours: bool = True) -> None:
    """Create ``path`` and each missing folder above it 0700. When the folder is wholly the
    daemon's (``ours``: the spool), one that already existed, made by an older version or under
    a loose umask, is made 0700 too; folders above it, and any owned by someone else, are left
    as they are."""
    missing = []
    p = path
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:
            continue  # made meanwhile by someone else: theirs to set
        os.chmod(folder, 0o700)  # mkdir's mode passes through the umask
    if ours:
        tighten(path, 0o700)


def private_file(path: Path) -> None:
    """Create ``path`` empty 0600 if missing (its folders as :func:`private_dirs` does), or make
    an existing one of the daemon's own 0600. Its folder is tightened only when made here: it
    may be one the daemon shares (``state: state.db`` is in the working folder)."""
    private_dirs(path.parent, ours=False)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        st = os.fstat(fd)
        if st.st_uid == os.geteuid() and st.st_mode & 0o077:
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def tighten(path: Path, mode: int) -> None:
    """Set ``mode`` on ``path`` if it is the daemon's own and lets others in; else leave it."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if st.st_uid == os.geteuid() and st.st_mode & 0o077 and not os.path.islink(path):
        os.chmod(path, mode)
