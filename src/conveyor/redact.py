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
    if "://" not in text:  # the pattern tries every letter: skip texts it cannot match
        return text
    return _URL_CREDS.sub(lambda m: m.group("scheme") + _MASK + "@", text)
