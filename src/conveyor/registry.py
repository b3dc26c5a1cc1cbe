"""The connector registry: each instance type and each target type names its config model(s) and
a lazily imported factory.

Connector config modules are light (pydantic only) and register themselves on import; a
config loads only the config modules of the types it names (:func:`get`), and the runtime
module named by ``factory`` is imported only when a config uses that type, so a config without
Pub/Sub never pays for importing google-cloud, nor for building its models. Target types (``target: {type:
...}`` in a flow) are the packages under ``conveyor.targets``, each registering itself when
imported; more can be registered before a config is loaded.
"""

from __future__ import annotations

import builtins
import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # no conveyor module at import time, so that any module may import this one
    from conveyor.config.base import InstanceConfig, SourceConfig, TargetConfig
    from conveyor.interfaces import Context, Instance, Target

InstanceFactory = Callable[[str, "InstanceConfig", "Context"], "Instance"]
"""Makes a live instance from its name, config and the daemon's context."""
TargetFactory = Callable[[str, "TargetConfig", "Context"], "Target"]
"""Makes a flow's target from the flow's name, the target's config and the daemon's context."""

INSTANCE_KIND = "instance"
"""A flow's target kind when it writes to an instance; no target type may take this name."""

_REGISTRY: dict[str, ConnectorSpec] = {}
_TARGETS: dict[str, TargetSpec] = {}


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

    def load_factory(self) -> InstanceFactory:
        """Import and return the runtime factory."""
        factory: InstanceFactory = _load(self.factory)
        return factory


def register(spec: ConnectorSpec) -> ConnectorSpec:
    """Add a connector type; called at import time by each connector's config module."""
    _REGISTRY[spec.type] = spec
    return spec


def get(type_name: str) -> ConnectorSpec:
    """The spec for an instance type, loading only its own config module when it is a built-in
    one (:data:`BUILT_IN_TYPES`); KeyError for a type nobody registered."""
    if type_name not in _REGISTRY and type_name in BUILT_IN_TYPES:
        importlib.import_module(BUILT_IN_TYPES[type_name])
    return _REGISTRY[type_name]


BUILT_IN_TYPES = {
    "ftp": "conveyor.transfer.ftp.config",
    "local": "conveyor.transfer.local.config",
    "pubsub": "conveyor.brokers.pubsub.config",
    "rabbitmq": "conveyor.brokers.rabbitmq.config",
    "sftp": "conveyor.transfer.sftp.config",
}
"""Each built-in instance type's config module, whose import registers the type, so that one
type can be loaded without the others. Loaded by name, like a factory: those modules import the
registry, so it must not import them."""


def all_specs() -> dict[str, ConnectorSpec]:
    """Every registered connector, loading the built-in ones first."""
    for module in BUILT_IN_TYPES.values():
        importlib.import_module(module)
    return dict(_REGISTRY)


def type_names() -> list[str]:
    """Every instance type's name, sorted, without loading any connector."""
    return sorted({*BUILT_IN_TYPES, *_REGISTRY})


@dataclass(frozen=True)
class TargetSpec:
    """How one target type (``target: {type: NAME, ...}``, no instance) plugs into conveyor.

    The runtime object the factory returns implements :class:`conveyor.interfaces.Target`;
    ``check --connect`` also calls its ``probe()`` and shows its ``where``, when it has them
    (:class:`~conveyor.interfaces.Probes`, :class:`~conveyor.interfaces.Located`).
    """

    type: str
    model: builtins.type[TargetConfig]
    """The config model: ``type: Literal[NAME]`` and the target's own keys."""
    factory: str
    """``module:callable``; the callable takes (flow name, config, context) and returns the target."""
    own_timeout: bool = False
    """The target applies its config's ``timeout`` itself (as a limit on inactivity, say), so
    a delivery gets no overall deadline from the deliverer."""

    def load_factory(self) -> TargetFactory:
        """Import and return the runtime factory."""
        factory: TargetFactory = _load(self.factory)
        return factory


def register_target(spec: TargetSpec) -> TargetSpec:
    """Add a target type; called at import time by each target package (or by a test)."""
    if spec.type == INSTANCE_KIND:
        raise ValueError(f"'{INSTANCE_KIND}' cannot name a target type: it means a target on an instance")
    _TARGETS[spec.type] = spec
    return spec


def unregister_target(type_name: str) -> None:
    """Remove a target type registered by :func:`register_target` (a test's own, say)."""
    _TARGETS.pop(type_name, None)


def target_specs() -> dict[str, TargetSpec]:
    """Every registered target type, the built-in ones (the packages under ``conveyor.targets``) first."""
    _import_target_packages()
    return dict(_TARGETS)


@cache
def _import_target_packages() -> None:
    import conveyor.targets

    for found in pkgutil.iter_modules(conveyor.targets.__path__, "conveyor.targets."):
        if found.ispkg:
            importlib.import_module(found.name)


def _load(factory: str) -> Any:
    module, _, attr = factory.partition(":")
    return getattr(importlib.import_module(module), attr)
