"""Parsing FTP directory listings and replies: MLSD facts, Unix ``ls -l`` and Windows/IIS ``LIST`` lines,
PASV/EPSV addresses and MDTM times. Pure functions and a streaming parser without I/O, so they are
tested with fixtures."""

from __future__ import annotations

import calendar
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

_MONTHS = {
    m: i
    for i, m in enumerate(("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), start=1)
}


@dataclass(frozen=True)
class Entry:
    """One line of a listing: a file, a folder or a link (``kind`` file | dir | link | other)."""

    name: str
    kind: str
    size: int
    mtime: float


def parse_mlsx_time(value: str) -> float:
    """``YYYYMMDDHHMMSS[.sss]`` (UTC, as MLSD and MDTM give it) to epoch seconds."""
    main, _, frac = value.strip().partition(".")
    if len(main) != 14 or not main.isdigit():
        raise ValueError(f"not an FTP time: {value!r}")
    t = time.struct_time(
        (int(main[0:4]), int(main[4:6]), int(main[6:8]), int(main[8:10]), int(main[10:12]), int(main[12:14]), 0, 0, 0)
    )
    secs = float(calendar.timegm(t))
    if frac.isdigit():
        secs += float("0." + frac)
    return secs


def parse_mlsd_line(line: str) -> Entry | None:
    """One MLSD line, ``type=file;size=12;modify=20261126223951; name``; None for ``.``/``..`` entries."""
    facts_part, sep, name = line.partition(" ")
    if not sep or not name:
        return None
    facts: dict[str, str] = {}
    for fact in facts_part.split(";"):
        key, eq, val = fact.partition("=")
        if eq:
            facts[key.strip().lower()] = val
    kind = facts.get("type", "").lower()
    if kind in ("cdir", "pdir") or name in (".", ".."):
        return None
    if kind == "file":
        k = "file"
    elif kind == "dir":
        k = "dir"
    elif kind.startswith("os.unix=slink") or kind.startswith("os.unix=symlink"):
        k = "link"
    else:
        k = "other"
    size = int(facts["size"]) if facts.get("size", "").isdigit() else -1
    try:
        mtime = parse_mlsx_time(facts["modify"]) if "modify" in facts else 0.0
    except ValueError:
        mtime = 0.0
    return Entry(name, k, size, mtime)


# drwxr-xr-x   2 user  group      4096 Nov 26 22:39 name with spaces
# -rw-r--r-- 1 owner group 18234 Nov 26  2025 name   (some servers omit the group, or the link count)
_UNIX = re.compile(
    r"^(?P<mode>[-dlbcpsD?][-rwxsStTlL+.@?]{9}[.+@]?)\s+"
    r"(?:(?P<rest>.*?)\s+)?"
    r"(?P<size>\d+)\s+"
    r"(?P<mon>[A-Za-z]{3})\s+(?P<day>\d{1,2})\s+(?P<ty>\d{1,2}:\d{2}|\d{4})\s"
    r"(?P<name>.+)$"
)
# 11-26-26  10:39PM                18234 name       /  11-26-2026  10:39      <DIR>  folder
_WINDOWS = re.compile(
    r"^(?P<mo>\d{2})-(?P<d>\d{2})-(?P<y>\d{2}|\d{4})\s+(?P<h>\d{1,2}):(?P<mi>\d{2})\s*(?P<ampm>[AaPp][Mm])?\s+"
    r"(?:(?P<dir><DIR>)|(?P<size>\d+))\s+(?P<name>.+)$"
)


def _resolve_yearless(month: int, day: int, hour: int, minute: int, now: float) -> float:
    """``ls -l`` omits the year for dates in the last six months: take the latest such date not in
    the future (a day of slack for clock and time-zone skew)."""
    year = time.gmtime(now).tm_year
    for y in (year, year - 1):
        try:
            t = float(calendar.timegm((y, month, day, hour, minute, 0, 0, 0, 0)))
        except ValueError:
            continue
        if t <= now + 86400:
            return t
    return float(calendar.timegm((year - 1, month, min(day, 28), hour, minute, 0, 0, 0, 0)))


def parse_list_line(line: str, now: float | None = None) -> Entry | None:
    """One ``LIST`` line in Unix or Windows/IIS format; None for totals, ``.``/``..`` and unknown lines.

    Times without a zone are taken as UTC (LIST carries no zone); MLSD is used whenever offered.
    """
    line = line.rstrip("\r\n")
    if not line or line.lower().startswith("total"):
        return None
    now = time.time() if now is None else now
    m = _UNIX.match(line)
    if m:
        mode = m.group("mode")
        name = m.group("name")
        kind = {"-": "file", "d": "dir", "l": "link"}.get(mode[0], "other")
        if kind == "link" and " -> " in name:
            name = name.split(" -> ", 1)[0]
        if name in (".", ".."):
            return None
        mon = _MONTHS.get(m.group("mon").lower())
        if mon is None:
            return None
        day, ty = int(m.group("day")), m.group("ty")
        if ":" in ty:
            hh, mm = (int(x) for x in ty.split(":"))
            mtime = _resolve_yearless(mon, day, hh, mm, now)
        else:
            try:
                mtime = float(calendar.timegm((int(ty), mon, day, 0, 0, 0, 0, 0, 0)))
            except ValueError:
                return None
        return Entry(name, kind, int(m.group("size")), mtime)
    m = _WINDOWS.match(line)
    if m:
        year = int(m.group("y"))
        if year < 100:
            year += 2000 if year < 70 else 1900
        hour = int(m.group("h"))
        ampm = (m.group("ampm") or "").upper()
        if ampm == "PM" and hour != 12:
            hour += 12
        elif ampm == "AM" and hour == 12:
            hour = 0
        try:
            mtime = float(
                calendar.timegm((year, int(m.group("mo")), int(m.group("d")), hour, int(m.group("mi")), 0, 0, 0, 0))
            )
        except ValueError:
            return None
        if m.group("dir"):
            return Entry(m.group("name"), "dir", -1, mtime)
        return Entry(m.group("name"), "file", int(m.group("size")), mtime)
    return None


def is_fragment(line: str, mlsd: bool) -> bool:
    """Whether a non-empty listing line is not an entry at all: the tail of a name that had a line break."""
    if not line.strip():
        return False
    if mlsd:
        facts, sep, _ = line.partition(" ")
        return not sep or "=" not in facts
    return not (line.lower().startswith("total") or _UNIX.match(line) or _WINDOWS.match(line))


class ListingParser:
    """Parses an MLSD or LIST listing as it arrives, so only the unfinished last line is held.

    Lines end with CRLF if the first line does, else with LF (a CRLF listing keeps a bare LF inside
    a name, which the source then refuses by name). An entry followed by a line that is not one
    (:func:`is_fragment`) was a name with a line break: the line is put back into its name, line
    break included, so the source refuses that file by its whole name (logged with the flow, and
    counted), and the fragment is counted in ``fragments``.
    """

    def __init__(self, mlsd: bool) -> None:
        self.entries: list[Entry] = []
        self.fragments = 0
        self._mlsd = mlsd
        self._parse: Callable[[str], Entry | None] = parse_mlsd_line if mlsd else parse_list_line
        self._tail = bytearray()
        self._sep: bytes | None = None
        self._last_parsed = False

    def feed(self, data: bytes | memoryview) -> None:
        """Parse the complete lines that ``data`` finishes; keep the rest for the next block."""
        start = max(0, len(self._tail) - 1)  # a CR at the end of the last block may start a CRLF
        self._tail += data
        if self._sep is None:
            first = self._tail.find(b"\n")
            if first < 0:
                return
            self._sep = b"\r\n" if first > 0 and self._tail[first - 1] == 0x0D else b"\n"
            start = 0
        end = self._tail.rfind(self._sep, start)
        if end < 0:
            return
        text = self._tail[:end].decode("utf-8", "surrogateescape")
        del self._tail[: end + len(self._sep)]
        for line in text.split(self._sep.decode()):
            self._line(line)

    def finish(self) -> None:
        """Parse what follows the last line end (a listing need not end with one)."""
        text = self._tail.decode("utf-8", "surrogateescape")
        self._tail = bytearray()
        self._line(text)

    def _line(self, line: str) -> None:
        entry = self._parse(line)
        if entry is not None:
            self.entries.append(entry)
        elif self._last_parsed and is_fragment(line, self._mlsd):
            self.fragments += 1
            prev = self.entries[-1]
            self.entries[-1] = replace(prev, name=prev.name + (self._sep or b"\n").decode() + line)
            return  # a name may hold several line breaks: the next fragment joins it too
        self._last_parsed = entry is not None


_PASV = re.compile(r"(\d{1,3}),(\d{1,3}),(\d{1,3}),(\d{1,3}),(\d{1,3}),(\d{1,3})")
_EPSV = re.compile(r"\((.)\1\1(\d{1,5})\1\)")


def parse_pasv(reply: str) -> tuple[str, int]:
    """``227 Entering Passive Mode (h1,h2,h3,h4,p1,p2)`` to (address, port)."""
    m = _PASV.search(reply)
    if not m:
        raise ValueError(f"cannot parse PASV reply {reply!r}")
    nums = [int(x) for x in m.groups()]
    if any(n > 255 for n in nums):
        raise ValueError(f"cannot parse PASV reply {reply!r}")
    return ".".join(str(n) for n in nums[:4]), nums[4] * 256 + nums[5]


def parse_epsv(reply: str) -> int:
    """``229 Entering Extended Passive Mode (|||6446|)`` to the port."""
    m = _EPSV.search(reply)
    if not m:
        raise ValueError(f"cannot parse EPSV reply {reply!r}")
    return int(m.group(2))
