"""File names that come from the outside world: checked on the way in, sanitised on the way out."""

from __future__ import annotations

import hashlib
import re
import string
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
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


PLAIN_FIELDS = ("path", "name", "stem", "ext", "id", "flow")
"""Template fields that stand for text: ``{path}`` is the source's folder below its ``path``."""
DATE_FIELDS = ("received", "mtime")
"""Template fields that stand for a moment, written with a strftime format: ``{received:%Y/%m/%d}``."""
KEYED_FIELDS = ("attr", "header")
"""Template fields that name one key of a message: ``{attr.KEY}`` (Pub/Sub), ``{header.KEY}`` (AMQP)."""
DEFAULT_DATE = "%Y%m%dT%H%M%S"
"""How a date field without a format is written: no ``:``, which Windows shares refuse."""
_KNOWN = "{path} {name} {stem} {ext} {id} {flow} {received:FORMAT} {mtime:FORMAT} {attr.KEY} {header.KEY}"


class MissingField(ValueError):
    """A payload lacks what its target's template names (a message attribute or header)."""


@dataclass(frozen=True)
class _Part:
    literal: str
    field: str | None = None
    key: str = ""
    spec: str = ""


@dataclass(frozen=True)
class NameValues:
    """What a payload offers a template: see :func:`Template.render`."""

    id: str
    flow: str
    name: str | None = None
    folder: str = ""
    """The source's folder of the file, relative to the source's ``path`` ('' for one at its top)."""
    received: datetime = field(default_factory=lambda: datetime.now(UTC))
    mtime: datetime | None = None
    attrs: dict[str, object] | None = None
    headers: dict[str, object] | None = None


