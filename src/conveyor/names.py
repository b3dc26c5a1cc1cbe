"""File names that come from the outside world: checked on the way in, sanitised on the way out."""

from __future__ import annotations

import hashlib
import re
from typing import Literal

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

NAME_MAX = 255
"""Bytes in one file name on the common file systems (ext4, xfs, btrfs, and what SFTP and FTP
servers sit on): a name is measured in bytes of UTF-8, not in characters."""
SIDECAR_SUFFIX = ".meta.json"
"""What a directory target appends to a body's name for its metadata sidecar."""

UnsafeNames = Literal["keep", "rename", "refuse"]
"""What a target does with a name some file systems or readers treat specially (see
:func:`unsafe_reason`): deliver it as it is, deliver it renamed, or refuse the payload."""

_WINDOWS_RESERVED = frozenset(
    ["CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"]
    + [f"{dev}{n}" for dev in ("COM", "LPT") for n in [*"123456789", "\u00b9", "\u00b2", "\u00b3"]]
)
_WINDOWS_CHARS = re.compile(r'[<>:"|?*]')
_SIDECAR_LIKE = re.compile(r"\.meta\.json_*\Z")
_HASH_LEN = 16


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
    and names that are only dots fall back to ``fallback`` (or, when that is only dots too,
    to a name made from a hash of it). Not yet cut to a length: see :func:`fit_bytes`."""
    clean = _CONTROL.sub("_", name.replace("/", "_").replace("\\", "_")).strip()
    if clean.strip(".") == "":
        clean = _CONTROL.sub("_", fallback.replace("/", "_").replace("\\", "_")).strip()
        if clean.strip(".") == "":
            return "_" + _hash(name)
    return clean


def _hash(name: str) -> str:
    return hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_LEN]


def name_bytes(name: str) -> int:
    """Length of ``name`` in bytes as a file system stores it (UTF-8). Undecodable bytes of a
    local name (surrogates) count three, never less than they take."""
    return len(name.encode("utf-8", "surrogatepass"))


def cut_bytes(text: str, limit: int) -> str:
    """The longest prefix of ``text`` that takes at most ``limit`` bytes, cut between characters."""
    raw = text.encode("utf-8", "surrogatepass")
    if len(raw) <= limit:
        return text
    # Back up to the start of a character: UTF-8 continuation bytes are 0b10xxxxxx.
    end = limit
    while end > 0 and raw[end] & 0xC0 == 0x80:
        end -= 1
    return raw[:end].decode("utf-8", "surrogatepass")


def fit_bytes(name: str, limit: int = NAME_MAX) -> str:
    """``name`` if it takes at most ``limit`` bytes; else its head, ``~``, 16 hex digits of the
    SHA-256 of the whole name, and its extension (up to 16 bytes), together at most ``limit``
    bytes. Two long names that share their first 200 characters stay two names."""
    if name_bytes(name) <= limit:
        return name
    stem, dot, ext = name.rpartition(".")
    tail = f".{ext}" if dot and stem and name_bytes(ext) < 16 else ""
    tag = f"~{_hash(name)}"
    return cut_bytes(name[: len(name) - len(tail)], limit - len(tag) - name_bytes(tail)) + tag + tail


def unsafe_reason(name: str) -> str | None:
    """Why ``name`` is one that some file systems or readers treat specially, or None.

    A leading dot hides a file (and marks a temporary or partial file to many readers,
    conveyor's own file sources among them); Windows and SMB shares refuse the device names
    (``CON``, ``NUL``, ``COM1``, also with an extension), names ending in a dot or a space, and
    the characters ``<>:"|?*`` (``a.txt:x`` even writes into a hidden stream of ``a.txt``).
    """
    if name.startswith("."):
        return "starts with a dot"
    if name.endswith((".", " ")):
        return "ends with a dot or a space"
    if _WINDOWS_CHARS.search(name):
        return 'contains one of <>:"|?*'
    if name.split(".", 1)[0].rstrip(" ").upper() in _WINDOWS_RESERVED:
        return "is a Windows device name"
    return None


def make_safe(name: str) -> str:
    """``name`` renamed so :func:`unsafe_reason` finds nothing: ``<>:"|?*`` and trailing dots
    and spaces become ``_``, a leading dot gets a ``_`` before it, and a device name gets a
    ``_`` after its first part (``CON.txt`` is ``CON_.txt``)."""
    out = _WINDOWS_CHARS.sub("_", name)
    stripped = out.rstrip(". ")
    out = stripped + "_" * (len(out) - len(stripped))
    if out.startswith("."):
        out = "_" + out
    first, dot, rest = out.partition(".")
    if first.rstrip(" ").upper() in _WINDOWS_RESERVED:
        out = f"{first}_{dot}{rest}"
    return out


class UnsafeName(ValueError):
    """A name refused under ``unsafe_names: refuse``."""


def target_name(
    template: str,
    payload_id: str,
    name: str | None,
    flow: str,
    *,
    unsafe: UnsafeNames,
    limit: int = NAME_MAX,
    sidecars: bool = False,
) -> str:
    """The file name a target writes a payload under, from its ``filename`` template.

    Every field is sanitised, so the name cannot leave the folder; ``unsafe`` decides what
    happens to a name :func:`unsafe_reason` objects to (``refuse`` raises :class:`UnsafeName`).
    With ``sidecars``, a name that would be a sidecar's (``X.meta.json``) gets a ``_`` after it
    (as does one that already ends in ``.meta.json_``, so two names never become one), and the
    limit leaves room for the sidecar suffix. Cut to ``limit`` bytes by :func:`fit_bytes`.
    """
    fields = {k: sanitise(v, payload_id) for k, v in name_fields(payload_id, name, flow).items()}
    out = sanitise(render(template, fields), payload_id)
    if unsafe != "keep":
        why = unsafe_reason(out)
        if why is not None:
            if unsafe == "refuse":
                raise UnsafeName(f"name {cut_bytes(out, 120)!r} {why} (unsafe_names: refuse)")
            out = make_safe(out)
    if sidecars:
        if _SIDECAR_LIKE.search(out):
            out += "_"
        limit -= len(SIDECAR_SUFFIX)
    return fit_bytes(out, limit)


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
