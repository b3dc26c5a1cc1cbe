"""``conveyor status``, ``conveyor ledger`` and ``conveyor poll``: clients of a running daemon's health endpoint.

The URL is ``--url``, else ``health.listen`` of the config (``-c``, or the default config
when it exists), else ``http://127.0.0.1:8470``. The ledger calls and polls need the daemon's bearer
token; it is taken from ``$CONVEYOR_TOKEN``, else from the config: ``health.token``, or the
file the daemon made beside its state database (never from the command line, where ``ps``
would show it). With ``--url`` and no ``-c`` only ``$CONVEYOR_TOKEN`` is sent: a token read
from a local config does not go to an address that config does not name.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conveyor.config_path import default_config
from conveyor.netloc import hostport

DEFAULT_URL = "http://127.0.0.1:8470"
TIMEOUT = 10.0
UNIT_STATE_DIRECTORY = "/var/lib/conveyor"
"""The state folder and working directory of the shipped systemd unit, where the CLI also
looks for the token file (its own shell has no $STATE_DIRECTORY)."""


class RemoteError(Exception):
    """The daemon could not be reached or answered with an error."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def _raw_config(path: Path) -> dict[str, Any] | None:
    """A config as parsed, not validated (its secrets may be unreadable for the operator
    running the CLI)."""
    from conveyor.config.parse import parse_file

    data, _lines, _problems = parse_file(path)
    return data if isinstance(data, dict) else None


def _resolve(value: str, path: tuple[str, ...]) -> tuple[str | None, str | None]:
    """``${...}`` references in one config string: (value, None) or (None, the problem)."""
    from conveyor.config.interpolate import Interpolator

    interp = Interpolator()
    resolved = interp.resolve(value, path)
    return (None, interp.problems[0][1]) if interp.problems else (resolved, None)


def _listen_from_config(path: Path) -> str | None:
    """``health.listen`` of a config."""
    data = _raw_config(path)
    if data is None:
        return None
    health = data.get("health")
    if not isinstance(health, dict):
        return "127.0.0.1:8470"  # the default of health.listen
    listen = health.get("listen", "127.0.0.1:8470")
    if not isinstance(listen, str):
        return None
    return _resolve(listen, ("health", "listen"))[0]


def _config_of(args: argparse.Namespace) -> Path | None:
    """``-c``, else the default config when it exists."""
    path = getattr(args, "config", None)
    if path is None:
        candidate = default_config()
        path = candidate if candidate.exists() else None
    return Path(path) if path is not None else None


def base_url(args: argparse.Namespace) -> str:
    """The daemon's health endpoint URL for these arguments."""
    if getattr(args, "url", None):
        url: str = args.url
        return (url if "://" in url else "http://" + url).rstrip("/")
    path = _config_of(args)
    if path is not None:
        listen = _listen_from_config(path)
        if listen:
            host, _, port = listen.rpartition(":")
            host = host.strip("[]")
            # A wildcard listener is reached over loopback.
            host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
            return f"http://{hostport(host, port)}"
    return DEFAULT_URL


@dataclass(frozen=True)
class Token:
    """The bearer token the CLI sends (None: none found) and, for a refusal, what to do."""

    value: str | None
    hint: str


def find_token(args: argparse.Namespace) -> Token:
    """The token for the ledger calls of these arguments (see the module's docstring)."""
    from conveyor.health_auth import TokenFileError, read_token, token_path

    env = os.environ.get("CONVEYOR_TOKEN", "").strip()
    if env:
        return Token(env, "$CONVEYOR_TOKEN is not the daemon's token")
    if getattr(args, "url", None) and getattr(args, "config", None) is None:
        return Token(None, "with --url, give -c CONFIG too (the token is read from it), or set CONVEYOR_TOKEN")
    path = _config_of(args)
    data = _raw_config(path) if path is not None else None
    if path is None or data is None:
        return Token(None, "give -c CONFIG (the token is read from beside its state database), or set CONVEYOR_TOKEN")
    health = data.get("health")
    raw = health.get("token") if isinstance(health, dict) else None
    if raw is not None:
        value, problem = _resolve(str(raw), ("health", "token"))
        if value is None:
            return Token(None, f"health.token of {path} cannot be read here ({problem}); set CONVEYOR_TOKEN")
        return Token(value.strip(), f"health.token of {path} is not the token of the daemon at this address")
    state = data.get("state")
    if state is not None:
        state, problem = _resolve(str(state), ("state",))
        if state is None:
            return Token(None, f"state of {path} cannot be read here ({problem}); set CONVEYOR_TOKEN")
    # Where the daemon made it: in this shell's context, else in the shipped unit's.
    here = token_path(state)
    unit = token_path(state, {"STATE_DIRECTORY": UNIT_STATE_DIRECTORY}, Path(UNIT_STATE_DIRECTORY))
    for candidate in dict.fromkeys((here, unit)):
        try:
            token = read_token(candidate)
        except FileNotFoundError:
            continue
        except TokenFileError as e:
            return Token(None, f"{e}; run as the daemon's user (or root), or set CONVEYOR_TOKEN")
        return Token(token, f"the token in {candidate} is not the token of the daemon at this address")
    relative = state is not None and "://" not in state and not Path(state).is_absolute()
    where = "run from the daemon's working folder (state is a relative path)" if relative else "run as the daemon runs"
    return Token(None, f"no token file at {here}: {where}, or set CONVEYOR_TOKEN")


