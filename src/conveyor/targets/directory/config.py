"""Config model of the ``directory`` target."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from conveyor.config.base import TargetConfig
from conveyor.config.types import Duration


class DirectoryTargetConfig(TargetConfig):
    """Write each payload into a local folder, with a ``.meta.json`` sidecar."""

    type: Literal["directory"]
    path: str = Field(description="folder to write into (created if missing)")
    filename: str = Field("{id}", description="template over {id} {name} {flow} {stem} {ext}")
    sidecar: bool = Field(True, description="write <name>.meta.json beside each body")
    exists: Literal["replace", "fail", "skip"] = Field(
        "replace", description="when a *different* payload already wrote this name (same id always replaces)"
    )
    fsync: bool = Field(True, description="fsync bodies and the folder before reporting delivery")
    timeout: Duration | None = Field(None, description="a delivery taking longer counts as stuck")
