"""Secret redaction: every secret value the config holds is masked wherever text leaves the daemon."""

from __future__ import annotations

import re
from collections.abc import Iterable

_MASK = "***"
_secrets: set[str] = set()
_pattern: re.Pattern[str] | None = None
# Credentials embedded in URLs (amqp://user:pass@host) are masked even when not in the config.
_URL_CREDS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]+:)[^@\s]+@")


def register_secrets(values: Iterable[str]) -> None:
    """Add secret values to mask (short values are still masked: a 3-letter password is a password)."""
    global _pattern
    _secrets.update(v for v in values if v)
    if _secrets:
        alts = sorted(_secrets, key=len, reverse=True)
        _pattern = re.compile("|".join(re.escape(s) for s in alts))


def redact(text: str) -> str:
    """The text with every known secret and URL credential replaced by ***."""
    if _pattern is not None:
        text = _pattern.sub(_MASK, text)
    return _url_credentials(text)


def _mask_credentials(m: re.Match[str]) -> str:
    return m.group("scheme") + _MASK + "@"


def _url_credentials(text: str) -> str:
    """``_URL_CREDS`` masked, read only around each ``://``.

    The pattern is tried at every letter, which is slow on a long page; a match has no whitespace
    in it, so the run between the spaces either side of a ``://`` holds all of it."""
    i = text.find("://")
    if i < 0:
        return text
    out, done = [], 0
    while i >= 0:
        start = max(done, text.rfind(" ", done, i) + 1)
        end = text.find(" ", i)
        end = len(text) if end < 0 else end
        out += [text[done:start], _URL_CREDS.sub(_mask_credentials, text[start:end])]
        done = end
        i = text.find("://", end)
    out.append(text[done:])
    return "".join(out)
