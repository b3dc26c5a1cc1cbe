"""Target names: measured in bytes, cut without merging two names, policies for unsafe names."""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from conveyor.names import (
    MissingField,
    NameValues,
    Template,
    UnsafeName,
    check_template,
    cut_bytes,
    fit_bytes,
    make_safe,
    split_folder,
    target_folder,
    target_name,
    unsafe_reason,
)
from conveyor.transfer.tempname import temp_name


def test_cut_bytes_never_splits_a_character() -> None:
    assert cut_bytes("é" * 10, 5) == "éé"
    assert cut_bytes("a😀b", 4) == "a"
    assert cut_bytes("abc", 10) == "abc"
    assert cut_bytes("\udcff" * 3, 4) == "\udcff"  # undecodable local bytes count three


def test_fit_bytes_keeps_distinct_names_distinct_and_the_extension() -> None:
    a, b = "x" * 300 + "1.csv", "x" * 300 + "2.csv"
    fa, fb = fit_bytes(a), fit_bytes(b)
    assert fa != fb and fa.endswith(".csv") and len(fa.encode()) <= 255
    assert fit_bytes(a) == fa, "the same name always fits the same way"
    assert fit_bytes("short.csv") == "short.csv"
    assert len(fit_bytes("é" * 130).encode()) <= 255
    assert len(fit_bytes("y" * 300 + ".averyveryverylongextension", 100).encode()) <= 100


@pytest.mark.parametrize("name", ["x", "é" * 127 + "x", "🙂" * 63])
def test_temp_names_fit_when_the_name_does(name: str) -> None:
    assert len(name.encode()) <= 255
    assert len(temp_name(name, "ab" * 32).encode()) <= 255


@pytest.mark.parametrize(
    ("name", "why"),
    [
        (".env", "dot"),
        ("CON", "device"),
        ("con.tar.gz", "device"),
        ("LPT9.x", "device"),
        ("COM¹", "device"),
        ("a.", "dot or a space"),
        ("a:b", "<>"),
        ('a"b', "<>"),
        ("a*", "<>"),
        ("console", None),
        ("CONx.txt", None),
        ("a.b", None),
    ],
)
def test_unsafe_reason(name: str, why: str | None) -> None:
    got = unsafe_reason(name)
    assert (got is None) if why is None else (got is not None and why in got)
    assert unsafe_reason(make_safe(name)) is None


def test_sidecar_names_are_escaped_one_to_one() -> None:
    names = ["a.meta.json", "a.meta.json_", "a.meta.json__", "a.meta.jsonx", "a"]
    got = [target_name("{name}", NameValues("id", "f", n), unsafe="rename", sidecars=True) for n in names]
    assert got == ["a.meta.json_", "a.meta.json__", "a.meta.json___", "a.meta.jsonx", "a"]
    assert [target_name("{name}", NameValues("id", "f", n), unsafe="rename") for n in names] == names, (
        "no sidecars, no escape"
    )


def test_names_leave_room_for_the_sidecar_suffix() -> None:
    name = target_name("{name}", NameValues("id", "f", "z" * 250), unsafe="rename", sidecars=True)
    assert len(os.fsencode(name + ".meta.json")) <= 255


def test_refuse_raises_and_only_dots_fall_back() -> None:
    with pytest.raises(UnsafeName, match="starts with a dot"):
        target_name("{name}", NameValues("id", "f", ".hidden"), unsafe="refuse")
    assert target_name("{name}", NameValues("p1", "f", ".."), unsafe="keep") == "p1"
    fallback = target_name("{id}", NameValues("..", "f", None), unsafe="keep")
    assert fallback.startswith("_") and "." not in fallback and "/" not in fallback


def _values(**kw: Any) -> NameValues:
    base: dict[str, Any] = {
        "id": "p1",
        "flow": "bank",
        "name": "PAY_1.csv",
        "folder": "eu/fr",
        "received": datetime(2026, 3, 1, 23, 30, tzinfo=UTC),
        "mtime": datetime(2026, 2, 27, 12, 0, tzinfo=UTC),
    }
    return NameValues(**{**base, **kw})


