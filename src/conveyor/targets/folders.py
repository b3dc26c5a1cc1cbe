"""Whether a local folder can take files, told without writing: for the directory target's and
the local instance's ``check --connect``."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from conveyor.errors import Permanent


def writable_folder(folder: Path) -> str:
    """Whether this process can write files into ``folder``, or create it, told without writing:
    the folder, or its nearest existing ancestor, must be a folder this user may write (the
    permission bits and ACLs as access(2) sees them, a read-only mount included). A description,
    or Permanent naming the path that stops it."""
    existing, missing = folder, False
    while True:
        try:
            st = os.stat(existing)
            break
        except (FileNotFoundError, NotADirectoryError):
            # NotADirectoryError: some ancestor is a file; walking up finds it
            missing = True
        except OSError as e:
            raise Permanent(f"cannot look at {existing}: {e.strerror or e}", path=str(folder)) from None
        if existing.parent == existing:
            raise Permanent(f"no folder of {folder} exists", path=str(folder))
        existing = existing.parent
    if not stat.S_ISDIR(st.st_mode):
        raise Permanent(
            f"{existing} is a file, not a folder" + (f": {folder} cannot be created" if missing else ""),
            path=str(folder),
        )
    effective = os.access in os.supports_effective_ids
    if not os.access(existing, os.W_OK | os.X_OK, effective_ids=effective):
        why = "a read-only file system" if _read_only(existing) else f"not writable by uid {os.geteuid()}"
        verb = "cannot be written" if not missing else f"cannot be created under {existing}"
        raise Permanent(f"{folder} {verb}: {why}", path=str(folder))
    if missing:
        return f"does not exist; created at the first delivery under {existing} (writable)"
    if st.st_mode & stat.S_IWOTH:
        return f"exists, writable; warning: writable by every user (mode {stat.S_IMODE(st.st_mode):04o})"
    return "exists, writable"


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False
