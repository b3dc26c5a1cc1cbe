"""Loading a config: parse, interpolate, validate in two phases, cross-check; report every problem.

Phase 1 validates the file against the top-level schema (instances by their ``type``).
Phase 2 validates each flow's ``source`` with the source model of its instance's type and
its ``target`` with the model of its target type or its instance's target model — a ``queue``
on an sftp instance is an error there. Cross-checks follow. All problems are collected and
raised together as one :class:`ConfigError`.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from conveyor.config.base import FileSourceConfig, InstanceConfig, MessageSourceConfig, NamedFiles, SourceConfig
from conveyor.config.interpolate import Interpolator, dotted
from conveyor.config.parse import Lines, line_for, parse_file
from conveyor.config.schema import NAME_PATTERN, Config, Flow, FlowConfig, Route, TargetEntryConfig, raw_model
from conveyor.config.types import MoveAction, format_size
from conveyor.errors import ConfigError, Problem
from conveyor.names import Template, normal_path
from conveyor.registry import INSTANCE_KIND, target_specs, type_names
from conveyor.registry import get as spec_of


class _Collector:
    def __init__(self, lines: Lines) -> None:
        self.lines = lines
        self.problems: list[Problem] = []

    def add(self, path: tuple[Any, ...], message: str) -> None:
        self.problems.append(Problem(dotted(path), message, line_for(self.lines, path)))

    def pydantic(self, err: ValidationError, prefix: tuple[Any, ...], context: str = "") -> None:
        for e in err.errors():
            loc = _clean_loc(prefix, tuple(e["loc"]))
            if e["type"] == "union_tag_invalid":
                loc = (*loc, "type")
            self.add(loc, _message(e, context))


def _clean_loc(prefix: tuple[Any, ...], loc: tuple[Any, ...]) -> tuple[Any, ...]:
    # Discriminated unions put the tag in the location ('instances', 'x', 'sftp', 'host'): drop it.
    if len(loc) >= 3 and loc[0] == "instances" and isinstance(loc[2], str) and loc[2] in type_names():
        loc = loc[:2] + loc[3:]
    # Validators on a union member name the member ('function-after[...]'): drop those too.
    loc = tuple(p for p in loc if not (isinstance(p, str) and (("[" in p and "]" in p) or p in ("str", "int"))))
    return prefix + loc


def _message(e: Any, context: str) -> str:
    kind, msg = e["type"], e["msg"]
    if kind == "extra_forbidden":
        return f"unknown key{context}"
    if kind == "missing":
        return "missing required key"
    if kind == "union_tag_invalid":
        tags = ", ".join(type_names())
        return f"unknown instance type {e['ctx']['tag']!r} (expected one of: {tags})"
    if kind == "union_tag_not_found":
        return f"missing 'type' (one of: {', '.join(type_names())})"
    if kind == "value_error":
        return str(msg).removeprefix("Value error, ")
    if kind == "literal_error":
        return f"must be {e['ctx']['expected']}"
    return str(msg)


def default_state_folder(env: Mapping[str, str] | None = None) -> str:
    """The folder for state when the config names none: $STATE_DIRECTORY (systemd), else ./var."""
    return (os.environ if env is None else env).get("STATE_DIRECTORY", "").split(":")[0] or "var"


def default_paths() -> tuple[str, str]:
    """Default state file and spool folder, in :func:`default_state_folder`."""
    base = default_state_folder()
    return str(Path(base) / "state.db"), str(Path(base) / "spool")


def load_config(path: str | Path, env: dict[str, str] | None = None) -> Config:
    """Read and validate a config file; raises ConfigError listing every problem."""
    path = Path(path)
    data, lines, parse_problems = parse_file(path)
    if data is None:
        raise ConfigError(parse_problems, str(path))
    if not isinstance(data, dict):
        raise ConfigError([Problem("", "the config must be a mapping of keys to values")], str(path))
    col = _Collector(lines)
    col.problems.extend(parse_problems)
    interp = Interpolator(env)
    data = interp.walk(data)
    for p, msg in interp.problems:
        col.add(p, msg)
    raw: Any = None
    try:
        raw = raw_model(_instance_types(data)).model_validate(data)
    except ValidationError as e:
        col.pydantic(e, ())
    instances: dict[str, InstanceConfig] = dict(raw.instances) if raw is not None else _salvage_instances(data)
    flows: dict[str, Flow] = {}
    for name in (data.get("instances") or {}) if isinstance(data.get("instances"), dict) else {}:
        if not re.match(NAME_PATTERN, str(name)):
            col.add(("instances", name), "instance names use letters, digits, '.', '_' and '-' (at most 64)")
    raw_flows = data.get("flows") or {}
    if isinstance(raw_flows, dict):
        for name, fdata in raw_flows.items():
            if not re.match(NAME_PATTERN, str(name)):
                col.add(("flows", name), "flow names use letters, digits, '.', '_' and '-' (at most 64)")
            flow = _resolve_flow(str(name), fdata, instances, col)
            if flow is not None:
                flows[flow.name] = flow
    if col.problems:
        raise ConfigError(_dedupe(col.problems), str(path))
    state_default, spool_default = default_paths()
    return Config(
        path=str(path),
        state=raw.state or state_default,
        spool_dir=raw.spool_dir or spool_default,
        spool_threshold=raw.spool_threshold,
        spool_max=raw.spool_max,
        shutdown_timeout=raw.shutdown_timeout,
        replica=raw.replica,
        retention=raw.retention,
        health=raw.health,
        log=raw.log,
        instances=instances,
        flows=flows,
        min_free_space=raw.min_free_space,
        traces=raw.traces,
        sensitive=tuple(interp.sensitive),
    )


def _instance_types(data: dict[str, Any]) -> tuple[str, ...]:
    """The known instance types a config names (sorted): the top-level model is built with
    only these, so a config pays for the models of the connectors it uses."""
    raw = data.get("instances")
    named = {i.get("type") for i in raw.values() if isinstance(i, dict)} if isinstance(raw, dict) else set()
    # The union needs a member: local's model is the lightest (and an unknown type is
    # reported against every type's name regardless).
    return tuple(t for t in type_names() if t in named) or ("local",)


def _salvage_instances(data: dict[str, Any]) -> dict[str, InstanceConfig]:
    """Instances that validate on their own, so flow checks still run when something else is wrong."""
    out: dict[str, InstanceConfig] = {}
    raw = data.get("instances")
    if not isinstance(raw, dict):
        return out
    known = type_names()
    for name, idata in raw.items():
        if isinstance(idata, dict) and idata.get("type") in known:
            try:
                out[name] = spec_of(idata["type"]).instance_model.model_validate(idata)
            except ValidationError:
                out[name] = _Unvalidated(type=idata["type"])
    return out


class _Unvalidated(InstanceConfig):
    """Stands in for an instance whose own fields are invalid (already reported)."""

    type: str


def _resolve_flow(name: str, fdata: Any, instances: dict[str, InstanceConfig], col: _Collector) -> Flow | None:
    base = ("flows", name)
    try:
        flow = FlowConfig.model_validate(fdata)
    except ValidationError as e:
        col.pydantic(e, base)
        return None
    source = _resolve_source(flow.source, instances, col, (*base, "source"))
    if isinstance(source, FileSourceConfig):
        _check_moves(source, col, (*base, "source"))
        _check_selection(source, col, (*base, "source"))
        if source.schedule is not None and "poll_interval" in source.model_fields_set:
            col.add((*base, "source", "schedule"), "give either schedule or poll_interval, not both")
    if flow.targets is not None:
        if flow.target is not None:
            col.add((*base, "targets"), "give either target (one) or targets (a list), not both")
            return None
        routes = _resolve_routes(flow.targets, source, instances, col, (*base, "targets"))
        if source is None or routes is None:
            return None
        for i, route in enumerate(routes):
            if isinstance(route.target, NamedFiles):
                _check_templates(route.target, source, instances, col, (*base, "targets", i))
                route.target.set_timezone(flow.timezone)
            _check_steps(flow, source, route.target, route.kind, instances, col, base)
        first = routes[0]
        return Flow(
            name,
            source,
            first.target,
            first.kind,
            flow.retry,
            flow.max_in_flight,
            flow.enabled,
            flow.timezone,
            fan_out=tuple(routes),
            steps=flow.steps,
            expect=flow.expect,
        )
    if flow.target is None:
        col.add((*base, "target"), "missing required key (or targets: a list of targets)")
        return None
    target, kind = _resolve_target(flow.target, instances, col, (*base, "target"))
    if source is None or target is None or kind is None:
        return None
    if isinstance(target, NamedFiles):
        _check_templates(target, source, instances, col, (*base, "target"))
        target.set_timezone(flow.timezone)
    _check_steps(flow, source, target, kind, instances, col, base)
    return Flow(
        name,
        source,
        target,
        kind,
        flow.retry,
        flow.max_in_flight,
        flow.enabled,
        flow.timezone,
        steps=flow.steps,
        expect=flow.expect,
    )


def _check_steps(
    flow: FlowConfig,
    source: SourceConfig,
    target: Any,
    kind: str,
    instances: dict[str, InstanceConfig],
    col: _Collector,
    base: tuple[Any, ...],
) -> None:
    """An archive unpacked into a broker would publish its first members again after a crash
    (no per-member progress is kept): only file targets, which overwrite the same names, may take it.
    ``collect`` gathers messages into files: a broker source, a file target, and a source that
    hands over a whole batch's messages before any is acked."""
    iname = getattr(target, "instance", None) if kind == INSTANCE_KIND else None
    if flow.steps and flow.steps[0].collect is not None:
        _check_collect(flow, source, target, iname, kind, instances, col, (*base, "steps", 0, "collect"))
    if iname is None or spec_of(instances[iname].type).kind != "message":
        return
    for i, step in enumerate(flow.steps):
        if step.kind == "unpack":
            col.add(
                (*base, "steps", i, "unpack"),
                f"unpack needs a file or directory target; a {instances[iname].type} target would get the "
                "first members twice after a crash",
            )


