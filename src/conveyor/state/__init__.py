"""The state store: what conveyor remembers between restarts."""

from conveyor.state.base import Item, StateStore, open_store

__all__ = ["Item", "StateStore", "open_store"]