def request(url: str, method: str = "GET", token: str | None = None) -> Any:
    """One JSON request; raises RemoteError with the daemon's own message on HTTP errors."""
    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    # No body: a POST with data would be sent as a form, which the daemon refuses.
    req = urllib.request.Request(url, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
            return json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as e:
        body = e.read()
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        if isinstance(doc, dict) and "error" in doc:
            raise RemoteError(f"HTTP {e.code}: {doc['error']}", e.code) from None
        if isinstance(doc, dict) and e.code == 503:
            return doc  # /readyz-style answers carry a document
        raise RemoteError(f"HTTP {e.code} {e.reason}", e.code) from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise RemoteError(f"cannot reach the daemon at {url}: {reason}") from None


def _clean(v: Any) -> str:
    if v is None or v == "":
        return "-"
    s = str(v)
    # File names come from remote servers: never let one drive the terminal.
    return s if s.isprintable() else repr(s)


def table(headers: list[str], rows: list[list[Any]], widths: dict[int, int] | None = None) -> str:
    """A plain left-aligned text table; columns in ``widths`` are cut to that many characters."""
    cells = [[_clean(c) for c in r] for r in rows]
    for i, w in (widths or {}).items():
        for r in cells:
            if len(r[i]) > w:
                r[i] = r[i][: w - 1] + "…"
    size = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(size[i]) for i, h in enumerate(headers)).rstrip()]
    lines += ["  ".join(c.ljust(size[i]) for i, c in enumerate(r)).rstrip() for r in cells]
    return "\n".join(lines)


def render_status(doc: dict[str, Any]) -> str:
    """The /status document as text."""
    out = [
        f"conveyor {doc.get('version', '?')}  replica {doc.get('replica', '?')}  config {doc.get('config', '?')}"
        f"  started {doc.get('started', '?')}",
        f"ready: {'yes' if doc.get('ready') else 'NO'}   healthy: {'yes' if doc.get('healthy') else 'NO'}",
        "",
    ]
    inst = doc.get("instances") or {}
    out.append(
        table(
            ["INSTANCE", "TYPE", "STATE", "SINCE", "ADDRESS", "LAST ERROR"],
            [
                [n, i.get("type"), i.get("state"), i.get("since"), i.get("address"), i.get("last_error")]
                for n, i in sorted(inst.items())
            ],
            {5: 70},
        )
    )
    out.append("")
    flows = doc.get("flows") or {}
    out.append(
        table(
            ["FLOW", "STATE", "DELIVERED", "FAILED", "IN FLIGHT", "BYTES", "LAST DELIVERY", "LAST ERROR"],
            [
                [
                    n,
                    f.get("state"),
                    f.get("delivered"),
                    f.get("failed"),
                    f.get("in_flight"),
                    f.get("bytes"),
                    f.get("last_delivery"),
                    f.get("last_error"),
                ]
                for n, f in sorted(flows.items())
            ],
            {7: 60},
        )
    )
    fanned = [(n, f) for n, f in sorted(flows.items()) if f.get("targets")]
    if fanned:
        out += ["", "targets:"]
        rows = [
            [
                n,
                t,
                ts.get("delivered"),
                ts.get("failed"),
                ts.get("retried"),
                ts.get("last_delivery"),
                ts.get("last_error"),
            ]
            for n, f in fanned
            for t, ts in sorted(f["targets"].items())
        ]
        rows += [[n, "(no target)", f.get("no_target"), "", "", "", ""] for n, f in fanned if f.get("no_target")]
        out.append(
            table(["FLOW", "TARGET", "DELIVERED", "FAILED", "RETRIED", "LAST DELIVERY", "LAST ERROR"], rows, {6: 60})
        )
    reasons = doc.get("not_ready") or {}
    if reasons:
        out += ["", "not ready:"]
        if "daemon" in reasons:
            out.append(f"  daemon: {_clean(reasons['daemon'])}")
        for kind in ("flows", "instances"):
            for name, why in sorted((reasons.get(kind) or {}).items()):
                out.append(f"  {kind[:-1]} {_clean(name)}: {_clean(why)}")
    late = [
        (n, f["expectation"]) for n, f in sorted(flows.items()) if (f.get("expectation") or {}).get("state") == "missed"
    ]
    if late:
        out += ["", "expected files missed:"]
        out += [
            f"  {_clean(n)}: {_clean(e.get('arrived'))} of {_clean(e.get('min_files'))} by {_clean(e.get('deadline'))}"
            for n, e in late
        ]
    warnings = doc.get("warnings") or []
    if warnings:
        out += ["", "weak transport:"] + [f"  {_clean(w)}" for w in warnings]
    return "\n".join(out)