def _check_collect(
    flow: FlowConfig,
    source: SourceConfig,
    target: Any,
    iname: str | None,
    kind: str,
    instances: dict[str, InstanceConfig],
    col: _Collector,
    path: tuple[Any, ...],
) -> None:
    collect = flow.steps[0].collect
    assert collect is not None
    stype = instances[source.instance].type
    if spec_of(stype).kind != "message":
        col.add(path, f"collect gathers messages: it needs a broker source (rabbitmq, pubsub), not {stype}")
        return
    file_target = kind == "directory" or (iname is not None and spec_of(instances[iname].type).kind == "file")
    if not file_target:
        what = instances[iname].type if iname is not None else kind
        col.add(
            path,
            f"collect writes files: it needs a file target (directory, or a local, sftp or ftp instance), not {what}",
        )
        return
    timeout = getattr(target, "timeout", None)
    if isinstance(timeout, float | int) and timeout <= collect.max_wait:
        col.add(
            (*path, "max_wait"),
            f"a message waits up to max_wait ({collect.max_wait:g}s) in its batch, within the target's timeout "
            f"({timeout:g}s): make the timeout longer than max_wait and a file's upload",
        )
    # Every message of a batch is unacked until its file is written: the broker must hand over
    # that many at once, or a batch never fills and waits for max_wait each time.
    window = getattr(source, "prefetch", None) or getattr(source, "max_messages", None)
    if isinstance(window, int) and window < collect.max_messages:
        key = "prefetch" if hasattr(source, "prefetch") else "max_messages"
        col.add(
            (*path, "max_messages"),
            f"{collect.max_messages} messages per file, but the source's {key} lets only {window} be "
            f"unacked at once: raise source.{key} to at least {collect.max_messages} or lower max_messages",
        )


