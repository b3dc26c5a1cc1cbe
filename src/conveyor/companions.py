"""Done files and checksum files: the small files partners send beside their data, and that
targets can write beside theirs.

A companion is named by a template over the data file's name: ``{name}`` (``PAY_1.csv``),
``{stem}`` (``PAY_1``) and ``{ext}`` (``.csv``, with its dot, so ``{stem}{ext}`` is the
name). A template with no field names one fixed file per folder (``ready.flag``).
"""

from __future__ import annotations

import asyncio
import hashlib
import posixpath
import re
from pathlib import Path
from typing import Literal

from conveyor.payload.body import CHUNK, Body

Algorithm = Literal["sha256", "md5"]
"""The checksum algorithms a partner's checksum file may use, and a target can write."""

FIELDS = ("name", "stem", "ext")
_FIELD = re.compile(r"\{([^{}]*)\}")
_HEX_LEN = {"sha256": 64, "md5": 32}


def check_template(template: str, *, per_file: bool = False) -> str:
    """``template`` if it names a companion file; ValueError saying why not. ``per_file``:
    it must hold ``{name}`` or ``{stem}`` (one companion per data file)."""
    if not template.strip():
        raise ValueError("an empty name")
    if "/" in template or "\\" in template:
        raise ValueError(f"{template!r} holds a path separator: a companion lies in its file's own folder")
    unknown = [f for f in _FIELD.findall(template) if f not in FIELDS]
    if unknown:
        raise ValueError(f"{template!r} has an unknown field {{{unknown[0]}}}: use {{name}}, {{stem}} or {{ext}}")
    rest = _FIELD.sub("", template)
    if "{" in rest or "}" in rest:
        raise ValueError(f"{template!r} has an unmatched brace")
    fields = set(_FIELD.findall(template))
    if fields and not rest:
        raise ValueError(f"{template!r} has no text of its own: every file name would have its shape")
    if per_file and not fields & {"name", "stem"}:
        raise ValueError(f"{template!r} names one file for all: give {{name}} or {{stem}} in it")
    if rest in (".", ".."):
        raise ValueError(f"{template!r} is not a file name")
    return template


def per_file(template: str) -> bool:
    """Whether ``template`` names one companion per data file (it holds a field)."""
    return _FIELD.search(template) is not None


def render(template: str, name: str) -> str:
    """The companion's name for the data file named ``name``."""
    stem, ext = posixpath.splitext(name)
    fields = {"name": name, "stem": stem, "ext": ext}
    return _FIELD.sub(lambda m: fields[m.group(1)], template)


def shape(template: str) -> re.Pattern[str]:
    """What every name ``template`` renders looks like: a listed file of that shape is a
    companion, never a payload."""
    parts = []
    pos = 0
    for m in _FIELD.finditer(template):
        parts.append(re.escape(template[pos : m.start()]))
        parts.append(".*" if m.group(1) == "ext" else ".+")
        pos = m.end()
    parts.append(re.escape(template[pos:]))
    return re.compile("".join(parts), re.DOTALL)


def beside(path: str, template: str) -> str:
    """The companion of the file at ``path`` (for a fixed name: the one in its folder)."""
    folder, name = posixpath.split(path)
    return posixpath.join(folder, render(template, name))


def hash_path(path: Path, algorithm: Algorithm) -> str:
    """The hex digest of a file (blocking: call from a worker thread)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def digest_now(body: Body, algorithm: Algorithm) -> str:
    """The hex digest of a body (blocking: call from a worker thread for a file)."""
    if body.in_memory:
        return hashlib.new(algorithm, body.data()).hexdigest()
    assert body.path is not None
    return hash_path(body.path, algorithm)


async def digest(body: Body, algorithm: Algorithm) -> str:
    """The hex digest of a body (read in a thread when it is a file; SHA-256 kept on the body)."""
    if algorithm == "sha256":
        return await body.digest()
    if body.in_memory:
        return digest_now(body, algorithm)
    return await asyncio.to_thread(digest_now, body, algorithm)


def checksum_line(digest: str, name: str) -> bytes:
    """A checksum file's content in the ``sha256sum`` / ``md5sum`` format: ``HEX  NAME``."""
    return f"{digest}  {name}\n".encode()


_GNU = re.compile(r"^\\?([0-9A-Fa-f]+)\s+\*?(.+?)\s*$")
_BSD = re.compile(r"^\s*(SHA256|MD5)\s*\((.+)\)\s*=\s*([0-9A-Fa-f]+)\s*$", re.IGNORECASE)


def expected_digest(text: str, name: str, algorithm: Algorithm) -> str | None:
    """The digest a checksum file gives for the file ``name``, lower-case; None when it gives
    none. Read: a bare hex digest, ``HEX  NAME`` lines (``sha256sum``, ``md5sum``, with ``*``
    for binary mode), or ``SHA256 (NAME) = HEX`` (BSD); hex in either case."""
    want = _HEX_LEN[algorithm]
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if len(lines) == 1 and re.fullmatch(r"[0-9A-Fa-f]+", lines[0]) and len(lines[0]) == want:
        return lines[0].lower()
    for line in lines:
        m = _BSD.match(line)
        if m is not None:
            digest, listed = m.group(3), m.group(2)
        else:
            m = _GNU.match(line)
            if m is None:
                continue
            digest, listed = m.group(1), m.group(2)
        if len(digest) == want and posixpath.basename(listed.removeprefix("./")) == name:
            return digest.lower()
    if len(lines) == 1:
        m = _GNU.match(lines[0])
        if m is not None and len(m.group(1)) == want:
            return m.group(1).lower()  # one line naming the file as the partner called it
    return None
