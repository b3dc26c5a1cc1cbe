"""The include / exclude glob rules, as a table: anchored at the source folder, ``**`` for zero
or more folders, ``*`` within one name, exclude over include; and which folders a listing may skip."""

from __future__ import annotations

import pytest

from conveyor.globs import GlobError, PathSelector, check_glob, reaches_into_folders

MATCHES = [
    # pattern, relative path, selected
    ("*.csv", "top.csv", True),
    ("*.csv", "a/b.csv", False),  # anchored: a top-level file only
    ("*.csv", "top.txt", False),
    ("*.csv", ".hidden.csv", True),
    ("**/*.csv", "top.csv", True),  # '**' is zero folders too
    ("**/*.csv", "a/b.csv", True),
    ("**/*.csv", "a/b/c/d.csv", True),
    ("**/*.csv", "a/b.csv/x.txt", False),
    ("a*", "ab", True),
    ("a*", "ab/c", False),  # '*' never crosses '/'
    ("a?c", "abc", True),
    ("a?c", "a/c", False),
    ("a/*", "a/b", True),
    ("a/*", "a/b/c", False),
    ("archive/**", "archive/x", True),
    ("archive/**", "archive/x/y.csv", True),
    ("archive/**", "archive", False),
    ("archive/**", "archive2/x", False),
    ("archive/", "archive/x/y", True),  # a trailing '/' is everything inside
    ("/top.csv", "top.csv", True),  # a leading '/' only says 'anchored'
    ("/top.csv", "a/top.csv", False),
    ("a/**/b", "a/b", True),
    ("a/**/b", "a/x/b", True),
    ("a/**/b", "a/x/y/b", True),
    ("a/**/b", "a/x/y/c", False),
    ("**", "anything/at/all", True),
    ("**/**/x", "x", True),
    ("**/in/*.csv", "in/a.csv", True),
    ("**/in/*.csv", "p/q/in/a.csv", True),
    ("**/in/*.csv", "p/q/in/r/a.csv", False),
    ("PAY_[0-9]*.csv", "PAY_2.csv", True),
    ("PAY_[0-9]*.csv", "PAY_x.csv", False),
    ("[!.]*", ".hidden", False),
    ("[!.]*", "shown", True),
    ("[^.]*", "shown", True),
    ("[]]", "]", True),
    ("\\*.csv", "*.csv", True),  # an escaped star is a star
    ("\\*.csv", "x.csv", False),
    ("a b.csv", "a b.csv", True),
    ("(x)+.csv", "(x)+.csv", True),  # regex characters are literal
    ("(x)+.csv", "xx.csv", False),
    ("Report.CSV", "report.csv", False),  # case counts
]


@pytest.mark.parametrize(("pattern", "path", "selected"), MATCHES)
def test_include_table(pattern: str, path: str, selected: bool) -> None:
    assert PathSelector(include=[pattern]).matches(path) is selected


@pytest.mark.parametrize(("pattern", "path", "selected"), MATCHES)
def test_exclude_is_the_same_match_negated(pattern: str, path: str, selected: bool) -> None:
    assert PathSelector(exclude=[pattern]).matches(path) is not selected


@pytest.mark.parametrize(
    ("include", "exclude", "path", "selected"),
    [
        ((), (), "any/thing", True),
        (("**/*.csv",), ("archive/**",), "archive/a.csv", False),  # exclude wins
        (("**/*.csv",), ("archive/**",), "in/a.csv", True),
        (("*.csv", "*.txt"), (), "a.txt", True),  # any include
        (("*.csv", "*.txt"), (), "a.xml", False),
        ((), ("*.tmp", "**/.*"), "x.tmp", False),
        ((), ("*.tmp", "**/.*"), "a/.part", False),
        ((), ("*.tmp", "**/.*"), "a/b.csv", True),
    ],
)
def test_include_and_exclude_together(
    include: tuple[str, ...], exclude: tuple[str, ...], path: str, selected: bool
) -> None:
    assert PathSelector(include, exclude).matches(path) is selected


@pytest.mark.parametrize(
    ("include", "exclude", "folder", "descend"),
    [
        ((), (), "a/b", True),
        (("*.csv",), (), "a", False),  # a top-level pattern reaches into no folder
        (("in/*.csv",), (), "in", True),
        (("in/*.csv",), (), "out", False),
        (("in/*.csv",), (), "in/deeper", False),
        (("**/*.csv",), (), "a/b/c", True),
        (("a/**/b",), (), "a/x/y", True),
        (("a/**/b",), (), "z", False),
        (("2026-*/**",), (), "2026-01/x", True),
        (("2026-*/**",), (), "2025-12", False),
        ((), ("archive/**",), "archive", False),  # everything inside is excluded
        ((), ("archive/",), "archive", False),
        ((), ("archive/**",), "archive2", True),
        ((), ("**/tmp/**",), "a/b/tmp", False),
        ((), ("archive/*.csv",), "archive", True),  # other files in it may still be taken
        (("**",), ("old/**",), "old", False),
    ],
)
def test_folders_a_listing_may_skip(
    include: tuple[str, ...], exclude: tuple[str, ...], folder: str, descend: bool
) -> None:
    assert PathSelector(include, exclude).may_hold(folder) is descend


@pytest.mark.parametrize(
    ("pattern", "why"),
    [
        ("", "empty"),
        ("/", "source folder"),
        ("a//b", "empty path segment"),
        ("../x", "'..'"),
        ("./x", "'.'"),
        ("a**b", "whole path segment"),
        ("x**/y", "whole path segment"),
        ("[abc", "closing"),
        ("abc\\", "escapes nothing"),
        ("[z-a]", "not a valid pattern"),
    ],
)
def test_invalid_globs_say_why(pattern: str, why: str) -> None:
    with pytest.raises(GlobError, match=why):
        check_glob(pattern)


@pytest.mark.parametrize(
    ("pattern", "into"),
    [("*.csv", False), ("/x.csv", False), ("**/*.csv", True), ("**", True), ("in/*.csv", True), ("a/", True)],
)
def test_which_patterns_need_a_recursive_listing(pattern: str, into: bool) -> None:
    assert reaches_into_folders(pattern) is into