_NEEDS = {"attr": "pubsub", "header": "rabbitmq"}
"""Template fields only one source type has: Pub/Sub attributes, AMQP headers."""


def _check_templates(
    target: NamedFiles,
    source: SourceConfig,
    instances: dict[str, InstanceConfig],
    col: _Collector,
    path: tuple[Any, ...],
) -> None:
    """Fields a flow's source can never fill are config errors, not a failed item each."""
    stype = instances[source.instance].type
    message = spec_of(stype).kind == "message"
    for key in ("path", "filename"):
        fields = Template(getattr(target, key)).fields
        for field, needs in _NEEDS.items():
            if field in fields and stype != needs:
                col.add((*path, key), f"{{{field}.KEY}} needs a {needs} source; this flow reads from {stype}")
        if "mtime" in fields and message:
            col.add((*path, key), f"{{mtime}} needs a file source; this flow reads from {stype}")


def _resolve_routes(
    entries: list[dict[str, Any]],
    source: SourceConfig | None,
    instances: dict[str, InstanceConfig],
    col: _Collector,
    path: tuple[Any, ...],
) -> list[Route] | None:
    """The targets of a ``targets:`` list, each with its ledger name and ``when``; None after a problem."""
    if not entries:
        col.add(path, "give at least one target")
        return None
    routes: list[Route] = []
    named: dict[str, int] = {}
    ok = True
    for i, entry in enumerate(entries):
        at = (*path, i)
        if not isinstance(entry, dict):
            col.add(at, "must be a mapping (a target, with an optional name and when)")
            ok = False
            continue
        extra = {k: entry[k] for k in ("name", "when") if k in entry}
        rest = {k: v for k, v in entry.items() if k not in extra}
        try:
            meta = TargetEntryConfig.model_validate(extra)
        except ValidationError as e:
            col.pydantic(e, at)
            ok = False
            meta = None
        target, kind = _resolve_target(rest, instances, col, at)
        if meta is None or target is None or kind is None:
            ok = False
            continue
        if meta.when is not None and not _when_fits(meta.when, source, instances, col, (*at, "when")):
            ok = False
        name = meta.name or (getattr(target, "instance", None) if kind == INSTANCE_KIND else kind)
        assert isinstance(name, str)
        if name in named:
            col.add(
                (*at, "name"),
                f"targets[{named[name]}] is named '{name}' too: give each target its own name "
                "(name: ...), the ledger keeps track of each by it",
            )
            ok = False
        named.setdefault(name, i)
        routes.append(Route(name, target, kind, meta.when, dotted((*path[2:], i))))
    return routes if ok else None


