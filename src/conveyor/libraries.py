"""The libraries a config needs, imported before anything starts.

Connector runtimes and the PostgreSQL store import their client libraries lazily (a config
without Pub/Sub never pays for google-cloud). A missing one must therefore be found when the
config is checked, as one clear line naming the key that needs it, not as a traceback from a
flow's first start. Local files the instances read when they connect (client certificates and
their keys, and the PGP steps' key files) are checked here too, for ``conveyor check``.
"""

from __future__ import annotations

import importlib
import os
import shutil

from conveyor.config import Config
from conveyor.errors import Problem
from conveyor.registry import INSTANCE_KIND, target_specs
from conveyor.registry import get as spec_of
from conveyor.traces import EXTRA, MODULES

FIX = "install conveyor with its dependencies (pip install conveyor; not --no-deps)"


def _why(e: ImportError) -> str:
    missing = e.name or str(e)
    return f"needs the Python module '{missing}', which is not installed: {FIX}"


def unusable_files(config: Config) -> list[Problem]:
    """A problem for each local file an instance needs and cannot use (a client certificate, say)."""
    problems = [
        Problem(f"instances.{name}.{key}", message)
        for name, icfg in config.instances.items()
        for key, message in icfg.file_problems()
    ]
    for fname, flow in config.flows.items():
        for i, step in enumerate(flow.steps):
            for key, path in step.key_files():
                if not os.access(path, os.R_OK) or not os.path.isfile(path):
                    problems.append(Problem(f"flows.{fname}.steps[{i}].{key}", f"cannot read the key file {path}"))
    return problems


def missing_libraries(config: Config) -> list[Problem]:
    """A problem for each instance type, target type and state store whose library cannot be imported."""
    problems: list[Problem] = []
    tried: dict[str, str | None] = {}
    for name, icfg in config.instances.items():
        if icfg.type not in tried:
            try:
                spec_of(icfg.type).load_factory()
                tried[icfg.type] = None
            except ImportError as e:
                tried[icfg.type] = _why(e)
        why = tried[icfg.type]
        if why is not None:
            problems.append(Problem(f"instances.{name}.type", f"the {icfg.type} connector {why}"))
    targets = target_specs()
    for fname, flow in config.flows.items():
        for route in flow.routes:
            spec = targets.get(route.kind) if route.kind != INSTANCE_KIND else None
            if spec is None:
                continue
            try:
                spec.load_factory()
            except ImportError as e:
                problems.append(Problem(f"flows.{fname}.{route.key}.type", f"the {spec.type} target {_why(e)}"))
    pgp = [
        f"flows.{n}.steps[{i}].{s.kind}"
        for n, f in config.flows.items()
        for i, s in enumerate(f.steps)
        if s.kind in ("decrypt", "encrypt")
    ]
    if pgp:
        where = pgp[0]
        try:
            importlib.import_module("gnupg")
        except ImportError as e:
            problems.append(Problem(where, f"PGP steps {_why(e)}"))
        if shutil.which("gpg") is None:
            problems.append(Problem(where, "PGP steps run gpg, which is not installed (Debian: apt install gnupg)"))
    if config.traces is not None:
        try:
            for module in MODULES:
                importlib.import_module(module)
        except ImportError as e:
            missing = e.name or str(e)
            problems.append(
                Problem("traces", f"traces need the Python module '{missing}', which is not installed: {EXTRA}")
            )
    if config.state.startswith(("postgresql://", "postgres://")):
        try:
            importlib.import_module("conveyor.state.postgres")
        except ImportError as e:
            problems.append(Problem("state", f"a PostgreSQL state store {_why(e)}"))
    return problems
