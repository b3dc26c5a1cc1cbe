"""Logging: one JSON object per line (or readable text), with flow/instance/payload_id fields,
and every known secret redacted from the final text."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from conveyor.redact import redact

_FIELDS = ("flow", "instance", "payload_id")


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "msg", "flow", "instance", "payload_id", "error"}`` per line."""

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
        return redact(json.dumps(doc, ensure_ascii=False, default=str))


class TextFormatter(logging.Formatter):
    """``2026-11-26 22:40:09 info  [flow=x] message``."""

    def format(self, record: logging.LogRecord) -> str:
        ctx = " ".join(f"{f}={getattr(record, f)}" for f in _FIELDS if getattr(record, f, None) is not None)
        line = (time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created))
                + f" {record.levelname.lower():<7} {record.name}: " + (f"[{ctx}] " if ctx else "")
                + record.getMessage())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
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