_WHEN_KEYS = {"attr": "attributes", "header": "headers"}
"""``when`` keys on message metadata, and the metadata each reads."""


def _when_fits(
    when: Any, source: SourceConfig | None, instances: dict[str, InstanceConfig], col: _Collector, path: tuple[Any, ...]
) -> bool:
    """A ``when`` key that no payload of this source can have is a config error, not a target that
    silently never matches: attributes and headers are message metadata, each of one broker kind."""
    if source is None:
        return True
    itype = instances[source.instance].type if source.instance in instances else "?"
    ok = True
    for key in _WHEN_KEYS:
        if getattr(when, key) is None:
            continue
        carries = _carries(source)
        if carries is None:
            col.add((*path, key), f"a {itype} source's payloads are files, which have no message {_WHEN_KEYS[key]}")
            ok = False
        elif key not in carries:
            other = ", ".join(carries) or "nothing"
            col.add(
                (*path, key),
                f"a {itype} source's messages have no {_WHEN_KEYS[key]} (their metadata in when: {other})",
            )
            ok = False
    if when.min_size is not None and when.max_size is not None and when.min_size > when.max_size:
        col.add((*path, "min_size"), "is larger than max_size: no payload could match")
        ok = False
    return ok


def _carries(source: SourceConfig) -> tuple[str, ...] | None:
    """The ``when`` keys on message metadata a source's payloads have; None for a file source."""
    if not isinstance(source, MessageSourceConfig):
        return None
    return tuple(getattr(type(source), "when_keys", ()))


