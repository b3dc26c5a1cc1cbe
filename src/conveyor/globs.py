"""Path globs for file sources: ``include`` / ``exclude`` lists matched against a file's path
relative to the source folder, with Ant/gitignore rules.

- Every pattern is anchored at the source folder: ``*.csv`` is a top-level file only.
- ``*`` and ``?`` never cross a ``/``; ``[abc]``, ``[a-z]``, ``[!abc]`` are character classes;
  ``\\`` takes the next character literally.
- ``**`` as a whole segment matches zero or more folders: ``**/*.csv`` takes ``top.csv`` and
  ``a/b/c.csv``; ``a/**/b`` takes ``a/b`` and ``a/x/y/b``; a trailing ``/**`` (or just ``/``)
  takes everything inside a folder.
- A file is selected when some include matches (or there are none) and no exclude does.

Each list is compiled once into one regular expression; folders that cannot hold a selected file
are told apart so a recursive listing need not descend into them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_ANY = "**"


class GlobError(ValueError):
    """A pattern that is not a valid glob; the message says why."""


def _segments(pattern: str) -> list[str]:
    """The pattern's '/'-separated segments, normalised (anchoring '/' dropped, a trailing '/'
    meaning everything inside), or :class:`GlobError`."""
    if not pattern:
        raise GlobError("an empty pattern matches nothing")
    body = pattern.lstrip("/")  # anchored anyway: a leading '/' only says so
    if not body:
        raise GlobError("'/' alone names the source folder, not files in it (use '**' for everything)")
    if body.endswith("/"):
        body += _ANY
    parts = body.split("/")
    for part in parts:
        if part == "":
            raise GlobError("an empty path segment ('//')")
        if part in (".", ".."):
            raise GlobError(f"'{part}' segments are not allowed: patterns are relative to the source folder")
        if part != _ANY and "**" in re.sub(r"\\.", "", part):
            raise GlobError(f"'**' must be a whole path segment ('{part}'); use '*' within a name")
    # '**/**' is the same as '**'
    out: list[str] = []
    for part in parts:
        if not (part == _ANY and out and out[-1] == _ANY):
            out.append(part)
    return out


def _segment_regex(part: str) -> str:
    """One segment (not ``**``) as a regular expression that never matches '/'."""
    out: list[str] = []
    i, n = 0, len(part)
    while i < n:
        c = part[i]
        if c == "\\":
            if i + 1 >= n:
                raise GlobError(f"a trailing '\\' escapes nothing ('{part}')")
            out.append(re.escape(part[i + 1]))
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            j = i + 1
            negate = j < n and part[j] in "!^"
            if negate:
                j += 1
            items: list[str] = []
            while j < n and (part[j] != "]" or not items):
                ch = part[j]
                if ch == "\\":
                    if j + 1 >= n:
                        break
                    items.append(re.escape(part[j + 1]))
                    j += 2
                else:
                    items.append("-" if ch == "-" else re.escape(ch))  # '-' stays a range
                    j += 1
            if j >= n:
                raise GlobError(f"'[' without a closing ']' ('{part}')")
            chars = "".join(items)
            # Never '/': a class is inside one segment like everything else.
            out.append(f"[^/{chars}]" if negate else f"(?!/)[{chars}]")
            i = j + 1
        else:
            out.append(re.escape(c))
            i += 1
    return "".join(out)


def _pattern_regex(segs: list[str]) -> str:
    out = ""
    for k, part in enumerate(segs):
        last = k == len(segs) - 1
        if part == _ANY:
            out += ".+" if last else "(?:[^/]+/)*"
        else:
            out += _segment_regex(part) + ("" if last else "/")
    return out


def check_glob(pattern: str) -> str:
    """``pattern`` when it is a valid glob; :class:`GlobError` saying why otherwise."""
    segs = _segments(pattern)
    regex = _pattern_regex(segs)
    try:
        re.compile(regex)
    except re.error as e:  # a character class such as '[z-a]'
        raise GlobError(f"not a valid pattern: {e}") from None
    return pattern


def reaches_into_folders(pattern: str) -> bool:
    """Whether ``pattern`` can match a file in a sub-folder (it has a '/' or a ``**``), which only
    a recursive listing can show."""
    return len(_segments(pattern)) > 1 or _segments(pattern) == [_ANY]


class _Compiled:
    """One pattern as segments, for asking which folders could hold a match."""

    def __init__(self, pattern: str) -> None:
        segs = _segments(pattern)
        self.parts: list[re.Pattern[str] | None] = [None if s == _ANY else re.compile(_segment_regex(s)) for s in segs]
        self.regex = _pattern_regex(segs)
        self.inside: re.Pattern[str] | None = None
        """For a pattern ending in '/**': its folder part, which matches folders all of whose files match."""
        if len(segs) > 1 and segs[-1] == _ANY:
            self.inside = re.compile(_pattern_regex(segs[:-1]))

    def _closure(self, states: set[int]) -> set[int]:
        todo = list(states)
        while todo:
            i = todo.pop()
            if i < len(self.parts) and self.parts[i] is None and i + 1 not in states:
                states.add(i + 1)
                todo.append(i + 1)
        return states

    def may_hold(self, folder: Sequence[str]) -> bool:
        """Whether a file somewhere under the folder (given as its segments) could match."""
        states = self._closure({0})
        for name in folder:
            nxt: set[int] = set()
            for i in states:
                if i >= len(self.parts):
                    continue
                part = self.parts[i]
                if part is None:
                    nxt.add(i)  # '**' takes this folder and may take more
                elif part.fullmatch(name):
                    nxt.add(i + 1)
            states = self._closure(nxt)
            if not states:
                return False
        return any(i < len(self.parts) for i in states)


def _union(patterns: Sequence[_Compiled]) -> re.Pattern[str] | None:
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{p.regex})" for p in patterns))


class PathSelector:
    """``include`` / ``exclude`` compiled once: which relative paths are selected, and which
    folders a listing may skip."""

    def __init__(self, include: Sequence[str] = (), exclude: Sequence[str] = ()) -> None:
        self._include = [_Compiled(p) for p in include]
        self._exclude = [_Compiled(p) for p in exclude]
        self._inc = _union(self._include)
        self._exc = _union(self._exclude)
        inside = [p.inside.pattern for p in self._exclude if p.inside is not None]
        self._exc_folders = re.compile("|".join(f"(?:{r})" for r in inside)) if inside else None

    def __bool__(self) -> bool:
        return bool(self._include or self._exclude)

    def matches(self, rel: str) -> bool:
        """Whether the file at ``rel`` (relative to the source folder) is selected."""
        if self._inc is not None and self._inc.fullmatch(rel) is None:
            return False
        return self._exc is None or self._exc.fullmatch(rel) is None

    def may_hold(self, folder: str) -> bool:
        """Whether the sub-folder ``folder`` (relative to the source folder) could hold a selected
        file: False when an exclude takes everything inside it or no include can reach into it."""
        if self._exc_folders is not None and self._exc_folders.fullmatch(folder) is not None:
            return False
        if not self._include:
            return True
        parts = folder.split("/")
        return any(p.may_hold(parts) for p in self._include)
