"""Where conveyor reaches into a dependency's private parts: one module per dependency.

Each module checks at import that the private names it uses still have the shape it was
written against (and that the installed version is one it was tested with), and otherwise
picks a public-API path that is slower but correct. ``CONVEYOR_COMPAT=public`` forces the
public path everywhere (the tests run it that way too). This package imports no dependency
itself: a module here is imported only by the connector that uses its dependency.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from importlib import metadata

ENV = "CONVEYOR_COMPAT"
"""Set to ``public`` to use only the dependencies' public APIs."""


@dataclass
class Choice:
    """Which path one dependency's private reach takes, and why; said in the log once, at first use."""

    dependency: str
    private: bool
    why: str
    forced: bool = False
    _said: bool = field(default=False, repr=False)

    def announce(self, log: logging.Logger) -> None:
        """Log the choice the first time the path is used (not at import, before logging is set up)."""
        if self._said:
            return
        self._said = True
        if self.private:
            log.info("%s: using its private API: %s", self.dependency, self.why)
        elif self.forced:
            log.info("%s: using its public API only: %s", self.dependency, self.why)
        else:
            log.warning("%s: using its public API only (slower): %s", self.dependency, self.why)


def choose(
    dependency: str,
    version: str,
    tested: tuple[tuple[int, ...], tuple[int, ...]],
    problem: str | None,
    private_why: str,
) -> Choice:
    """The path for ``dependency``: private when not forced off, ``version`` is in the
    ``tested`` range [low, high) and the feature test found no ``problem``."""
    low, high = tested
    if os.environ.get(ENV, "").strip().lower() == "public":
        return Choice(dependency, False, f"{ENV}=public", forced=True)
    if problem is not None:
        return Choice(dependency, False, f"{dependency} {version}: {problem}")
    v = version_tuple(version)
    if not low <= v < high:
        return Choice(
            dependency,
            False,
            f"{dependency} {version} is outside the tested range {_dotted(low)} to below {_dotted(high)}",
        )
    return Choice(dependency, True, f"{dependency} {version}: {private_why}")


def installed_version(distribution: str) -> str:
    """The installed version of ``distribution`` ("0" when it is not installed)."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "0"


def version_tuple(version: str) -> tuple[int, ...]:
    """``"2.24.1"`` -> ``(2, 24, 1)``; a pre-release counts as its release (``2.25.0rc1`` -> ``(2, 25, 0)``)."""
    parts: list[int] = []
    for piece in version.split(".")[:3]:
        m = re.match(r"\d+", piece)
        if m is None:
            break
        parts.append(int(m.group()))
        if m.end() < len(piece):
            break
    return tuple(parts)


def _dotted(v: tuple[int, ...]) -> str:
    return ".".join(map(str, v))
