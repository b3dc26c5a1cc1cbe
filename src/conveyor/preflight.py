"""``conveyor check --connect``: log in to every instance, then look at what every flow will use.

Nothing is changed on any server or disk: folders are stat'ed and listed, queues and exchanges
declared passively, subscriptions and topics looked up, HTTP endpoints asked with HEAD (or
OPTIONS). Where a flow's setting would create the thing at start (``declare:``,
``create_subscription:``, a missing target folder) that is said instead of failing. One line per
instance (and one per hop of an instance reached through a proxy or jump hosts), then one per
flow; a flow fails when its source or its target would fail on the first try.
"""

from __future__ import annotations

import asyncio
import contextlib
import posixpath
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from conveyor.config import Config, Flow
from conveyor.config.base import FileSourceConfig, FileTargetConfig, InstanceConfig
from conveyor.config.schema import Route
from conveyor.errors import ConveyorError, NotFound, Permanent
from conveyor.flows.filesource import Selection
from conveyor.interfaces import (
    BrokerInstance,
    Context,
    FileSystem,
    Hops,
    Instance,
    Located,
    Probes,
    Resolves,
    Target,
)
from conveyor.redact import redact
from conveyor.registry import get as spec_of
from conveyor.registry import target_specs

COUNT_LIMIT = 1000
"""A source folder is listed this far to count its files: enough to show it works, not a full scan."""


async def preflight(config: Config, out: Callable[[str], None] = print) -> int:
    """Check every instance and every enabled flow, one line each; 2 when anything will fail, else 0."""
    from conveyor.payload.spool import Spool
    from conveyor.redact import register_secrets
    from conveyor.status import StatusBoard

    register_secrets(config.secrets())
    ctx = Context(spool=Spool(Path(config.spool_dir)), status=StatusBoard())
    live: dict[str, Instance] = {}
    failures = 0
    try:
        for name, icfg in config.instances.items():
            rt: Instance | None = None
            try:
                rt = live[name] = spec_of(icfg.type).load_factory()(name, icfg, ctx)
                desc = await rt.check()
                out(f"  ok    {name} ({icfg.type}): {desc}")
            except Exception as e:
                live.pop(name, None)
                failures += 1
                out(f"  FAIL  {name} ({icfg.type}): {redact(str(e))}")
            if isinstance(rt, Hops):
                for i, line in enumerate(rt.hop_report(), 1):
                    out(f"          {i}. {redact(line)}")
                if rt not in live.values():
                    with contextlib.suppress(Exception):
                        await rt.close()
        flows = list(config.flows.values())
        lines = await asyncio.gather(*(_flow_line(config, flow, live, ctx) for flow in flows))
        for ok, line in lines:
            failures += not ok
            out(line)
    finally:
        for rt in live.values():
            with contextlib.suppress(Exception):
                await rt.close()
    return 2 if failures else 0


async def _flow_line(config: Config, flow: Flow, live: dict[str, Instance], ctx: Context) -> tuple[bool, str]:
    """``(ok, line)`` for one flow: its source's and its target's outcome, each naming what was checked."""
    if not flow.enabled:
        return True, f"  -     flow {flow.name}: disabled, not checked"
    routes = flow.routes
    found = await asyncio.gather(
        _source(config, flow, live), *(_target(config, flow, r, live, ctx) for r in routes), return_exceptions=True
    )
    roles = ["source", *(f"target {r.name}" if r.name else "target" for r in routes)]
    parts = [
        p if isinstance(p, tuple) else (False, f"{role}: {type(p).__name__}: {redact(str(p))}")
        for role, p in zip(roles, found, strict=True)
    ]
    ok = all(p[0] for p in parts)
    return ok, f"  {'ok  ' if ok else 'FAIL'}  flow {flow.name}: {'; '.join(p[1] for p in parts)}"


async def _outcome(label: str, probe: Callable[[], Awaitable[str]] | None) -> tuple[bool, str]:
    if probe is None:
        return True, f"{label}: not checked (this connector has no probe)"
    try:
        return True, f"{label}: {redact(await probe())}"
    except ConveyorError as e:
        return False, f"{label}: {redact(e.message)}"
    except Exception as e:  # a probe must end in a line, never a traceback
        return False, f"{label}: {type(e).__name__}: {redact(str(e))}"


async def _source(config: Config, flow: Flow, live: dict[str, Instance]) -> tuple[bool, str]:
    iname = flow.source.instance
    icfg = config.instances[iname]
    rt = live.get(iname)
    if rt is None:
        return False, f"source {iname}: instance failed its check (above)"
    fsrc = flow.source
    if isinstance(fsrc, FileSourceConfig) and isinstance(rt, FileSystem):
        label = f"source {iname} {await _where(rt, icfg, fsrc.path.strip('/'))}"
        return await _outcome(label, lambda: _file_source(rt, icfg, fsrc))
    assert isinstance(rt, BrokerInstance)
    src = rt.source(flow.name, flow.source)
    what = getattr(flow.source, "queue", None)
    label = (
        f"source {iname} queue '{what}'"
        if what is not None
        else f"source {iname} subscription {getattr(src, 'path', '')}"
    )
    return await _outcome(label, src.probe if isinstance(src, Probes) else None)


