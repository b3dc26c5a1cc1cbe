"""The ``root`` of an SFTP or FTP instance: absolute, or relative to the folder the login lands in.

OpenSSH sftp, curl, rclone and lftp resolve relative paths from the login folder (usually the
home folder), so conveyor does too: an empty root or ``~`` is that folder, ``data`` or ``~/data``
a folder below it, and only an absolute root ignores it.
"""

from __future__ import annotations

import posixpath
from typing import Any

ROOT_HELP = (
    "folder every path of this instance is relative to: absolute (/srv/out), or relative "
    "to the folder the login lands in (data, ~/data); empty or ~ is the login folder itself"
)
"""The ``root`` field description shared by the sftp and ftp instance models."""


def normalise_root(value: Any) -> Any:
    """A pydantic before-validator: ``None`` (YAML ``root: ~``) and ``~`` become ``""``, ``~/x`` becomes ``x``."""
    if value is None:
        return ""
    if not isinstance(value, str):
        return value
    v = value.strip()
    if v == "~" or v.startswith("~/"):
        return v[1:].lstrip("/")
    if v.startswith("~"):
        raise ValueError(
            f"root {value!r}: only ~ (the folder the login lands in) is understood, "
            "not ~user; give an absolute folder instead"
        )
    return v


def fixed_root(root: str) -> str | None:
    """The absolute server folder of an absolute ``root``; None when it depends on the login folder."""
    return resolve_root("/", root) if root.startswith("/") else None


def resolve_root(login_folder: str, root: str) -> str:
    """The absolute server folder of ``root``, given the folder the login landed in."""
    p = posixpath.normpath(posixpath.join(login_folder or "/", root))
    return "/" + p.lstrip("/") if p.startswith("/") else p  # normpath keeps a leading '//'


def join_root(root: str | None, path: str) -> str:
    """``path`` (relative to the instance root) as an absolute server path.

    ``root`` is None until a login has said where the login folder is: building a path before
    that would silently start it at the server's ``/``, so it is a bug, raised as one.
    """
    if root is None:
        raise RuntimeError(f"path {path!r} was built before a login resolved the instance root")
    rel = path.strip("/")
    return posixpath.join(root, rel) if rel else root
