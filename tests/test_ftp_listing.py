"""Unit tests of the FTP listing/reply parsers and the ftp config model (no server needed)."""

from __future__ import annotations

import calendar

import pytest
from pydantic import ValidationError

from conveyor.transfer.ftp.config import FtpConfig
from conveyor.transfer.ftp.listing import (
    ListingParser,
    parse_epsv,
    parse_list_line,
    parse_mlsd_line,
    parse_mlsx_time,
    parse_pasv,
)

NOW = calendar.timegm((2026, 11, 27, 1, 0, 0, 0, 0, 0))  # 2026-11-27 01:00 UTC


def ts(*parts: int) -> float:
    return float(calendar.timegm((*parts, 0, 0, 0)[:9]))


@pytest.mark.parametrize(
    ("line", "name", "kind", "size", "mtime"),
    [
        (
            "-rw-r--r--    1 1000     1000        18234 Nov 26 22:39 ORD_1001.csv",
            "ORD_1001.csv",
            "file",
            18234,
            ts(2026, 11, 26, 22, 39, 0),
        ),
        (
            "-rw-r--r-- 1 owner group 5 Nov 26 22:39 name with  two spaces.txt",
            "name with  two spaces.txt",
            "file",
            5,
            ts(2026, 11, 26, 22, 39, 0),
        ),
        # year-less date later in the year than now: last year
        ("-rw-r--r--   1 ftp ftp   77 Dec 24 10:00 xmas.csv", "xmas.csv", "file", 77, ts(2025, 12, 24, 10, 0, 0)),
        # explicit year
        ("-rw-r--r--   1 ftp ftp   12 Mar  3  2024 old.csv", "old.csv", "file", 12, ts(2024, 3, 3, 0, 0, 0)),
        (
            "drwxr-xr-x    2 1000     1000         4096 Nov 20 09:00 sub dir",
            "sub dir",
            "dir",
            4096,
            ts(2026, 11, 20, 9, 0, 0),
        ),
        (
            "lrwxrwxrwx    1 0        0              11 Nov 20 09:00 link name -> target.csv",
            "link name",
            "link",
            11,
            ts(2026, 11, 20, 9, 0, 0),
        ),
        # no group column (some embedded servers), ACL marker
        ("-rw-r--r--+ 1 user 3 Nov 26 22:39 acl.txt", "acl.txt", "file", 3, ts(2026, 11, 26, 22, 39, 0)),
        # Windows / IIS
        (
            "11-26-26  10:39PM                18234 ORD 1001.csv",
            "ORD 1001.csv",
            "file",
            18234,
            ts(2026, 11, 26, 22, 39, 0),
        ),
        ("01-02-2026  12:05AM       <DIR>          archive", "archive", "dir", -1, ts(2026, 1, 2, 0, 5, 0)),
        ("11-26-2026  09:15                    10 noampm.txt", "noampm.txt", "file", 10, ts(2026, 11, 26, 9, 15, 0)),
    ],
)
def test_list_lines(line: str, name: str, kind: str, size: int, mtime: float) -> None:
    e = parse_list_line(line, now=NOW)
    assert e is not None
    assert (e.name, e.kind, e.size, e.mtime) == (name, kind, size, mtime)


@pytest.mark.parametrize(
    "line",
    ["total 12", "", "drwxr-xr-x 2 a b 4096 Nov 20 09:00 .", "drwxr-xr-x 2 a b 4096 Nov 20 09:00 ..", "garbage line"],
)
def test_list_lines_skipped(line: str) -> None:
    assert parse_list_line(line, now=NOW) is None


def test_yearless_feb_29_resolves_to_a_leap_year() -> None:
    e = parse_list_line("-rw-r--r-- 1 a b 1 Feb 29 12:00 leap", now=ts(2029, 1, 10, 0, 0, 0))
    assert e is not None and e.mtime == ts(2028, 2, 29, 12, 0, 0)


def test_mlsd() -> None:
    e = parse_mlsd_line("type=file;size=18234;modify=20261126223951.123;UNIX.mode=0644; ORD 1001.csv")
    assert e is not None and (e.name, e.kind, e.size) == ("ORD 1001.csv", "file", 18234)
    assert e.mtime == pytest.approx(ts(2026, 11, 26, 22, 39, 51) + 0.123)
    assert parse_mlsd_line("type=cdir;modify=20261126223951; .") is None
    assert parse_mlsd_line("type=pdir;modify=20261126223951; ..") is None
    d = parse_mlsd_line("Type=dir;Modify=20261126223951; sub")
    assert d is not None and d.kind == "dir"
    link = parse_mlsd_line("type=OS.unix=slink:/x;size=3; l")
    assert link is not None and link.kind == "link"
    assert parse_mlsx_time("20261126223951") == ts(2026, 11, 26, 22, 39, 51)


def test_pasv_and_epsv() -> None:
    assert parse_pasv("227 Entering Passive Mode (10,255,255,1,195,80).") == ("10.255.255.1", 50000)
    assert parse_pasv("Entering Passive Mode 127,0,0,1,4,1") == ("127.0.0.1", 1025)
    assert parse_epsv("Entering Extended Passive Mode (|||6446|)") == 6446
    with pytest.raises(ValueError):
        parse_pasv("227 nonsense")
    with pytest.raises(ValueError):
        parse_pasv("227 (300,1,1,1,1,1)")


