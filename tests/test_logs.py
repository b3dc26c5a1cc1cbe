"""The log formats, in a process of their own (logging is process-wide)."""

from __future__ import annotations

import json
import subprocess
import sys

SCRIPT = """
import warnings
from conveyor.logs import setup_logging
from conveyor.redact import register_secrets
register_secrets(["pw-Secret-81x"])
setup_logging("info", "json")
warnings.warn("a library warns about amqp://u:pw-Secret-81x@host/", RuntimeWarning)
"""


def test_python_warnings_are_json_lines_and_redacted() -> None:
    """A library's warning (aio-pika's unawaited close, say) must not break the one-JSON-object-per-line
    stream, nor carry a secret past the redaction."""
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0]["logger"] == "py.warnings" and lines[0]["level"] == "warning"
    assert "RuntimeWarning: a library warns" in lines[0]["msg"]
    assert "pw-Secret-81x" not in r.stderr
