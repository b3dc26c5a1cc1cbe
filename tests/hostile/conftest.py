"""The hostile suite's figures: printed at the end of the session and, when every class ran
completely, recorded for docs/reliability.md (``CONVEYOR_FIGURES=docs/figures``, then ``scripts/docs``)."""

from __future__ import annotations

from typing import Any


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """One line per session; the figures are recorded only after a complete run."""
    from tests.conftest import record_figures
    from tests.hostile import figures

    s = figures.summary()
    if not s:
        return
    terminalreporter.write_line(figures.line(s))
    if figures.ran_completely():
        record_figures("hostile", figures.document(s))
    else:
        terminalreporter.write_line("hostile figures not recorded: not every class ran completely")
