"""The state store: what conveyor remembers between restarts."""

from conveyor.state.base import Item, SharesClaims, StateStore, open_store

__all__ = ["Item", "SharesClaims", "StateStore", "open_store"]
