"""The connector registry: each instance type names its config models and a lazily imported factory.

Connector config modules are light (pydantic only) and register themselves on import; the
runtime module named by ``factory`` is imported only when a config uses that type, so a
config without Pub/Sub never pays for importing google-cloud.
"""

from __future__ import annotations

import builtins
import importlib
from dataclasses import dataclass
from typing import Any, Literal

from conveyor.config.base import InstanceConfig, SourceConfig

_REGISTRY: dict[str, ConnectorSpec] = {}


@dataclass(frozen=True)
class ConnectorSpec:
    """How one instance type plugs into conveyor."""

    type: str
    kind: Literal["file", "message"]
    instance_model: builtins.type[InstanceConfig]
    source_model: builtins.type[SourceConfig] | None
    target_model: builtins.type[Any] | None
    factory: str
    """``module:callable``; the callable takes (name, config, context) and returns the runtime instance."""

    def load_factory(self) -> Any:
        """Import and return the runtime factory."""
        module, _, attr = self.factory.partition(":")
        return getattr(importlib.import_module(module), attr)


def register(spec: ConnectorSpec) -> ConnectorSpec:
    """Add a connector type; called at import time by each connector's config module."""
    _REGISTRY[spec.type] = spec
    return spec


def get(type_name: str) -> ConnectorSpec:
    """The spec for an instance type."""
    return _REGISTRY[type_name]


def all_specs() -> dict[str, ConnectorSpec]:
    """Every registered connector, loading the built-in ones first."""
    import conveyor.connectors  # noqa: F401  (registers the built-in connector types)

    return dict(_REGISTRY)
