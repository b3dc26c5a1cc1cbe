"""Run a command confined the way systemd/conveyor.service confines conveyor, without systemd.

    python tests/unit_sandbox.py -- python -m conveyor run -c conveyor.yaml

Three of the unit's settings are reproduced, those that decide whether conveyor and its
libraries can work at all (the rest restrict files, devices and identities, which the tests'
own folders and servers stand in for):

- ``SystemCallFilter=`` (every active line, in order) with ``SystemCallErrorNumber=EPERM`` and
  ``NoNewPrivileges=yes``: a seccomp filter loaded through libseccomp, whose groups are expanded
  by ``systemd-analyze syscall-filter`` exactly as systemd expands them;
- ``MemoryDenyWriteExecute=yes``: a second filter, the rules systemd loads for it (no mapping
  both writable and executable, no ``mprotect`` to executable, no executable shared memory);
- ``ProtectProc=invisible`` and ``ProcSubset=pid``: a private mount namespace with /proc mounted
  ``hidepid=invisible,subset=pid``.

Needs root (for the mount namespace), libseccomp and systemd-analyze. Standard library only: it
runs as a script before the command it confines.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import subprocess
import sys
from pathlib import Path

UNIT = Path(__file__).resolve().parents[1] / "systemd" / "conveyor.service"

CLONE_NEWNS = 0x00020000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_PRIVATE = 0x2, 0x4, 0x8, 0x4000, 0x40000
PR_SET_NO_NEW_PRIVS = 38
SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_ACT_ERRNO = 0x00050000
SCMP_CMP_MASKED_EQ = 7
PROT_WRITE, PROT_EXEC, SHM_EXEC = 0x2, 0x4, 0o100000


class ArgCmp(ctypes.Structure):
    """libseccomp's ``struct scmp_arg_cmp``."""

    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


def unit_values(key: str, unit: Path = UNIT) -> list[str]:
    """Values of the active ``key=`` lines of the unit, in order."""
    return [line.split("=", 1)[1].strip() for line in unit.read_text().splitlines() if line.startswith(key + "=")]


def syscall_groups() -> dict[str, list[str]]:
    """Each ``@group`` of this systemd, with its members (system calls and nested groups)."""
    out = subprocess.run(
        ["systemd-analyze", "syscall-filter"], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    groups: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in out.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.strip(), [])
        elif not line.strip() or not line.startswith(" "):
            current = None
        elif current is not None and not line.strip().startswith("#"):
            current.append(line.strip())
    return groups


def expand(names: list[str], groups: dict[str, list[str]]) -> set[str]:
    """System calls named by ``names``, groups expanded recursively."""
    calls: set[str] = set()
    for name in names:
        if name.startswith("@"):
            calls |= expand(groups[name], groups)
        else:
            calls.add(name)
    return calls


def allowed_calls(filter_lines: list[str], groups: dict[str, list[str]]) -> set[str]:
    """What the unit's ``SystemCallFilter=`` lines allow: the first line must be an allow list
    (as the unit's is); each later line adds to it, or takes away when it starts with ``~``."""
    if not filter_lines or filter_lines[0].startswith("~"):
        raise SystemExit("unit_sandbox: the unit's first SystemCallFilter= line is not an allow list")
    allowed: set[str] = set()
    for line in filter_lines:
        deny = line.startswith("~")
        calls = expand(line.removeprefix("~").split(), groups)
        allowed = allowed - calls if deny else allowed | calls
    return allowed


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno() or (-result if result < 0 else errno.EINVAL)
        raise SystemExit(f"unit_sandbox: {what}: {os.strerror(err)}")


def private_proc(libc: ctypes.CDLL) -> None:
    """A mount namespace of this process's own, with /proc as ProtectProc=invisible and ProcSubset=pid show it."""
    _check(libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    _check(libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "making / private")
    _check(
        libc.mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, b"hidepid=invisible,subset=pid"),
        "mounting /proc with subset=pid",
    )


def _libseccomp() -> ctypes.CDLL:
    seccomp = ctypes.CDLL(ctypes.util.find_library("seccomp") or "libseccomp.so.2", use_errno=True)
    seccomp.seccomp_init.restype = ctypes.c_void_p
    seccomp.seccomp_init.argtypes = [ctypes.c_uint32]
    seccomp.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    seccomp.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.POINTER(ArgCmp),
    ]
    seccomp.seccomp_load.argtypes = [ctypes.c_void_p]
    return seccomp


def _rule(seccomp: ctypes.CDLL, ctx: int, action: int, name: str, *cmps: ArgCmp) -> None:
    nr = seccomp.seccomp_syscall_resolve_name(name.encode())
    if nr < 0:
        return  # not a system call of this architecture
    array = (ArgCmp * max(len(cmps), 1))(*cmps)
    _check(seccomp.seccomp_rule_add_array(ctx, action, nr, len(cmps), array), f"a rule for {name}")


def load_filter(libc: ctypes.CDLL, allowed: set[str], error: int, deny_write_execute: bool) -> None:
    """Allow ``allowed`` (names this architecture does not have are skipped, as systemd skips
    them); every other call fails with ``error``. With ``deny_write_execute``, a second filter
    refuses what MemoryDenyWriteExecute= refuses, as systemd's own rules do."""
    seccomp = _libseccomp()
    deny = SCMP_ACT_ERRNO | (error & 0xFFFF)
    filters = []
    ctx = seccomp.seccomp_init(deny)
    for name in sorted(allowed):
        _rule(seccomp, ctx, SCMP_ACT_ALLOW, name)
    filters.append(ctx)
    if deny_write_execute:
        wx = seccomp.seccomp_init(SCMP_ACT_ALLOW)
        both = PROT_WRITE | PROT_EXEC
        _rule(seccomp, wx, deny, "mmap", ArgCmp(2, SCMP_CMP_MASKED_EQ, both, both))
        for name in ("mprotect", "pkey_mprotect"):
            _rule(seccomp, wx, deny, name, ArgCmp(2, SCMP_CMP_MASKED_EQ, PROT_EXEC, PROT_EXEC))
        _rule(seccomp, wx, deny, "shmat", ArgCmp(2, SCMP_CMP_MASKED_EQ, SHM_EXEC, SHM_EXEC))
        filters.append(wx)
    if not all(filters):
        raise SystemExit("unit_sandbox: seccomp_init failed")
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "PR_SET_NO_NEW_PRIVS")
    for f in reversed(filters):  # the allow list last: seccomp() itself is not on it
        _check(seccomp.seccomp_load(f), "seccomp_load")


def main(argv: list[str]) -> None:
    """Confine this process as the unit would, then exec ``argv`` (after ``--``)."""
    if "--" not in argv or argv.index("--") == len(argv) - 1:
        raise SystemExit("usage: unit_sandbox.py -- COMMAND [ARG...]")
    command = argv[argv.index("--") + 1 :]
    allowed = allowed_calls(unit_values("SystemCallFilter"), syscall_groups())
    error = getattr(errno, (unit_values("SystemCallErrorNumber") or ["EPERM"])[-1])
    libc = _libc()
    if unit_values("ProcSubset") == ["pid"]:
        private_proc(libc)
    load_filter(libc, allowed, error, unit_values("MemoryDenyWriteExecute") == ["yes"])
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
