"""Imports every built-in connector's config module so each registers its type (the modules
are listed once, in :data:`conveyor.registry.BUILT_IN_TYPES`).

These modules hold pydantic models only; protocol libraries are imported by the
runtime modules, when a config uses them.
"""

from conveyor.registry import all_specs

all_specs()
