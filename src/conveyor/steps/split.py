"""``split``: a file read as a stream of records, grouped into messages, on a step's own thread.

Each message's body holds ``batch_size`` records in the input's own format: lines and ndjson
lines each ending in a newline (one record alone: the line without its ending), CSV records as
they are in the file with the header line first when ``header: keep``, JSON array elements as a
JSON array (one element alone: the element). Records keep their bytes as written: a CSV record
is the input's text of it, not a re-quoted copy, and a JSON element is its text in the file.

Only one message's records are in memory at a time: the input is read in chunks (lines, CSV
through :mod:`csv` fed line by line, JSON with :meth:`json.JSONDecoder.raw_decode` over a
buffer that holds the current element).
"""

from __future__ import annotations

import codecs
import csv
import io
import itertools
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

from conveyor.config.steps import Split
from conveyor.payload.body import CHUNK, Body
from conveyor.payload.payload import Payload
from conveyor.steps.blocking import Produced, StepFailed, open_body


@dataclass
class Batch(Produced):
    """One message of a split: records ``first`` to ``first + count - 1`` (0-based) of the input."""

    first: int = 0
    count: int = 0


class Splitter:
    """``split``: the input's records, ``batch_size`` to a message, from record ``skip`` on."""

    def __init__(self, config: Split) -> None:
        self.config = config

    def start(self, parent: Payload, stop: threading.Event) -> Iterator[Produced]:
        return self.batches(parent, stop, 0)

    def batches(self, parent: Payload, stop: threading.Event, skip: int) -> Iterator[Batch]:
        """The messages of ``parent`` after its first ``skip`` records (a resumed split)."""
        return self._run(open_body(parent.body), parent.name, stop, skip)

    def _run(self, f: IO[bytes], name: str | None, stop: threading.Event, skip: int) -> Iterator[Batch]:
        cfg = self.config
        size = cfg.batch_size
        with f:
            header, records = self._records(f)
            joiner = _JOINERS[cfg.format]
            index = 0
            group: list[bytes] = []
            for rec in records:
                if index < skip:
                    index += 1
                    continue
                group.append(rec)
                if len(group) == size:
                    if stop.is_set():
                        raise StepFailed("stopped")
                    yield _batch(joiner(group, header, size), name, index + 1 - size, size)
                    group = []
                index += 1
            if group:
                yield _batch(joiner(group, header, size), name, index - len(group), len(group))

    def _records(self, f: IO[bytes]) -> tuple[bytes, Iterator[bytes]]:
        """The header line to repeat (b'' if none) and the records, each as its bytes."""
        fmt = self.config.format
        if fmt == "lines":
            return b"", _lines(f)
        if fmt == "ndjson":
            return b"", _ndjson(f)
        if fmt == "json_array":
            return b"", _json_array(f)
        return _csv(f, self.config.header)

    def close(self) -> None:
        pass


def _batch(body: bytes, name: str | None, first: int, count: int) -> Batch:
    return Batch(Body.from_bytes(body), name, first=first, count=count)


def _join_lines(group: list[bytes], header: bytes, size: int) -> bytes:
    if size == 1:
        return group[0]
    return b"".join(r + b"\n" for r in group)


def _join_csv(group: list[bytes], header: bytes, size: int) -> bytes:
    return header + b"".join(group)


def _join_json(group: list[bytes], header: bytes, size: int) -> bytes:
    if size == 1:
        return group[0]
    return b"[" + b",".join(group) + b"]"


_JOINERS = {"lines": _join_lines, "ndjson": _join_lines, "csv": _join_csv, "json_array": _join_json}


def _raw_lines(f: IO[bytes]) -> Iterator[bytes]:
    """The input's lines, each with its line ending (the last one may lack it)."""
    yield from f  # a buffered file or BytesIO: lines read in C


def _lines(f: IO[bytes]) -> Iterator[bytes]:
    for line in _raw_lines(f):
        yield line.rstrip(b"\r\n")


def _ndjson(f: IO[bytes]) -> Iterator[bytes]:
    """Each non-blank line, checked to be one JSON value."""
    record = 0
    for n, line in enumerate(_raw_lines(f), 1):
        text = line.strip()
        if not text:
            continue
        record += 1
        try:
            json.loads(text)
        except ValueError as e:
            raise StepFailed(f"record {record} (line {n}): invalid JSON: {e}") from None
        yield line.rstrip(b"\r\n")