async def _target(
    config: Config, flow: Flow, route: Route, live: dict[str, Instance], ctx: Context
) -> tuple[bool, str]:
    ok, line = await _one_target(config, flow, route, live, ctx)
    return ok, f"[{route.name}] {line}" if route.name else line


async def _one_target(
    config: Config, flow: Flow, route: Route, live: dict[str, Instance], ctx: Context
) -> tuple[bool, str]:
    cfg = route.target
    kind = target_specs().get(route.kind)
    if kind is not None:
        built = kind.load_factory()(flow.name, cfg, ctx)
        return await _probe_target(f"target {built.where if isinstance(built, Located) else kind.type}", built)
    iname = cfg.instance
    icfg = config.instances[iname]
    rt = live.get(iname)
    if rt is None:
        return False, f"target {iname}: instance failed its check (above)"
    if isinstance(cfg, FileTargetConfig) and isinstance(rt, FileSystem):
        folder = cfg.path.strip("/")
        label = f"target {iname} {await _where(rt, icfg, folder)}"
        return await _outcome(label, lambda: _upload_folder(rt, icfg, folder))
    assert isinstance(rt, BrokerInstance)
    target = rt.target(flow.name, cfg)
    if getattr(cfg, "topic", None) is not None:
        label = f"target {iname} topic {getattr(target, 'topic', cfg.topic)}"
    else:
        label = f"target {iname} exchange '{cfg.exchange}'" if cfg.exchange else f"target {iname} default exchange"
    return await _probe_target(label, target)


async def _probe_target(label: str, target: Target) -> tuple[bool, str]:
    try:
        return await _outcome(label, target.probe if isinstance(target, Probes) else None)
    finally:
        with contextlib.suppress(Exception):
            await target.close()


# -- file instances: only their FileSystem methods, and resolve() where an instance has it ----------
async def _where(fs: FileSystem, icfg: InstanceConfig, rel: str) -> str:
    """The absolute folder a relative path lands in: the instance's own answer when it can give one
    (a missing folder resolved through its existing root), else the configured root joined."""
    if isinstance(fs, Resolves):
        for base, tail in ((rel, ""), ("", rel)):
            try:
                found = await fs.resolve(base)
                return posixpath.join(found, tail) if tail else found
            except Exception:
                continue  # a folder that cannot be resolved is reported by the probe
    root = str(getattr(icfg, "root", "") or "")
    if not root:
        return f"'{rel}'"
    return posixpath.join(root, rel) if rel else root


async def _file_source(fs: FileSystem, icfg: InstanceConfig, cfg: FileSourceConfig) -> str:
    """The exact file is there, or the folder exists and lists (its files counted up to COUNT_LIMIT)."""
    rel = cfg.path.strip("/")
    if rel:
        single = await fs.stat(rel)
        if single is not None:
            match = "" if cfg.matches(single.name) else " (its name does not match the flow's pattern)"
            return f"file is there ({single.size:,} bytes){match}"
    if not await fs.is_dir(rel):
        if getattr(icfg, "create", False):
            return "folder does not exist; created at the first poll (create: true)"
        raise NotFound("no such folder or file", path=rel or "/")
    files = matching = 0
    select = Selection(cfg)
    select.clock = time.time()
    into = select.descend(rel)  # the folders the flow leaves out are not listed here either
    listed = fs.list(rel, cfg.recursive) if into is None else fs.list(rel, cfg.recursive, descend=into)
    async with contextlib.aclosing(listed) as listing:  # type: ignore[type-var]
        async for f in listing:
            if f.refused:
                continue  # a symlink or special file: the flow reports it, and never takes it
            files += 1
            matching += cfg.matches(f.name) and select.selects(rel, f)
            if files >= COUNT_LIMIT:
                break
    more = "+" if files >= COUNT_LIMIT else ""
    return f"folder exists, listed: {files}{more} file{'' if files == 1 else 's'}, {matching}{more} matching"


async def _upload_folder(fs: FileSystem, icfg: InstanceConfig, folder: str) -> str:
    """The upload folder exists, or its nearest existing ancestor does (uploads create the rest)."""
    if icfg.type == "local":
        from conveyor.targets.folders import writable_folder

        root = Path(str(getattr(icfg, "root", "")))
        return await asyncio.to_thread(writable_folder, root / folder if folder else root)
    unchecked = f"write access is not checked: {icfg.type} cannot tell without writing"
    existing = folder
    while not await fs.is_dir(existing):
        if existing and await fs.stat(existing) is not None:
            raise Permanent(f"'{existing}' is a file, not a folder", path=folder)
        if not existing:
            raise NotFound("the instance root does not exist", path="/")
        existing = posixpath.dirname(existing)
    if existing == folder:
        return f"folder exists ({unchecked})"
    under = f"'{existing}'" if existing else "the instance root"
    return f"folder does not exist; created under {under} at the first upload ({unchecked})"
