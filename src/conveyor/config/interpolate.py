"""``${NAME}`` and ``${file:/path}`` in config strings.

References may nest (``${file:${CREDENTIALS_DIRECTORY}/sftp-pass}``): the innermost is
resolved first. ``$${`` writes a literal ``${``. A missing variable or unreadable file is
a problem at the key that asked for it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

_REF = re.compile(r"(?<!\$)\$\{([^${}]*)\}")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


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
        """One string, references replaced innermost first."""
        for _ in range(10):  # nesting depth bound; a loop cannot recurse forever
            m = _REF.search(text)
            if m is None:
                break
            text = text[: m.start()] + self._value(m.group(1), path) + text[m.end() :]
        return text.replace("$${", "${")

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