def _csv(f: IO[bytes], header: str) -> tuple[bytes, Iterator[bytes]]:
    """The header line (when ``keep``) and the data records, each as the raw text of its lines.

    :mod:`csv` reads the lines one at a time and returns a record as soon as its last line was
    read, so the lines it took since the previous record are exactly that record's text."""
    taken: list[str] = []
    text = io.TextIOWrapper(f, encoding="utf-8", errors="surrogateescape", newline="")

    def feed() -> Iterator[str]:
        for line in text:
            taken.append(line)
            yield line

    reader = csv.reader(feed(), strict=True)

    def take(what: str) -> bytes | None:
        taken.clear()
        try:
            row = next(reader, None)
        except csv.Error as e:
            raise StepFailed(f"{what} (line {reader.line_num}): broken CSV: {e}") from None
        if row is None:
            return None
        return "".join(taken).encode("utf-8", "surrogateescape")

    head = b""
    if header != "none":
        first = take("the header")
        if first is None:
            return b"", iter(())
        head = first if header == "keep" else b""

    def records() -> Iterator[bytes]:
        for number in itertools.count(1):
            rec = take(f"record {number}")
            if rec is None:
                return
            yield rec

    return head, records()


_WS = " \t\r\n"
MAX_ELEMENT = 64 * 1024 * 1024
"""Longest JSON array element read, in characters: a longer one is an error, not a memory hog."""


def _json_array(f: IO[bytes]) -> Iterator[bytes]:
    """Each element of a top-level JSON array, as its text in the input.

    The buffer holds the text from the current element on, grown by a chunk until the element
    decodes: an element that decodes but reaches the end of the buffer (a number cut short)
    waits for the next chunk too."""
    decoder = json.JSONDecoder()
    chars = codecs.getincrementaldecoder("utf-8")()
    buf = ""
    pos = 0
    eof = False
    record = 0

    def more() -> bool:
        nonlocal buf, pos, eof
        if eof:
            return False
        chunk = f.read(CHUNK)
        try:
            text = chars.decode(chunk, final=not chunk)
        except UnicodeDecodeError as e:
            raise StepFailed(f"record {record + 1}: not UTF-8 JSON: {e}") from None
        if not chunk:
            eof = True
        buf = buf[pos:] + text
        pos = 0
        return True

    def skip_ws() -> str | None:
        """The next non-blank character (not consumed), or None at the end of the input."""
        nonlocal pos
        while True:
            while pos < len(buf) and buf[pos] in _WS:
                pos += 1
            if pos < len(buf):
                return buf[pos]
            if not more():
                return None

    def fail(what: str) -> StepFailed:
        return StepFailed(f"record {record + 1}: malformed JSON array: {what}")

    if skip_ws() != "[":
        raise StepFailed("malformed JSON array: the input does not begin with '['")
    pos += 1
    if skip_ws() == "]":
        pos += 1
        if skip_ws() is not None:
            raise fail("text after the closing ']'")
        return
    while True:
        if skip_ws() is None:
            raise fail("the input ends inside the array")
        while True:
            try:
                _, end = decoder.raw_decode(buf, pos)
            except json.JSONDecodeError as e:
                # Perhaps cut short by the buffer's end: read on, up to a bound (a bad element in
                # a big file must not pull the rest of the file into memory).
                if len(buf) - pos < MAX_ELEMENT and more():
                    continue
                if len(buf) - pos >= MAX_ELEMENT:
                    raise fail(f"an element longer than {MAX_ELEMENT} characters, or not closed") from None
                raise fail(e.msg) from None
            if end < len(buf) or eof or not more():
                break
        record += 1
        yield buf[pos:end].encode()
        pos = end
        c = skip_ws()
        if c == ",":
            pos += 1
            continue
        if c == "]":
            pos += 1
            if skip_ws() is not None:
                raise fail("text after the closing ']'")
            return
        raise fail("expected ',' or ']' after an element" if c is not None else "the input ends inside the array")
