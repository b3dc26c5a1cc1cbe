"""Target names: measured in bytes, cut without merging two names, policies for unsafe names."""

from __future__ import annotations

import os

import pytest

from conveyor.names import UnsafeName, cut_bytes, fit_bytes, make_safe, target_name, unsafe_reason
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
    got = [target_name("{name}", "id", n, "f", unsafe="rename", sidecars=True) for n in names]
    assert got == ["a.meta.json_", "a.meta.json__", "a.meta.json___", "a.meta.jsonx", "a"]
    assert [target_name("{name}", "id", n, "f", unsafe="rename") for n in names] == names, "no sidecars, no escape"


def test_names_leave_room_for_the_sidecar_suffix() -> None:
    name = target_name("{name}", "id", "z" * 250, "f", unsafe="rename", sidecars=True)
    assert len(os.fsencode(name + ".meta.json")) <= 255


def test_refuse_raises_and_only_dots_fall_back() -> None:
    with pytest.raises(UnsafeName, match="starts with a dot"):
        target_name("{name}", "id", ".hidden", "f", unsafe="refuse")
    assert target_name("{name}", "p1", "..", "f", unsafe="keep") == "p1"
    fallback = target_name("{id}", "..", None, "f", unsafe="keep")
    assert fallback.startswith("_") and "." not in fallback and "/" not in fallback
