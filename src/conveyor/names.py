"""File names that come from the outside world: checked on the way in, sanitised on the way out."""

from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def unsafe_component(name: str) -> str | None:
    """Why a remote path component must not be used, or None when it is safe."""
    if name in ("", ".", ".."):
        return f"name {name!r} is not a file name"
    if "/" in name or "\\" in name:
        return f"name {name!r} contains a path separator"
    if _CONTROL.search(name):
        return f"name {name!r} contains control characters"
    return None


def unsafe_path(path: str) -> str | None:
    """Why a '/'-separated relative path must not be used, or None when every part is safe."""
    if path.startswith("/"):
        return f"path {path!r} is absolute"
    for part in path.split("/"):
        why = unsafe_component(part)
        if why:
            return why
    return None


def normal_path(path: str) -> str:
    """A configured path relative to an instance root, in its one spelling: ``.``, ``./``, ``/``
    and ``""`` are the root itself; empty and ``.`` parts are dropped and ``a/../b`` is ``b``.
    Raises ValueError when a ``..`` climbs above the root."""
    out: list[str] = []
    for part in path.split("/"):
        if part == "..":
            if not out:
                raise ValueError(f"{path!r} leaves the instance root ('..' above it)")
            out.pop()
        elif part not in ("", "."):
            out.append(part)
    return "/".join(out)


def listed_path(path: str) -> str:
    """A listed path without empty or ``.`` parts (``./a.txt`` is ``a.txt``), so one file has one
    spelling; ``..`` and a leading ``/`` are kept for :func:`unsafe_path` to refuse."""
    if "/." not in path and not path.startswith(".") and "//" not in path and not path.endswith("/"):
        return path  # the usual case, once per listed file
    head = "/" if path.startswith("/") else ""
    return head + "/".join(p for p in path.split("/") if p not in ("", "."))


def sanitise(name: str, fallback: str) -> str:
    """A name safe to create in a folder: separators and control characters become '_',
    and names that are only dots fall back to ``fallback``."""
    clean = _CONTROL.sub("_", name.replace("/", "_").replace("\\", "_")).strip()
    if clean.strip(".") == "":
        return fallback
    return clean[:240]


def render(template: str, fields: dict[str, str]) -> str:
    """Fill ``{id}``-style placeholders; unknown placeholders stay as written."""
    return re.sub(r"\{(\w+)\}", lambda m: fields.get(m.group(1), m.group(0)), template)


def name_fields(payload_id: str, name: str | None, flow: str) -> dict[str, str]:
    """Template fields for a payload: id, name, flow, stem, ext."""
    base = name or payload_id
    stem, dot, ext = base.rpartition(".")
    if not dot or not stem:
        stem, ext = base, ""
    return {"id": payload_id, "name": base, "flow": flow, "stem": stem, "ext": ext}
