"""``conveyor status`` and ``conveyor ledger``: clients of a running daemon's health endpoint.

The URL is ``--url``, else ``health.listen`` of the config (``-c``, or the default config
when it exists), else ``http://127.0.0.1:8470``. A bearer token for mutating calls from
another host is read from ``$CONVEYOR_TOKEN`` (never from the command line, where ``ps``
would show it).
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
from pathlib import Path
from typing import Any

from conveyor.config_path import default_config
from conveyor.netloc import hostport

DEFAULT_URL = "http://127.0.0.1:8470"
TIMEOUT = 10.0


class RemoteError(Exception):
    """The daemon could not be reached or answered with an error."""


def _listen_from_config(path: Path) -> str | None:
    """``health.listen`` of a config, read without validating the rest (its secrets may be
    unreadable for the operator running the CLI)."""
    from conveyor.config.interpolate import Interpolator
    from conveyor.config.parse import parse_file

    data, _lines, _problems = parse_file(path)
    if not isinstance(data, dict):
        return None
    health = data.get("health")
    if not isinstance(health, dict):
        return "127.0.0.1:8470"  # the default of health.listen
    listen = health.get("listen", "127.0.0.1:8470")
    if not isinstance(listen, str):
        return None
    interp = Interpolator()
    value = interp.resolve(listen, ("health", "listen"))
    return None if interp.problems else value


def base_url(args: argparse.Namespace) -> str:
    """The daemon's health endpoint URL for these arguments."""
    if getattr(args, "url", None):
        url: str = args.url
        return (url if "://" in url else "http://" + url).rstrip("/")
    path = getattr(args, "config", None)
    if path is None:
        candidate = default_config()
        path = candidate if candidate.exists() else None
    if path is not None:
        listen = _listen_from_config(Path(path))
        if listen:
            host, _, port = listen.rpartition(":")
            host = host.strip("[]")
            # A wildcard listener is reached over loopback.
            host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
            return f"http://{hostport(host, port)}"
    return DEFAULT_URL


def request(url: str, method: str = "GET") -> Any:
    """One JSON request; raises RemoteError with the daemon's own message on HTTP errors."""
    headers = {"Accept": "application/json"}
    token = os.environ.get("CONVEYOR_TOKEN")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, method=method, headers=headers, data=b"" if method == "POST" else None)
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
            raise RemoteError(f"HTTP {e.code}: {doc['error']}") from None
        if isinstance(doc, dict) and e.code == 503:
            return doc  # /readyz-style answers carry a document
        raise RemoteError(f"HTTP {e.code} {e.reason}") from None
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
    out = [f"conveyor {doc.get('version', '?')}  replica {doc.get('replica', '?')}  config {doc.get('config', '?')}"
           f"  started {doc.get('started', '?')}",
           f"ready: {'yes' if doc.get('ready') else 'NO'}   healthy: {'yes' if doc.get('healthy') else 'NO'}", ""]
    inst = doc.get("instances") or {}
    out.append(table(["INSTANCE", "TYPE", "STATE", "SINCE", "ADDRESS", "LAST ERROR"],
                     [[n, i.get("type"), i.get("state"), i.get("since"), i.get("address"), i.get("last_error")]
                      for n, i in sorted(inst.items())], {5: 70}))
    out.append("")
    flows = doc.get("flows") or {}
    out.append(table(["FLOW", "STATE", "DELIVERED", "FAILED", "IN FLIGHT", "BYTES", "LAST DELIVERY", "LAST ERROR"],
                     [[n, f.get("state"), f.get("delivered"), f.get("failed"), f.get("in_flight"), f.get("bytes"),
                       f.get("last_delivery"), f.get("last_error")] for n, f in sorted(flows.items())], {7: 60}))
    reasons = doc.get("not_ready") or {}
    if reasons:
        out += ["", "not ready:"]
        if "daemon" in reasons:
            out.append(f"  daemon: {_clean(reasons['daemon'])}")
        for kind in ("flows", "instances"):
            for name, why in sorted((reasons.get(kind) or {}).items()):
                out.append(f"  {kind[:-1]} {_clean(name)}: {_clean(why)}")
    return "\n".join(out)


def _when(t: Any) -> str:
    if not isinstance(t, (int, float)):
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t)) + "Z"


def render_items(doc: dict[str, Any]) -> str:
    """A ledger page as text."""
    items = doc.get("items") or []
    rows = [[i.get("id"), i.get("state"), i.get("attempts"), _when(i.get("updated")), i.get("name") or i.get("path"),
             i.get("last_error")] for i in items]
    text = table(["ID", "STATE", "ATTEMPTS", "UPDATED", "NAME", "LAST ERROR"], rows, {4: 40, 5: 70})
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
    try:
        if args.retry or args.forget:
            action, pid = ("retry", args.retry) if args.retry else ("forget", args.forget)
            doc = request(f"{url}/flows/{flow}/items/{urllib.parse.quote(pid, safe='')}/{action}", "POST")
            item = doc.get("item") if isinstance(doc, dict) else None
            if action == "retry":
                print(f"{pid}: {item.get('state') if item else 'pending'}, will be delivered again")
            else:
                print(f"{pid}: forgotten; the source will offer it again if it is still there")
            return 0
        query = {"limit": str(args.limit)}
        if args.state:
            query["state"] = args.state
        doc = request(f"{url}/flows/{flow}/items?{urllib.parse.urlencode(query)}")
    except RemoteError as e:
        print(f"conveyor ledger: {e}", file=sys.stderr)
        return 1
    print(render_items(doc))
    return 0