class Template:
    """A ``filename`` or ``path`` template, parsed and checked once (at config load).

    ``{{`` and ``}}`` stand for a brace. Plain fields take a Python format spec (``{id:.8}``),
    date fields a strftime one; an unknown field, a bad spec or a stray brace raises ValueError.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.parts: tuple[_Part, ...] = tuple(_parse(text))
        self.fields = frozenset(p.field for p in self.parts if p.field)
        """The fields used: ``attr``, ``received`` and so on."""

    def render(self, values: NameValues, tz: tzinfo | None, *, raw: frozenset[str] = frozenset()) -> str:
        """The text for a payload. Every field's value has its separators and control characters
        made ``_``, except those named in ``raw`` (a path template's ``{path}`` and dates, whose
        ``/`` are wanted). Raises :class:`MissingField` for an attribute or header the payload lacks."""
        out = []
        for p in self.parts:
            out.append(p.literal)
            if p.field is None:
                continue
            value = _value(p, values, tz or UTC)
            out.append(value if p.field in raw else _clean(value))
        return "".join(out)


def _parse(text: str) -> list[_Part]:
    try:
        pieces = list(string.Formatter().parse(text))
    except ValueError as e:
        raise ValueError(f"{e} (write {{{{ and }}}} for a literal brace)") from None
    out = []
    for literal, name, given, conv in pieces:
        spec = given or ""
        if name is None:
            out.append(_Part(literal))
            continue
        if conv is not None:
            raise ValueError(f"{{{name}!{conv}}}: conversions are not supported; known fields: {_KNOWN}")
        base, dot, key = name.partition(".")
        if base in KEYED_FIELDS:
            if not key:
                raise ValueError(f"{{{name}}} names no key: write {{{base}.KEY}}")
        elif dot or base not in (*PLAIN_FIELDS, *DATE_FIELDS):
            raise ValueError(f"unknown field {{{name}}}; known: {_KNOWN}")
        if "{" in spec:
            raise ValueError(f"{{{name}:{spec}}}: a format cannot hold another field")
        if base in DATE_FIELDS:
            spec = spec or DEFAULT_DATE
            if "%" not in spec:
                raise ValueError(f"{{{name}:{spec}}}: a date format needs strftime codes such as %Y %m %d")
            try:
                datetime(2000, 1, 2, 3, 4, 5, tzinfo=UTC).strftime(spec)
            except ValueError as e:
                raise ValueError(f"{{{name}:{spec}}}: {e}") from None
        elif spec:
            try:
                format("x", spec)
            except ValueError as e:
                raise ValueError(f"{{{name}:{spec}}}: bad format: {e}") from None
        out.append(_Part(literal, base, key, spec))
    return out


def _value(p: _Part, v: NameValues, tz: tzinfo) -> str:
    if p.field in DATE_FIELDS:
        moment = v.received if p.field == "received" else v.mtime
        if moment is None:
            raise MissingField(f"{{{p.field}}}: the payload has no {p.field} time")
        return moment.astimezone(tz).strftime(p.spec)
    if p.field in KEYED_FIELDS:
        found = v.attrs if p.field == "attr" else v.headers
        what = "attribute" if p.field == "attr" else "header"
        if not found or p.key not in found or found[p.key] is None:
            raise MissingField(f"{{{p.field}.{p.key}}}: the message has no {what} {p.key!r}")
        value = found[p.key]
        if isinstance(value, (dict, list)):
            raise MissingField(f"{{{p.field}.{p.key}}}: the {what} holds a table or list, not one value")
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
        return format(text, p.spec)
    base = v.name or v.id
    stem, dot, ext = base.rpartition(".")
    if not dot or not stem:
        stem, ext = base, ""
    plain = {"id": v.id, "name": base, "flow": v.flow, "stem": stem, "ext": f".{ext}" if ext else "", "path": v.folder}
    return format(plain[p.field or ""], p.spec)


def _clean(value: str) -> str:
    return _CONTROL.sub("_", value.replace("/", "_").replace("\\", "_"))


def target_name(
    template: str | Template,
    values: NameValues,
    *,
    unsafe: UnsafeNames,
    tz: tzinfo | None = None,
    limit: int = NAME_MAX,
    sidecars: bool = False,
) -> str:
    """The file name a target writes a payload under, from its ``filename`` template.

    Every field is sanitised, so the name cannot leave the folder; ``unsafe`` decides what
    happens to a name :func:`unsafe_reason` objects to (``refuse`` raises :class:`UnsafeName`).
    With ``sidecars``, a name that would be a sidecar's (``X.meta.json``) gets a ``_`` after it
    (as does one that already ends in ``.meta.json_``, so two names never become one), and the
    limit leaves room for the sidecar suffix. Cut to ``limit`` bytes by :func:`fit_bytes`.
    Raises :class:`MissingField` when the payload lacks a field the template names.
    """
    tpl = template if isinstance(template, Template) else Template(template)
    out = _policy(sanitise(tpl.render(values, tz), values.id), unsafe)
    if sidecars:
        if _SIDECAR_LIKE.search(out):
            out += "_"
        limit -= len(SIDECAR_SUFFIX)
    return fit_bytes(out, limit)


def _policy(name: str, unsafe: UnsafeNames) -> str:
    if unsafe != "keep":
        why = unsafe_reason(name)
        if why is not None:
            if unsafe == "refuse":
                raise UnsafeName(f"name {cut_bytes(name, 120)!r} {why} (unsafe_names: refuse)")
            return make_safe(name)
    return name


_PATH_RAW = frozenset({"path", *DATE_FIELDS})


def target_folder(template: Template, values: NameValues, *, unsafe: UnsafeNames, tz: tzinfo | None = None) -> str:
    """The folder a target writes a payload into, from its ``path`` template: '/'-separated,
    relative, without empty parts (an empty ``{path}`` leaves no stray ``/``). ``{path}`` and
    dates may add folders; every part is checked as a file name is (``..`` and control
    characters raise :class:`UnsafeName`, ``unsafe`` decides the rest)."""
    text = template.render(values, tz, raw=_PATH_RAW)
    out = []
    for part in text.split("/"):
        if part in ("", "."):
            continue
        why = unsafe_component(part)
        if why is not None:
            raise UnsafeName(f"folder {why.removeprefix('name ')}")
        out.append(fit_bytes(_policy(part, unsafe)))
    return "/".join(out)


def check_template(text: str, *, folder: bool = False) -> Template:
    """A template parsed for a config validator: ValueError says what is wrong. For ``folder``
    (a ``path`` template), a literal ``..`` among the parts made per payload is refused too."""
    tpl = Template(text)
    if folder and ".." in split_folder(text)[1].split("/"):
        raise ValueError(f"{text!r}: '..' would leave the target folder")
    return tpl


def split_folder(text: str) -> tuple[str, str]:
    """A directory ``path`` as its fixed folder and the template below it:
    ``/srv/in/{flow}/x`` is ``("/srv/in", "{flow}/x")``; without fields, ``(text, "")``."""
    if "{" not in text.replace("{{", ""):
        return text.replace("{{", "{").replace("}}", "}"), ""
    parts = text.split("/")
    for i, part in enumerate(parts):
        if "{" in part.replace("{{", ""):
            fixed = "/".join(parts[:i]).replace("{{", "{").replace("}}", "}")
            return fixed or ("/" if text.startswith("/") else "."), "/".join(parts[i:])
    raise AssertionError("unreachable")


def render(template: str, fields: dict[str, str]) -> str:
    """Fill ``{id}``-style placeholders; unknown placeholders stay as written (broker keys)."""
    return re.sub(r"\{(\w+)\}", lambda m: fields.get(m.group(1), m.group(0)), template)


def name_fields(payload_id: str, name: str | None, flow: str) -> dict[str, str]:
    """Fields of a broker target's key templates: id, name, flow, stem, ext (without its dot)."""
    base = name or payload_id
    stem, dot, ext = base.rpartition(".")
    if not dot or not stem:
        stem, ext = base, ""
    return {"id": payload_id, "name": base, "flow": flow, "stem": stem, "ext": ext}
