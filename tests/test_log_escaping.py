"""A partner's id cannot forge log lines: control characters are escaped in the text format, and
the JSON format stays one object per line (line separators escaped too)."""

from __future__ import annotations

import json
import logging
import re
import sys
from pathlib import Path

import pytest

from conveyor import redact
from conveyor.logs import JsonFormatter, TextFormatter, escape_controls
from tests.harness import DaemonProcess, bodies, wait_for, write_config
from tests.servers.rabbitmq import (
    Vhost,
    declare,
    publish,
    rabbit_vhost_fixture,  # noqa: F401  (the rabbit_vhost fixture)
)

FORGED = "2026-12-04 22:00:00 error   conveyor.flow: [flow=d] FORGED delivery failed"
EVIL_ID = f"evil\n{FORGED}\r\x1b[2J\x1b]0;pwned\x07\u2028\x85end"
LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (debug|info|warning|error|critical) ")


@pytest.fixture(autouse=True)
def no_registered_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """The formatters redact every secret registered in this process; other tests' secrets (a
    password "pw", say) must not mask parts of the text these tests compare."""
    monkeypatch.setattr(redact, "_secrets", set())
    monkeypatch.setattr(redact, "_pattern", None)


def record(msg: str, *args: object, exc: bool = False, **extra: object) -> logging.LogRecord:
    r = logging.LogRecord("conveyor.test", logging.ERROR, __file__, 1, msg, args, None)
    for k, v in extra.items():
        setattr(r, k, v)
    if exc:
        try:
            raise ValueError(f"bad\n{FORGED}")
        except ValueError:
            r.exc_info = sys.exc_info()
    return r


def test_text_format_is_one_line_per_record() -> None:
    out = TextFormatter().format(record("got %s", EVIL_ID, payload_id=EVIL_ID, flow="d"))
    assert "\n" not in out and "\r" not in out and "\x1b" not in out and "\u2028" not in out and "\x85" not in out
    assert "payload_id=evil\\n2026-12-04" in out and "\\x1b[2J\\x1b]0;pwned\\x07\\u2028\\x85end" in out
    assert out.splitlines() == [out]
    assert escape_controls("tab\there, é ok, \\n stays") == "tab\\there, é ok, \\n stays"


def test_text_traceback_lines_cannot_pass_for_records() -> None:
    out = TextFormatter().format(record("failed", exc=True))
    lines = out.split("\n")
    assert LINE.match(lines[0]) and len(lines) > 2
    assert all(line.startswith("    | ") for line in lines[1:])
    assert any(FORGED in line for line in lines[1:])


def test_json_format_is_one_line_per_record() -> None:
    out = JsonFormatter().format(record("got %s", EVIL_ID, payload_id=EVIL_ID, exc=True))
    assert out.splitlines() == [out]  # str.splitlines splits on \x85 and \u2028 too
    doc = json.loads(out)
    assert doc["payload_id"] == EVIL_ID and doc["msg"] == f"got {EVIL_ID}" and FORGED in doc["error"]


async def test_a_hostile_message_id_through_a_real_run(rabbit_vhost: Vhost, tmp_path: Path) -> None:
    """A publisher picks the message_id: with a newline and terminal escapes in it, ``conveyor run``
    in text format still writes one line per record, the id escaped."""
    v = rabbit_vhost
    q = v.q("log-escaping")
    await declare(v, q)
    await publish(v, q, [b"hello"], message_id=EVIL_ID)
    out = tmp_path / "out"
    cfg = write_config(
        tmp_path,
        {"mq": v.instance_config()},
        {"d": {"source": {"instance": "mq", "queue": q}, "target": {"type": "directory", "path": str(out)}}},
        log={"level": "debug", "format": "text"},
    )
    d = DaemonProcess(cfg).start()
    try:
        await wait_for(lambda: bodies(out), 30)
    finally:
        d.stop()
    text = d.text()
    assert "\x1b" not in text and "\r" not in text and "\u2028" not in text
    lines = text.split("\n")
    assert lines[-1] == ""
    strays = [line for line in lines[:-1] if not LINE.match(line) and not line.startswith("    | ")]
    assert strays == []
    forged = [line for line in lines if FORGED in line]
    assert forged and all(LINE.match(line) and "evil\\n" + FORGED in line for line in forged)
    assert any("payload_id=evil\\n2026-12-04" in line and "\\x1b[2J" in line for line in forged)
