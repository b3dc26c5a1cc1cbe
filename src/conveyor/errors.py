"""The one error tree of conveyor.

Connectors map their library's exceptions into this tree at the boundary;
the supervisor and flow runtime decide what to do from the class alone::

    ConveyorError
     ├── Transient            retry soon with backoff (network, timeouts, 5xx, broker restart)
     │    ├── RetryAfter      the far side named a delay (HTTP Retry-After)
     │    └── NoSpace         the spool or target disk is full; intake pauses
     ├── Permanent            retrying will not help until something changes
     │    ├── AuthError       wrong password, key or passphrase
     │    ├── HostKeyError    the server's host key matches nothing configured
     │    ├── NotFound        missing folder, queue, topic or subscription
     │    ├── Rejected        the target refused this payload (HTTP 4xx, unroutable)
     │    └── TooLarge        a file or message is over its configured size limit
     └── ConfigError         the config file is invalid (a list of problems)
"""

from __future__ import annotations

from dataclasses import dataclass


class ConveyorError(Exception):
    """Base of every error conveyor raises; carries the instance and path it concerns."""

    def __init__(self, message: str, *, instance: str | None = None, path: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.instance = instance
        self.path = path

    def __str__(self) -> str:
        where = []
        if self.instance:
            where.append(f"instance '{self.instance}'")
        if self.path:
            where.append(f"path '{self.path}'")
        return f"{', '.join(where)}: {self.message}" if where else self.message


class Transient(ConveyorError):
    """Worth retrying after a backoff: the network, a timeout, a restarting server."""


class RetryAfter(Transient):
    """Transient, and the far side said how long to wait."""

    def __init__(self, message: str, delay: float, **kw: str | None) -> None:
        super().__init__(message, **kw)
        self.delay = delay


class NoSpace(Transient):
    """A disk (spool or target) is full; retried once space returns."""


class Permanent(ConveyorError):
    """Retrying soon will not help: credentials, host keys, missing things, refusals."""


class AuthError(Permanent):
    """Login refused: wrong user, password, private key or passphrase."""


class HostKeyError(Permanent):
    """The server's host key does not match the configured fingerprints or known_hosts."""


class NotFound(Permanent):
    """A folder, file, queue, topic or subscription that must exist does not."""


class Rejected(Permanent):
    """The target refused this one payload; other payloads may still go through."""


class TooLarge(Permanent):
    """A file or message is over its configured size limit (``max_file_size``, ``max_message_size``)."""


@dataclass(frozen=True)
class Problem:
    """One config problem: the dotted key path, the YAML line when known, and what is wrong."""

    path: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = self.path or "(top level)"
        if self.line is not None:
            where += f" (line {self.line})"
        return f"{where}: {self.message}"


class ConfigError(ConveyorError):
    """The config is invalid; ``problems`` lists every problem found, not just the first."""

    def __init__(self, problems: list[Problem], source: str | None = None) -> None:
        self.problems = problems
        self.source = source
        head = f"{source}: " if source else ""
        n = len(problems)
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"{head}{n} problem{'s' if n != 1 else ''} in config\n{lines}")


def describe(e: BaseException) -> str:
    """One line for a log or /status: conveyor's own errors already say what is wrong; anything
    else is named by its type."""
    return str(e) if isinstance(e, ConveyorError) else f"{type(e).__name__}: {e}"
