"""Value types used across the config: durations, sizes, secrets, `after` actions."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, SecretStr

from conveyor.globs import check_glob

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KiB|MiB|GiB|TiB|KB|MB|GB|TB|k|K|M|G)?\s*$")
_SIZE_UNITS = {
    None: 1,
    "B": 1,
    "KiB": 1024,
    "MiB": 1024**2,
    "GiB": 1024**3,
    "TiB": 1024**4,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "TB": 1000**4,
    "k": 1024,
    "K": 1024,
    "M": 1024**2,
    "G": 1024**3,
}


def parse_duration(value: Any) -> float:
    """Parse ``500ms``, ``10s``, ``5m``, ``1h``, ``1d`` into seconds. A bare number is refused:
    ``timeout: 10`` could mean seconds or milliseconds, and a wrong guess fails only in production."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as '10s'")
    if isinstance(value, (int, float)):
        if value == 0:
            return 0.0
        raise ValueError(f"a duration needs a unit: write '{value}s' (or ms, m, h, d)")
    if not isinstance(value, str):
        raise ValueError("expected a duration such as '10s'")
    m = _DURATION.match(value)
    if not m:
        raise ValueError(f"'{value}' is not a duration: use a number and a unit, e.g. 500ms, 10s, 5m, 1h")
    return float(m.group(1)) * _DURATION_UNITS[m.group(2)]


def parse_size(value: Any) -> int:
    """Parse ``65536``, ``64KiB``, ``16MiB``, ``1GB`` into bytes."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as '16MiB'")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if not isinstance(value, str):
        raise ValueError("expected a size such as '16MiB'")
    m = _SIZE.match(value)
    if not m:
        raise ValueError(f"'{value}' is not a size: use bytes or a unit, e.g. 64KiB, 16MiB, 1GiB")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2)])


def format_size(n: int) -> str:
    """``1073741824`` -> ``1GiB``; the largest binary unit that divides ``n``, bytes otherwise."""
    for unit, size in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= size and n % size == 0:
            return f"{n // size}{unit}"
    return f"{n}B"


@dataclass(frozen=True)
class SpaceFloor:
    """Free space to keep on a file system: a number of bytes, or a percentage of its size."""

    bytes: int = 0
    percent: float = 0.0

    def of(self, total: int) -> int:
        """The floor in bytes on a file system of ``total`` bytes."""
        return int(total * self.percent / 100) if self.percent else self.bytes

    def __str__(self) -> str:
        return f"{self.percent:g}%" if self.percent else format_size(self.bytes)


def parse_space_floor(value: Any) -> SpaceFloor:
    """Parse ``1GiB``, ``500MB``, ``0`` (no floor) or ``5%`` (of the file system's size)."""
    if isinstance(value, SpaceFloor):
        return value
    if isinstance(value, str) and value.strip().endswith("%"):
        try:
            percent = float(value.strip()[:-1])
        except ValueError:
            raise ValueError(f"'{value}' is not a percentage such as 5%") from None
        if not 0 <= percent < 100:
            raise ValueError("a percentage of the disk runs from 0% to below 100%")
        return SpaceFloor(percent=percent)
    return SpaceFloor(bytes=parse_size(value))


Duration = Annotated[float, BeforeValidator(parse_duration), Field(ge=0)]
"""Seconds, written in the config as ``10s``."""
Size = Annotated[int, BeforeValidator(parse_size)]
"""Bytes, written in the config as ``16MiB``."""
FreeSpace = Annotated[SpaceFloor, BeforeValidator(parse_space_floor), PlainSerializer(str, return_type=str)]
"""Free space to keep, written as ``1GiB`` or ``5%``."""
Glob = Annotated[str, AfterValidator(check_glob)]
"""A path glob of a file source's include / exclude (:mod:`conveyor.globs`)."""
Secret = Annotated[SecretStr, PlainSerializer(lambda s: "**********", return_type=str)]
"""A string that never shows in reprs, logs or /status."""


class ConfigModel(BaseModel):
    """Base of every config model: frozen, unknown keys are errors, secrets hidden from repr."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=False, hide_input_in_errors=True)


class MoveAction(ConfigModel):
    """Move the file to another folder (relative to the instance root), created if missing."""

    move: str = Field(description="folder to move the file into, relative to the instance root")


AfterAction = Literal["delete", "keep"] | MoveAction
"""What happens to a source file once it is delivered."""