def cfg(**kw: object) -> FtpConfig:
    return FtpConfig.model_validate({"type": "ftp", "host": "ftp.example", **kw})


def test_config_defaults_and_ports() -> None:
    c = cfg()
    assert (c.effective_port, c.username, c.tls, c.passive, c.pasv_trust_address) == (
        21,
        "anonymous",
        "none",
        True,
        False,
    )
    assert (c.max_listing_entries, c.max_listing_bytes, c.listing_timeout) == (100_000, 64 << 20, 300.0)
    assert cfg(max_listing_bytes="1MiB", listing_timeout="2m").max_listing_bytes == 1 << 20
    assert cfg(ignore_passive_address=True).pasv_trust_address is False  # what happens anyway
    assert cfg(tls="implicit").effective_port == 990
    assert cfg(tls="implicit", port=2990).effective_port == 2990
    assert cfg(ssl=True).tls == "explicit"
    assert cfg(ssl=False).tls == "none"
    assert cfg(username="acme", password="pw", tls="explicit").describe() == "ftps-explicit://acme@ftp.example:21"
    assert "pw" not in repr(cfg(password="pw"))


def test_config_fingerprints() -> None:
    hexfp = "ab" * 32
    assert cfg(tls="explicit", tls_fingerprint=":".join(["AB"] * 32)).tls_fingerprint == hexfp
    assert cfg(tls="explicit", tls_fingerprint="SHA256:" + hexfp.upper()).tls_fingerprint == hexfp
    with pytest.raises(ValidationError, match="64 hex digits"):
        cfg(tls="explicit", tls_fingerprint="abcd")


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"ca_file": "/tmp/ca.pem"}, "tls is none"),
        ({"tls": "explicit", "ca_file": "/tmp/ca.pem", "tls_fingerprint": "ab" * 32}, "not both"),
        ({"ssl": True, "tls": "explicit"}, "not both"),
        ({"timeout": 10}, "unit"),
        ({"tls": "sometimes"}, "tls"),
        ({"ignore_passive_address": True, "pasv_trust_address": True}, "contradicts"),
        ({"max_listing_entries": 0}, "max_listing_entries"),
        ({"max_listing_bytes": "lots"}, "not a size"),
    ],
)
def test_config_errors(kw: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        cfg(**kw)


def test_fragments_of_names_with_line_breaks() -> None:
    from conveyor.transfer.ftp.listing import is_fragment

    assert is_fragment("break.txt", mlsd=True) and is_fragment("break.txt", mlsd=False)
    assert not is_fragment("type=file;size=1; ok", mlsd=True)
    assert not is_fragment("drwxr-xr-x 2 a b 4096 Nov 20 09:00 .", mlsd=False)
    assert not is_fragment("total 8", mlsd=False) and not is_fragment("", mlsd=False)


MLSD_LISTING = (
    b"type=cdir;modify=20261126223951; .\r\n"
    b"type=file;size=12;modify=20261126223951; a b.csv\r\n"
    b"type=file;size=3;modify=20261126223951; broken\r\n"
    b"name.txt\r\n"
    b"type=dir;modify=20261126223951; sub\r\n"
    b"type=file;size=7;modify=20261126223951; caf\xc3\xa9.txt"  # UTF-8 \u00e9, cut in two by some splits
)


@pytest.mark.parametrize("step", [1, 2, 3, 7, 64, len(MLSD_LISTING)])
def test_listing_parser_streams(step: int) -> None:
    """Any split into blocks (CRLF cut in two, a UTF-8 character cut in two) parses alike; a line
    that is no entry after an entry was the rest of a name with a line break: the name is whole
    again (for the source to refuse by name)."""
    p = ListingParser(mlsd=True)
    for i in range(0, len(MLSD_LISTING), step):
        p.feed(memoryview(MLSD_LISTING)[i : i + step])
    p.finish()
    assert [(e.name, e.kind, e.size) for e in p.entries] == [
        ("a b.csv", "file", 12),
        ("broken\r\nname.txt", "file", 3),
        ("sub", "dir", -1),
        ("caf\u00e9.txt", "file", 7),
    ]
    assert p.fragments == 1


def test_listing_parser_line_ends() -> None:
    lf = ListingParser(mlsd=False)
    lf.feed(b"-rw-r--r-- 1 u g 5 Jan  1  2026 a\n-rw-r--r-- 1 u g 6 Jan  1  2026 b\n")
    lf.finish()
    assert [(e.name, e.size) for e in lf.entries] == [("a", 5), ("b", 6)]
    # CRLF listing: a bare LF stays inside the name (the source refuses such a name by name).
    crlf = ListingParser(mlsd=True)
    crlf.feed(b"type=file;size=1;modify=20260101000000; x\r\ntype=file;size=2;modify=20260101000000; y\nz\r\n")
    crlf.finish()
    assert [e.name for e in crlf.entries] == ["x", "y\nz"]


def test_a_name_with_several_line_breaks_comes_back_whole() -> None:
    p = ListingParser(mlsd=False)
    p.feed(b"-rw-r--r-- 1 u g 5 Jan  1  2026 two\r\nline\r\nbreaks\r\n-rw-r--r-- 1 u g 6 Jan  1  2026 next\r\n")
    p.finish()
    assert [(e.name, e.size) for e in p.entries] == [("two\r\nline\r\nbreaks", 5), ("next", 6)]
    assert p.fragments == 2
