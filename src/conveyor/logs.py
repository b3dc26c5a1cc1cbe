"""Logging: one JSON object per line (or readable text), with flow/instance/payload_id fields,
and every known secret redacted from the final text.

Ids and names come from partners (a file name, a message id): in either format a log record
is one line whatever they hold. The text format writes control characters (newline, escape,
...) and Unicode line and paragraph separators as ``\n``, ``\x1b``, ``\u2028``; a traceback keeps
its lines, each indented so that none can pass for a record of its own.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

from conveyor.redact import redact

_FIELDS = ("flow", "instance", "payload_id", "target")

_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
"""C0 and C1 control characters, DEL and the Unicode line/paragraph separators: whatever a
terminal acts on or a line reader (``str.splitlines`` too) takes as the end of a line."""
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escaped(m: re.Match[str]) -> str:
    c = m.group()
    return _NAMED.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")


def escape_controls(text: str) -> str:
    """``text`` on one line: control characters written as Python escapes (``\\n``, ``\\x1b``)."""
    return _UNSAFE.sub(_escaped, text)


def _json_escaped(m: re.Match[str]) -> str:
    return f"\\u{ord(m.group()):04x}"


_JSON_UNSAFE = re.compile("[\x7f-\x9f\u2028\u2029]")
"""What ``json.dumps(ensure_ascii=False)`` leaves raw but a line reader may split on (it escapes
C0 controls itself); written as ``\\uXXXX``, which is the same JSON string."""


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "msg", "flow", "instance", "payload_id", "target", "error"}`` per line."""

    def format(self, record: logging.LogRecord) -> str:
        # Redact each value before encoding: JSON escaping would hide a secret holding '"' or '\\'.
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        for f in _FIELDS:
            v = getattr(record, f, None)
            if v is not None:
                doc[f] = redact(str(v))
        if record.exc_info:
            doc["error"] = redact(self.formatException(record.exc_info))
        return _JSON_UNSAFE.sub(_json_escaped, redact(json.dumps(doc, ensure_ascii=False, default=str)))


class TextFormatter(logging.Formatter):
    """``2026-11-26 22:40:09 info  [flow=x] message``."""

    def format(self, record: logging.LogRecord) -> str:
        # Redact each part before escaping: escaping could split a secret that holds a control character.
        ctx = " ".join(
            f"{f}={escape_controls(redact(str(getattr(record, f))))}"
            for f in _FIELDS
            if getattr(record, f, None) is not None
        )
        line = (
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created))
            + f" {record.levelname.lower():<7} {record.name}: "
            + (f"[{ctx}] " if ctx else "")
            + escape_controls(redact(record.getMessage()))
        )
        if record.exc_info:
            trace = redact(self.formatException(record.exc_info))
            line += "".join("\n    | " + escape_controls(t) for t in trace.split("\n"))
        return redact(line)


def setup_logging(level: str = "info", fmt: str = "json") -> None:
    """Send conveyor's and libraries' logs to stderr in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    # Python's warnings (a library's RuntimeWarning, say) go through the same handler, so stderr
    # stays one JSON object per line and the warning's text is redacted like any other line.
    logging.captureWarnings(True)
    logging.getLogger("conveyor").setLevel(level.upper())
    # Libraries speak at warning and above only: their debug output can include packet dumps.
    for noisy in ("asyncssh", "aioftp", "aio_pika", "aiormq", "google", "grpc"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