def _when(t: Any) -> str:
    if not isinstance(t, (int, float)):
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t)) + "Z"


def _targets(item: dict[str, Any]) -> str:
    """An item's targets as ``name=state`` pairs, or ``no target``."""
    if item.get("no_target"):
        return "no target"
    targets = item.get("targets") or {}
    return " ".join(f"{n}={t.get('state')}" for n, t in sorted(targets.items())) if targets else "-"


def render_items(doc: dict[str, Any]) -> str:
    """A ledger page as text."""
    items = doc.get("items") or []
    rows = [
        [
            i.get("id"),
            i.get("state"),
            i.get("attempts"),
            _when(i.get("updated")),
            i.get("name") or i.get("path"),
            i.get("last_error"),
        ]
        for i in items
    ]
    headers = ["ID", "STATE", "ATTEMPTS", "UPDATED", "NAME", "LAST ERROR"]
    widths = {4: 40, 5: 70}
    if any(i.get("targets") or i.get("no_target") for i in items):
        # A flow with a targets: list: where each item is, target by target.
        for row, i in zip(rows, items, strict=True):
            row.insert(5, _targets(i))
        headers.insert(5, "TARGETS")
        widths = {4: 40, 5: 50, 6: 70}
    text = table(headers, rows, widths)
    return text + f"\n{len(items)} items" + (" (more with --limit)" if len(items) >= doc.get("limit", 1 << 30) else "")


def status_main(args: argparse.Namespace) -> int:
    """``conveyor status``: 0 when the daemon answered, 1 when it could not be reached."""
    url = base_url(args)
    try:
        doc = request(url + "/status")
    except RemoteError as e:
        print(f"conveyor status: {e}", file=sys.stderr)
        return 1
    print(render_status(doc))
    return 0


def ledger_main(args: argparse.Namespace) -> int:
    """``conveyor ledger FLOW [--state S] [--retry ID] [--forget ID]``."""
    url = base_url(args)
    flow = urllib.parse.quote(args.flow, safe="")
    token = find_token(args)
    try:
        if args.retry or args.forget:
            action, pid = ("retry", args.retry) if args.retry else ("forget", args.forget)
            doc = request(f"{url}/flows/{flow}/items/{urllib.parse.quote(pid, safe='')}/{action}", "POST", token.value)
            item = doc.get("item") if isinstance(doc, dict) else None
            if action == "retry":
                print(f"{pid}: {item.get('state') if item else 'pending'}, will be delivered again")
            else:
                print(f"{pid}: forgotten; the source will offer it again if it is still there")
            return 0
        query = {"limit": str(args.limit)}
        if args.state:
            query["state"] = args.state
        doc = request(f"{url}/flows/{flow}/items?{urllib.parse.urlencode(query)}", token=token.value)
    except RemoteError as e:
        if e.status == 401:  # one line: what the daemon missed, and what to do about it here
            print(f"conveyor ledger: the daemon wants its API token: {token.hint}", file=sys.stderr)
        else:
            print(f"conveyor ledger: {e}", file=sys.stderr)
        return 1
    print(render_items(doc))
    return 0


def poll_main(args: argparse.Namespace) -> int:
    """``conveyor poll FLOW``: the flow's file source lists now; 0 when the daemon took the request."""
    url = base_url(args)
    flow = urllib.parse.quote(args.flow, safe="")
    token = find_token(args)
    try:
        request(f"{url}/flows/{flow}/poll", "POST", token.value)
    except RemoteError as e:
        if e.status == 401:
            print(f"conveyor poll: the daemon wants its API token: {token.hint}", file=sys.stderr)
        else:
            print(f"conveyor poll: {e}", file=sys.stderr)
        return 1
    print(f"{_clean(args.flow)}: poll requested; the source lists its folder now")
    return 0
