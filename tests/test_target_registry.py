"""A target type defined and registered by this module alone: the config accepts it, the daemon
runs a flow into it, ``check --connect`` probes it and the config reference lists its options."""

from __future__ import annotations

import asyncio
import runpy
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import Field

from conveyor.config import load_config
from conveyor.config.base import TargetConfig
from conveyor.errors import ConfigError
from conveyor.interfaces import Context
from conveyor.payload import Payload
from conveyor.preflight import preflight
from conveyor.registry import TargetSpec, register_target, target_specs, unregister_target
from tests.harness import running, wait_for, write_config
from tests.servers.ops import local_flow

ROOT = Path(__file__).resolve().parents[1]


class LinesTargetConfig(TargetConfig):
    """Append one line per payload to a file."""

    type: Literal["lines"]
    path: str = Field(description="file the lines are appended to")
    prefix: str = Field("", description="written before each payload's name")


class LinesTarget:
    """Appends ``<prefix><name> <body>`` for each payload; the body read whole (small test files)."""

    def __init__(self, flow: str, config: LinesTargetConfig, context: Context) -> None:
        self.config = config
        self.where = f"lines {config.path}"

    async def deliver(self, payload: Payload) -> None:
        """Append the payload's line."""
        body = payload.body.data() if payload.body.in_memory else Path(str(payload.body.path)).read_bytes()
        line = f"{self.config.prefix}{payload.name} {body.decode()}\n"
        await asyncio.to_thread(self._append, line)

    def _append(self, line: str) -> None:
        with open(self.config.path, "a") as f:
            f.write(line)

    async def probe(self) -> str:
        """What ``check --connect`` shows."""
        return "appends lines"

    async def close(self) -> None:
        """Nothing held open."""


@pytest.fixture
def lines_type() -> Iterator[TargetSpec]:
    spec = register_target(TargetSpec(type="lines", model=LinesTargetConfig, factory=f"{__name__}:LinesTarget"))
    try:
        yield spec
    finally:
        unregister_target("lines")


def lines_config(tmp_path: Path, **target: Any) -> Path:
    inst, flow = local_flow(tmp_path / "box", {"type": "lines", "path": str(tmp_path / "out.txt"), **target})
    return write_config(tmp_path, {"box": inst}, {"f": flow})


async def test_a_flow_delivers_into_a_registered_target_type(tmp_path: Path, lines_type: TargetSpec) -> None:
    cfg = lines_config(tmp_path, prefix="> ")
    out = tmp_path / "out.txt"
    async with running(cfg):
        for name in ("a", "b", "c"):
            (tmp_path / "box" / "in" / name).write_text(f"body-{name}")
        await wait_for(lambda: out.exists() and len(out.read_text().splitlines()) == 3)
    assert sorted(out.read_text().splitlines()) == ["> a body-a", "> b body-b", "> c body-c"]
    assert not list((tmp_path / "box" / "in").iterdir())  # after: delete ran, so each was settled


def test_the_loader_checks_a_registered_type_with_its_own_model(tmp_path: Path, lines_type: TargetSpec) -> None:
    assert load_config(lines_config(tmp_path)).flows["f"].target_kind == "lines"
    with pytest.raises(ConfigError) as bad:
        load_config(lines_config(tmp_path, colour="red"))
    assert "unknown key for a lines target" in str(bad.value)
    assert "flows.f.target.colour" in str(bad.value)
    inst, flow = local_flow(tmp_path / "box", {"type": "line", "path": "x"})
    with pytest.raises(ConfigError) as unknown:
        load_config(write_config(tmp_path, {"box": inst}, {"f": flow}))
    assert "unknown target type 'line' (expected directory, http or lines;" in str(unknown.value)


async def test_check_connect_probes_a_registered_type(tmp_path: Path, lines_type: TargetSpec) -> None:
    lines: list[str] = []
    assert await preflight(load_config(lines_config(tmp_path)), lines.append) == 0
    flow_line = next(line for line in lines if "flow f:" in line)
    assert f"target lines {tmp_path / 'out.txt'}: appends lines" in flow_line


def test_the_config_reference_lists_a_registered_type(lines_type: TargetSpec) -> None:
    script = runpy.run_path(str(ROOT / "scripts" / "docs"), run_name="docs")
    text = script["blocks"]()["config:target:lines"]
    assert "#### target `type: lines`" in text
    assert "| `path` | str | **required** | file the lines are appended to |" in text
    assert "| `prefix` | str | `` | written before each payload's name |" in text


def test_unregistered_types_are_gone_and_instance_is_reserved(lines_type: TargetSpec) -> None:
    assert {"directory", "http", "lines"} <= set(target_specs())
    unregister_target("lines")
    assert "lines" not in target_specs()
    with pytest.raises(ValueError, match="cannot name a target type"):
        register_target(TargetSpec(type="instance", model=LinesTargetConfig, factory=f"{__name__}:LinesTarget"))
