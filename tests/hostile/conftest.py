"""The hostile suite's figures: printed at the end of the session and, when every class ran
completely, written to docs/reliability-hostile.json and the table in docs/reliability.md."""

from __future__ import annotations

from typing import Any


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """One line per session; the data file only after a complete run."""
    from tests.hostile import figures

    s = figures.summary()
    if not s:
        return
    terminalreporter.write_line(figures.line(s))
    if figures.ran_completely():
        figures.write(s)
        terminalreporter.write_line(f"hostile figures written to {figures.DATA.relative_to(figures.REPO)} "
                                    f"and {figures.PAGE.relative_to(figures.REPO)}")
    else:
        terminalreporter.write_line("hostile figures not written: not every class ran completely")
