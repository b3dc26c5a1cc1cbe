"""The ``http`` target: one POST per payload."""

from conveyor.registry import TargetSpec, register_target
from conveyor.targets.http.config import HttpTargetConfig

# ``timeout`` is the target's own inactivity limit: a long upload that keeps moving is not cut off.
register_target(
    TargetSpec(type="http", model=HttpTargetConfig, factory="conveyor.targets.http.target:create", own_timeout=True)
)
