"""Which config file a command reads when none is given (``run``, ``check``, ``status``, ``ledger``)."""

from __future__ import annotations

from pathlib import Path

EXAMPLE = Path("config") / "conveyor.example.yaml"


def default_config() -> Path:
    """``./conveyor.yaml`` when present, else the example shipped in ``config/``."""
    here = Path("conveyor.yaml")
    if here.exists():
        return here
    if EXAMPLE.exists():
        return EXAMPLE
    repo = Path(__file__).resolve().parents[2] / EXAMPLE  # a source checkout, run from elsewhere
    return repo if repo.exists() else here
