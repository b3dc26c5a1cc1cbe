"""``${NAME}`` and ``${file:/path}`` in config strings.

References may nest inside a reference (``${file:${CREDENTIALS_DIRECTORY}/sftp-pass}``): the
inner one is resolved first and its value becomes part of the outer reference's name or path.
A string is read once, left to right: what a reference is replaced with (an environment
variable's value, a file's contents) is never read for references again, so a password file
holding ``pa${HOME}ss`` is that password, and an environment value ``${file:/etc/shadow}`` is
that text, not a file read. ``$${`` writes a literal ``${``; an unclosed ``${`` stays as written.
A missing variable or unreadable file is a problem at the key that asked for it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MAX_DEPTH = 10
"""References nested deeper than this are a problem, not a deep recursion."""


def dotted(path: tuple[Any, ...]) -> str:
    """``('flows', 'a', 'source')`` → ``flows.a.source``; list indexes as ``[0]``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


class Interpolator:
    """Resolves references in a parsed config, collecting problems and the values read from
    files (those are credentials: they are redacted from logs whatever key they sit under)."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self.env = os.environ if env is None else env
        self.problems: list[tuple[tuple[Any, ...], str]] = []
        self.sensitive: list[str] = []

    def walk(self, value: Any, path: tuple[Any, ...] = ()) -> Any:
        """A copy of ``value`` with every string resolved."""
        if isinstance(value, dict):
            return {k: self.walk(v, (*path, k)) for k, v in value.items()}
        if isinstance(value, list):
            return [self.walk(v, (*path, i)) for i, v in enumerate(value)]
        if isinstance(value, str) and "${" in value:
            return self.resolve(value, path)
        return value

    def resolve(self, text: str, path: tuple[Any, ...]) -> str:
        """One string with its references replaced, in a single pass over the text as written."""
        try:
            return self._scan(text, path, depth=0)
        except _TooDeep:
            self.problems.append((path, f"references nested more than {_MAX_DEPTH} deep"))
            return ""

    def _scan(self, text: str, path: tuple[Any, ...], *, depth: int) -> str:
        """``text`` with its references replaced. Substituted values are appended as they are:
        they are never scanned."""
        out: list[str] = []
        i, n = 0, len(text)
        while i < n:
            if text.startswith("$${", i):
                out.append("${")
                i += 3
            elif text.startswith("${", i):
                close = _closing(text, i + 2)
                if close < 0:  # unclosed: the rest stays as written
                    out.append(text[i:])
                    break
                if depth >= _MAX_DEPTH:
                    raise _TooDeep
                out.append(self._value(self._scan(text[i + 2 : close], path, depth=depth + 1), path))
                i = close + 1
            else:
                nxt = text.find("$", i + 1)
                nxt = n if nxt < 0 else nxt
                out.append(text[i:nxt])
                i = nxt
        return "".join(out)

    def _value(self, ref: str, path: tuple[Any, ...]) -> str:
        if ref.startswith("file:"):
            fname = ref[5:]
            try:
                with open(fname, encoding="utf-8") as f:
                    data = f.read()
            except OSError as e:
                self.problems.append((path, f"cannot read file '{fname}' for ${{file:...}}: {e.strerror or e}"))
                return ""
            data = data[:-1] if data.endswith("\n") else data
            data = data[:-1] if data.endswith("\r") else data
            self.sensitive.append(data)
            return data
        if not _NAME.match(ref):
            self.problems.append((path, f"'${{{ref}}}' is not a valid reference: use ${{NAME}} or ${{file:/path}}"))
            return ""
        if ref not in self.env:
            self.problems.append((path, f"environment variable '{ref}' is not set"))
            return ""
        return self.env[ref]


class _TooDeep(Exception):
    """A reference nests deeper than :data:`_MAX_DEPTH`: the whole string is one problem."""


def _closing(text: str, i: int) -> int:
    """The index of the ``}`` that closes a reference whose name starts at ``i`` (references
    inside it balanced), or -1 when it is never closed."""
    depth, n = 0, len(text)
    while i < n:
        if text.startswith("$${", i):
            i += 3
        elif text.startswith("${", i):
            depth += 1
            i += 2
        elif text[i] == "}":
            if depth == 0:
                return i
            depth -= 1
            i += 1
        else:
            i += 1
    return -1
