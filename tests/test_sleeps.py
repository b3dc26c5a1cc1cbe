"""Only the places that own time may sleep: retries wait in the supervisor, nowhere else.

A connector that sleeps to retry hides its failures from the status board and from the
retry counts, and its waits follow no policy; it raises ``Transient``, ``RetryAfter`` or
``Permanent`` instead, and a loop that retries inside one operation calls
``conveyor.supervisor.retrying``.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "conveyor"

ALLOWED = {
    "retry_pause": "the supervisor's one wait before another try, for every retry",
    "Watchdog._check": "the inactivity watchdog's tick",
    "HealthServer._tick": "the health ticker that measures event-loop lag",
    "SystemdNotifier._tick": "the systemd notifier: watchdog pings and status lines",
    "Daemon._housekeeping": "the daemon's hourly ledger pruning",
    "PostgresStore._renew_loop": "the lease heartbeat of a shared state store",
    "FtpPool._keepalive_loop": "the FTP keepalive ticker for idle connections",
    "ExpectationWatcher._tick": "the expected-arrivals clock: waits for deadlines, looks for late files",
}
"""Functions allowed to call asyncio.sleep with a non-zero delay, and why; qualified by class,
not by module, so a file that moves keeps its entry."""


def _sleeps(tree: ast.Module) -> list[tuple[str, int]]:
    """(qualified name of the enclosing function, line) of each asyncio.sleep that waits."""
    modules = {"asyncio"}
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules |= {a.asname or a.name for a in node.names if a.name == "asyncio"}
        elif isinstance(node, ast.ImportFrom) and node.module == "asyncio":
            names |= {a.asname or a.name for a in node.names if a.name == "sleep"}
    found: list[tuple[str, int]] = []

    def visit(node: ast.AST, scope: list[str]) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                visit(child, [*scope, child.name])
                continue
            if isinstance(child, ast.Call) and _is_sleep(child.func, modules, names) and not _yields(child):
                found.append((".".join(s for s in scope if s != "<locals>"), child.lineno))
            visit(child, scope)

    visit(tree, [])
    return found


def _is_sleep(func: ast.expr, modules: set[str], names: set[str]) -> bool:
    if isinstance(func, ast.Attribute) and func.attr == "sleep":
        return isinstance(func.value, ast.Name) and func.value.id in modules
    return isinstance(func, ast.Name) and func.id in names


def _yields(call: ast.Call) -> bool:
    """``asyncio.sleep(0)`` only lets other tasks run: it waits for nothing."""
    return len(call.args) == 1 and isinstance(call.args[0], ast.Constant) and call.args[0].value == 0


def _all_sleeps() -> dict[str, list[str]]:
    where: dict[str, list[str]] = {}
    for path in sorted(SRC.rglob("*.py")):
        for scope, line in _sleeps(ast.parse(path.read_text(), str(path))):
            where.setdefault(scope, []).append(f"{path.relative_to(SRC.parent)}:{line}")
    return where


def test_asyncio_sleep_only_where_time_is_owned() -> None:
    where = _all_sleeps()
    stray = {scope: places for scope, places in where.items() if scope not in ALLOWED}
    assert not stray, (
        "asyncio.sleep outside the places that own time (raise Transient/RetryAfter/Permanent, or "
        f"retry through conveyor.supervisor.retrying): {stray}"
    )


def test_every_allowed_sleep_still_exists() -> None:
    # A renamed or moved ticker must be named here again, so the list says what is true.
    missing = sorted(set(ALLOWED) - set(_all_sleeps()))
    assert not missing, f"allowed to sleep but no longer does (update ALLOWED): {missing}"


def test_the_check_sees_every_spelling() -> None:
    code = (
        "import asyncio\nimport asyncio as aio\nfrom asyncio import sleep as nap\n"
        "class C:\n    async def f(self):\n        await asyncio.sleep(1)\n"
        "        def g():\n            return aio.sleep(2)\n        await nap(3)\n        await asyncio.sleep(0)\n"
    )
    assert _sleeps(ast.parse(code)) == [("C.f", 6), ("C.f.g", 8), ("C.f", 9)]
