"""Config: schema, loading, interpolation."""

from conveyor.config.loader import load_config
from conveyor.config.schema import Config, Flow

__all__ = ["Config", "Flow", "load_config"]