def test_template_fields_render() -> None:
    v = _values()
    assert target_name("{stem}{ext}", v, unsafe="rename") == "PAY_1.csv"
    assert target_name("{stem}-{id}{ext}", v, unsafe="rename") == "PAY_1-p1.csv"
    assert target_name("{flow}_{mtime:%Y%m%d}_{name}", v, unsafe="rename") == "bank_20260227_PAY_1.csv"
    assert target_name("{stem}{ext}", _values(name="README"), unsafe="rename") == "README", "no ext, no dot"
    assert target_name("{received}", v, unsafe="rename") == "20260301T233000"
    assert target_name("{{{id}}}", v, unsafe="keep") == "{p1}"
    # A date format's '/' cannot leave the folder in a file name.
    assert target_name("{received:%Y/%m}", v, unsafe="rename") == "2026_03"


def test_dates_follow_the_timezone() -> None:
    v = _values()
    assert target_name("{received:%Y-%m-%d}", v, unsafe="rename") == "2026-03-01"
    assert target_name("{received:%Y-%m-%d}", v, unsafe="rename", tz=ZoneInfo("Europe/Paris")) == "2026-03-02"


def test_folder_templates_keep_subfolders_and_drop_empty_parts() -> None:
    tpl = check_template("archive/{path}", folder=True)
    assert target_folder(tpl, _values(), unsafe="rename") == "archive/eu/fr"
    assert target_folder(tpl, _values(folder=""), unsafe="rename") == "archive"
    dated = Template("{received:%Y/%m/%d}/{path}")
    assert target_folder(dated, _values(folder=""), unsafe="rename") == "2026/03/01"
    # Other fields cannot add folders: their separators become '_'.
    assert target_folder(Template("{attr.region}"), _values(attrs={"region": "../x"}), unsafe="rename") == "_.._x"
    with pytest.raises(UnsafeName, match="not a file name"):
        target_folder(Template("{path}"), _values(folder="a/../b"), unsafe="rename")
    assert target_folder(Template("{path}"), _values(folder=".git/CON"), unsafe="rename") == "_.git/CON_"
    with pytest.raises(UnsafeName, match="starts with a dot"):
        target_folder(Template("{path}"), _values(folder=".git"), unsafe="refuse")


def test_message_fields() -> None:
    v = _values(attrs={"region": "eu", "n": 3}, headers={"kind": b"inv"})
    assert target_name("{attr.region}-{attr.n}-{id}", v, unsafe="rename") == "eu-3-p1"
    assert target_name("{header.kind}", v, unsafe="rename") == "inv"
    with pytest.raises(MissingField, match="no attribute 'missing'"):
        target_name("{attr.missing}", v, unsafe="rename")
    with pytest.raises(MissingField, match="no header 'k'"):
        target_name("{header.k}", _values(), unsafe="rename")


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("{foo}", "unknown field {foo}; known: {path} {name}"),
        ("{name.x}", "unknown field {name.x}"),
        ("{attr}", "names no key"),
        ("{received:%Y}{mtime:Y}", "needs strftime codes"),
        ("{id:zz}", "bad format"),
        ("{name!r}", "conversions are not supported"),
        ("a{", "literal brace"),
        ("a}", "literal brace"),
    ],
)
def test_bad_templates(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=re.escape(why)):
        Template(text)


def test_split_folder() -> None:
    assert split_folder("/srv/in") == ("/srv/in", "")
    assert split_folder("/srv/in/{path}") == ("/srv/in", "{path}")
    assert split_folder("/srv/in-{flow}/x") == ("/srv", "in-{flow}/x")
    assert split_folder("{path}") == (".", "{path}")
    assert split_folder("/srv/{{x}}") == ("/srv/{x}", "")
    with pytest.raises(ValueError, match=r"'\.\.' would leave"):
        check_template("/srv/{flow}/../x", folder=True)
