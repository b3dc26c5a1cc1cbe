"""The state store: what conveyor remembers between restarts."""

from conveyor.state.base import Item, SharesClaims, StateStore

__all__ = ["Item", "SharesClaims", "StateStore", "open_store"]


def open_store(url: str, owner: str) -> StateStore:
    """The store for a ``state:`` value: a path (SQLite) or a ``postgresql://`` URL."""
    # A backend is imported only when a config uses it (PostgreSQL pulls in asyncpg).
    if url.startswith(("postgresql://", "postgres://")):
        from conveyor.state.postgres import PostgresStore

        return PostgresStore(url, owner)
    from conveyor.state.sqlite import SqliteStore

    return SqliteStore(url, owner)
