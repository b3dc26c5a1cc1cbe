"""The ``directory`` target: each payload written into a local folder, with a sidecar."""

from conveyor.registry import TargetSpec, register_target
from conveyor.targets.directory.config import DirectoryTargetConfig

register_target(
    TargetSpec(type="directory", model=DirectoryTargetConfig, factory="conveyor.targets.directory.target:create")
)