def _lookup(iname: Any, instances: dict[str, InstanceConfig], col: _Collector, path: tuple[Any, ...]) -> str | None:
    if not isinstance(iname, str):
        col.add(path, "missing required key" if iname is None else "must be an instance name")
        return None
    if iname not in instances:
        close = difflib.get_close_matches(iname, list(instances), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        col.add(path, f"no instance named '{iname}'{hint}")
        return None
    return instances[iname].type


def _resolve_source(
    data: dict[str, Any], instances: dict[str, InstanceConfig], col: _Collector, path: tuple[Any, ...]
) -> SourceConfig | None:
    itype = _lookup(data.get("instance"), instances, col, (*path, "instance"))
    if itype is None:
        return None
    spec = spec_of(itype)
    if spec.source_model is None:
        col.add(path, f"a {itype} instance cannot be a source")
        return None
    source: SourceConfig | None = _validate(
        spec.source_model, data, col, path, f" for a {itype} source (instance '{data['instance']}')"
    )
    return source


def _resolve_target(
    data: dict[str, Any], instances: dict[str, InstanceConfig], col: _Collector, path: tuple[Any, ...]
) -> tuple[Any, str | None]:
    has_type, has_instance = "type" in data, "instance" in data
    kinds = target_specs()
    types = sorted(kinds)
    if has_type == has_instance:
        col.add(
            path,
            f"give either 'type: {'|'.join(types)}' or 'instance: NAME'"
            if has_type
            else f"missing 'type' ({_either(types)}) or 'instance'",
        )
        return None, None
    if has_type:
        kind = kinds.get(data["type"]) if isinstance(data["type"], str) else None
        if kind is None:
            col.add(
                (*path, "type"),
                f"unknown target type {data['type']!r} (expected {_either(types)}; "
                "to write to an instance use 'instance: NAME')",
            )
            return None, None
        return _validate(kind.model, data, col, path, f" for a {kind.type} target"), kind.type
    itype = _lookup(data.get("instance"), instances, col, (*path, "instance"))
    if itype is None:
        return None, None
    spec = spec_of(itype)
    if spec.target_model is None:
        col.add(path, f"a {itype} instance cannot be a target")
        return None, None
    return _validate(
        spec.target_model, data, col, path, f" for a {itype} target (instance '{data['instance']}')"
    ), INSTANCE_KIND


def _either(names: list[str]) -> str:
    """``a``, ``a or b``, ``a, b or c``."""
    return f"{', '.join(names[:-1])} or {names[-1]}" if len(names) > 1 else "".join(names)


def _validate(model: type[Any], data: dict[str, Any], col: _Collector, path: tuple[Any, ...], context: str) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        col.pydantic(e, path, context)
        return None


def _check_moves(src: FileSourceConfig, col: _Collector, path: tuple[Any, ...]) -> None:
    watched = src.path  # already in its normal form
    for key, action in (("after", src.after), ("on_failure", src.on_failure)):
        if not isinstance(action, MoveAction):
            continue
        if ".." in action.move.split("/"):
            col.add((*path, key, "move"), "the move folder must stay under the instance root (no '..')")
            continue
        dest = normal_path(action.move)  # so 'move: ./in' is seen to be the watched 'in'
        inside = dest == watched or (src.recursive and (watched == "" or dest.startswith(watched + "/")))
        if inside:
            col.add(
                (*path, key, "move"),
                f"folder '{action.move}' is inside the watched path '{src.path or '/'}'"
                f"{' (recursive)' if src.recursive else ''}: moved files would be taken again",
            )


def _check_selection(src: FileSourceConfig, col: _Collector, path: tuple[Any, ...]) -> None:
    """Selection settings that contradict each other: each is reported at the key to change."""
    if not src.recursive:
        for key, what in src.reaching_into_folders():
            col.add(
                (*path, *key),
                f"{what}, but recursive is false: drop 'recursive: false' (sub-folders are then listed) "
                "or keep to the source folder",
            )
    if src.min_size is not None and src.max_size is not None and src.min_size > src.max_size:
        col.add(
            (*path, "max_size"),
            f"{format_size(src.max_size)} is below min_size ({format_size(src.min_size)}): no file could be taken",
        )
    if src.max_age is not None and src.max_age <= src.min_age:
        col.add(
            (*path, "max_age"),
            f"{src.max_age:g}s is not longer than min_age ({src.min_age:g}s): a file is taken only once it has "
            "stayed unchanged for min_age, by which time it is older than max_age",
        )


def _dedupe(problems: list[Problem]) -> list[Problem]:
    seen: set[tuple[str, str]] = set()
    out = []
    for p in problems:
        if (p.path, p.message) not in seen:
            seen.add((p.path, p.message))
            out.append(p)
    return out
