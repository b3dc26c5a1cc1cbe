"""Reading YAML and TOML into plain data, remembering each YAML key's line for error messages."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import yaml

from conveyor.errors import Problem

Lines = dict[tuple[Any, ...], int]

# libyaml's parser where PyYAML was built with it: the pure-Python one takes seconds over a config
# of a thousand flows. Both give the same nodes, with the line of each.
_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def parse_file(path: Path) -> tuple[Any, Lines, list[Problem]]:
    """Parse a config file by its extension: ``.toml`` is TOML, anything else YAML."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        return None, {}, [Problem("", f"cannot read config file {path}: {e.strerror or e}")]
    if path.suffix.lower() == ".toml":
        return parse_toml(text)
    return parse_yaml(text)


def parse_toml(text: str) -> tuple[Any, Lines, list[Problem]]:
    """TOML has no duplicate keys and reports its own syntax errors with a line."""
    try:
        return tomllib.loads(text), {}, []
    except tomllib.TOMLDecodeError as e:
        return None, {}, [Problem("", f"invalid TOML: {e}")]


def parse_yaml(text: str) -> tuple[Any, Lines, list[Problem]]:
    """YAML into data plus a key-path → line map; duplicate keys are problems, not silently merged."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return {}, {}, []
        data = loader.construct_document(node)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        what = getattr(e, "problem", None) or str(e)
        return None, {}, [Problem("", f"invalid YAML: {what}", line)]
    finally:
        loader.dispose()
    lines: Lines = {}
    problems: list[Problem] = []
    _walk(node, (), lines, problems)
    return data, lines, problems


def _walk(node: yaml.Node, path: tuple[Any, ...], lines: Lines, problems: list[Problem]) -> None:
    from conveyor.config.interpolate import dotted

    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: set[Any] = set()
        for key_node, value_node in node.value:
            key = key_node.value
            if key in seen:
                problems.append(
                    Problem(
                        dotted((*path, key)),
                        f"duplicate key '{key}' (the name is used twice)",
                        key_node.start_mark.line + 1,
                    )
                )
            seen.add(key)
            lines[(*path, key)] = key_node.start_mark.line + 1
            _walk(value_node, (*path, key), lines, problems)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk(item, (*path, i), lines, problems)


def line_for(lines: Lines, path: tuple[Any, ...]) -> int | None:
    """The line of the deepest known prefix of ``path``."""
    for n in range(len(path), -1, -1):
        if path[:n] in lines:
            return lines[path[:n]]
    return None
