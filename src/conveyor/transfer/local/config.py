"""Config of the ``local`` instance type: a folder on this machine."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from conveyor.config.base import FileSourceConfig, FileTargetConfig, InstanceConfig
from conveyor.registry import ConnectorSpec, register


class LocalConfig(InstanceConfig):
    """A folder on this machine, used as a source (an inbox) or a target."""

    type: Literal["local"]
    root: str = Field(description="the folder every path of this instance is relative to")
    create: bool = Field(
        False, description="create the root folder if it is missing (default: a missing root is an error)"
    )

    def describe(self) -> str:
        """The folder."""
        return self.root


register(
    ConnectorSpec(
        type="local",
        kind="file",
        instance_model=LocalConfig,
        source_model=FileSourceConfig,
        target_model=FileTargetConfig,
        factory="conveyor.transfer.local.instance:LocalInstance",
    )
)
