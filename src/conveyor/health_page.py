"""The status page at ``GET /`` of the health server: instances, flows and the ledger on one page.

Rendered on the server (no build step); a small script refreshes the sections every few seconds
and the page still reads without it. Anyone who may read ``/status`` sees the instances and the
flows' counters; item names and the Retry and Forget buttons need a sign-in with the API token,
which gives a session cookie (``HttpOnly``, ``SameSite=Strict``; ``Secure`` over HTTPS) and a
CSRF token that every form carries. Everything shown is escaped: item names come from whoever
put the file there or published the message.
"""

from __future__ import annotations

import base64
import calendar
import collections
import functools
import hashlib
import hmac
import html
import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlencode

from aiohttp import web

from conveyor.health_app import DAEMON_KEY, DaemonLoop, DaemonView
from conveyor.health_ledger import STATES
from conveyor.redact import redact
from conveyor.throughput import SAMPLE_EVERY, Throughput

if TYPE_CHECKING:
    from conveyor.state.base import Item

SESSION_COOKIE = "conveyor_session"
SIGN_IN_COOKIE = "conveyor_sign_in"
"""Holds the sign-in form's CSRF token until the sign-in (the form carries the same value)."""
SESSION_SECONDS = 12 * 3600
MAX_SESSIONS = 256
"""Signed-in browsers remembered at once; the oldest session ends first."""
LEDGER_ROWS = 50
POLL_MS = 2000
FLASH_SECONDS = 15.0


class PageServer(DaemonLoop, Protocol):
    """What the page needs of the health server."""

    throughput: Throughput

    def status_doc(self) -> dict[str, Any]:
        """The /status document (call on the daemon loop)."""
        ...

    def api_token(self) -> str:
        """The API token requests must carry now."""
        ...


# -- sessions (on the server thread) ---------------------------------------------------------
@dataclass
class Session:
    """One signed-in browser."""

    csrf: str
    token_hash: bytes
    """The token it signed in with: a changed token ends every session."""
    expires: float
    flash: list[tuple[float, str]] = field(default_factory=list)
    """Outcomes of the last actions and when: shown for ``FLASH_SECONDS``, refreshes included."""


def _hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class Sessions:
    """Signed-in browsers, in memory: a restart signs everyone out."""

    def __init__(self) -> None:
        self._all: collections.OrderedDict[str, Session] = collections.OrderedDict()

    def start(self, token: str) -> tuple[str, Session]:
        """A new session for a browser that gave ``token``."""
        while len(self._all) >= MAX_SESSIONS:
            self._all.popitem(last=False)
        sid = secrets.token_urlsafe(32)
        s = self._all[sid] = Session(secrets.token_urlsafe(32), _hash(token), time.time() + SESSION_SECONDS)
        return sid, s

    def find(self, sid: str | None, token: str) -> Session | None:
        """The live session of that cookie value, if any."""
        s = self._all.get(sid) if sid else None
        if s is None:
            return None
        if s.expires < time.time() or not hmac.compare_digest(s.token_hash, _hash(token)):
            self._all.pop(sid or "", None)
            return None
        return s

    def end(self, sid: str | None) -> None:
        """Sign out."""
        self._all.pop(sid or "", None)


# -- what a view shows -------------------------------------------------------------------------
@dataclass(frozen=True)
class Query:
    """The ledger search: text (id, or part of a name or path), flow, state."""

    text: str = ""
    flow: str = ""
    state: str = ""

    @classmethod
    def of(cls, data: Mapping[str, str], flows: Mapping[str, Any]) -> Query:
        """From a query string or a form; unknown flows and states are dropped."""
        text = (data.get("q") or "").strip()[:200]
        flow = data.get("flow") or ""
        state = data.get("state") or ""
        return cls(text, flow if flow in flows else "", state if state in STATES else "")

    def params(self) -> str:
        """As a query string ('' when empty)."""
        pairs = {k: v for k, v in (("q", self.text), ("flow", self.flow), ("state", self.state)) if v}
        return urlencode(pairs)


async def gather(server: PageServer, daemon: DaemonView, query: Query | None) -> dict[str, Any]:
    """Everything a view shows (run on the daemon loop); ``query`` only when signed in."""
    doc = server.status_doc()
    now = time.time()
    counts = await daemon.store.counts(sorted(doc["flows"]), ["pending", "in_flight", "failed"])
    flows: dict[str, Any] = doc["flows"]
    for name, f in flows.items():
        st = daemon.status.flows.get(name)
        f["rate"] = server.throughput.rate(name, st.delivered, time.monotonic()) if st else None
        f["series"] = server.throughput.series(name)
        f["ledger"] = counts.get(name, {})
        cfg = daemon.config.flows.get(name)
        f["source"] = _describe_source(cfg) if cfg is not None else ""
    doc["now"] = now
    doc["flow_names"] = sorted(daemon.config.flows)
    if query is not None:
        names = [query.flow] if query.flow else sorted(daemon.config.flows)
        doc["items"] = await daemon.store.search(names, query.text or None, query.state or None, LEDGER_ROWS)
    return doc


def _describe_source(flow: Any) -> str:
    """What the flow's config says of when it takes work: its schedule, else its poll interval or queue."""
    src = flow.source
    for key in ("schedule", "expect"):
        value = getattr(flow, key, None) or getattr(src, key, None)
        if value:
            return f"{key}: {value}"
    if getattr(src, "poll_interval", None) is not None:
        return f"polls every {src.poll_interval:g}s"
    for key in ("queue", "subscription"):
        if getattr(src, key, None):
            return f"{key} {getattr(src, key)}"
    return ""


# -- rendering (on the server thread) ------------------------------------------------------------
def e(value: Any) -> str:
    """Escaped text for HTML content and quoted attributes."""
    return html.escape("" if value is None else str(value), quote=True)


@functools.lru_cache(maxsize=1024)
def _epoch(iso: str) -> float:
    # strptime is slow, and a refresh shows the same few hundred times again and again.
    return calendar.timegm(time.strptime(iso, "%Y-%m-%dT%H:%M:%SZ"))


def _ago(iso: str | None, now: float) -> str:
    if not iso:
        return "—"
    secs = max(0, int(now - _epoch(iso)))
    rel = f"{secs}s" if secs < 120 else f"{secs // 60}m" if secs < 7200 else f"{secs // 3600}h"
    return f'<time datetime="{e(iso)}" title="{e(iso)}">{rel} ago</time>'


def _badge(state: str) -> str:
    kind = {
        "up": "ok",
        "running": "ok",
        "done": "ok",
        "delivered": "ok",
        "connecting": "wait",
        "starting": "wait",
        "pending": "wait",
        "in_flight": "wait",
        "backoff": "warn",
        "stopped": "off",
        "disabled": "off",
    }.get(state, "bad")
    return f'<span class="badge {kind}">{e(state.replace("_", " "))}</span>'


def sparkline(series: list[int]) -> str:
    """An inline SVG of deliveries per sample interval (width: one point per interval)."""
    return _sparkline(tuple(series))


@functools.lru_cache(maxsize=512)
def _sparkline(series: tuple[int, ...]) -> str:
    # A flow's series changes once per sample interval, not at each refresh: draw it once.
    if len(series) < 2:
        return '<span class="muted">—</span>'
    top = max(series) or 1
    w, h = 120, 24
    step = w / (len(series) - 1)
    points = " ".join(f"{i * step:.1f},{h - 1 - (v / top) * (h - 2):.1f}" for i, v in enumerate(series))
    label = f"deliveries per {SAMPLE_EVERY:g}s over the last {len(series) * SAMPLE_EVERY / 60:.0f} min (peak {top})"
    return (
        f'<svg class="spark" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="{e(label)}">'
        f'<title>{e(label)}</title><polyline points="{points}"/></svg>'
    )


def render_head(doc: dict[str, Any]) -> str:
    """Readiness, health and weak-setting warnings."""
    parts = [
        '<span class="badge ok">ready</span>' if doc["ready"] else '<span class="badge bad">not ready</span>',
        f"<span>conveyor {e(doc['version'])} · replica {e(doc['replica'])} · "
        f"started {_ago(doc['started'], doc['now'])}</span>",
    ]
    if not doc["healthy"]:
        parts.insert(1, '<span class="badge bad">unhealthy</span>')
    out = f'<p class="summary">{" ".join(parts)}</p>'
    intake = doc["intake"]
    if intake["paused"]:
        out += f'<p class="alert">Intake paused since {e(intake["since"])}: {e(intake["reason"])}</p>'
    if doc["warnings"]:
        items = "".join(f"<li>{e(w)}</li>" for w in doc["warnings"])
        n = len(doc["warnings"])
        out += f'<details class="warnings" open><summary>Weak settings ({n})</summary><ul>{items}</ul></details>'
    return out


def render_instances(doc: dict[str, Any]) -> str:
    """The instances table."""
    rows = []
    for name, i in sorted(doc["instances"].items()):
        error = e(i["last_error"]) if i["last_error"] else '<span class="muted">—</span>'
        if i["last_error"] and i["permanent_error"]:
            error += ' <span class="muted">(permanent: retried after a long backoff)</span>'
        warns = "".join(f'<div class="warn">{e(w)}</div>' for w in i["warnings"])
        rows.append(
            f"<tr><th scope=row>{e(name)}</th><td>{e(i['type'])}</td><td>{e(i['address'])}</td>"
            f"<td>{_badge(i['state'])} <span class=muted>since {_ago(i['since'], doc['now'])}</span></td>"
            f"<td class=err>{error}</td><td class=mono>{e(i.get('identity') or '—')}</td><td>{warns or '—'}</td></tr>"
        )
    if not rows:
        return '<p class="muted">No instance connected yet.</p>'
    return (
        "<table><thead><tr><th>Instance</th><th>Type</th><th>Address</th><th>State</th><th>Last error</th>"
        "<th>Host key / certificate</th><th>Warnings</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
    )


def render_flows(doc: dict[str, Any], signed_in: bool) -> str:
    """The flows table."""
    rows = []
    for name, f in sorted(doc["flows"].items()):
        state = _badge(f["state"])
        if f.get("retry_at"):
            state += f' <span class="muted">until {e(f["retry_at"][11:19])} UTC</span>'
        rate = "—" if f["rate"] is None else f"{f['rate']:.1f}/s"
        ledger = f["ledger"]
        pending = ledger.get("pending", 0)
        if signed_in:
            error = e(f["last_error"]) if f["last_error"] else "—"
        else:
            error = '<span class="muted">sign in to see</span>' if f["last_error"] else "—"
        rows.append(
            f'<tr data-flow="{e(name)}"><th scope=row>{e(name)}</th><td>{state}</td>'
            f'<td class="num delivered">{f["delivered"]:,}</td><td class=num>{f["failed"]:,}</td>'
            f"<td class=num>{rate}</td><td>{sparkline(f['series'])}</td><td class=num>{f['in_flight']:,}</td>"
            f"<td class=num>{pending:,}</td><td class=num>{ledger.get('failed', 0):,}</td>"
            f"<td>{_ago(f['last_delivery'], doc['now'])}</td><td>{e(f['source'])}<br>"
            f"<span class=muted>last poll {_ago(f['last_poll'], doc['now'])}</span></td>"
            f"<td class=err>{error}</td></tr>"
        )
    if not rows:
        return '<p class="muted">No flow is running.</p>'
    return (
        "<table><thead><tr><th>Flow</th><th>State</th><th>Delivered</th><th>Failed</th><th>Rate (1 min)</th>"
        "<th>Last 10 min</th><th>In flight</th><th>Pending</th><th>Failed in ledger</th><th>Last delivery</th>"
        "<th>Schedule</th><th>Last error</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
    )


def render_ledger(doc: dict[str, Any], session: Session | None, query: Query) -> str:
    """The ledger's rows for the query, failed first, with the Retry and Forget buttons."""
    if session is None:
        return '<p class="muted">Sign in with the API token to see the items in the ledger and act on them.</p>'
    items: list[Item] = doc.get("items", [])
    now = time.time()
    session.flash = [(t, m) for t, m in session.flash if now - t < FLASH_SECONDS]
    flash = "".join(f'<p class="note" role="status">{e(m)}</p>' for _, m in session.flash)
    if not items:
        return flash + '<p class="muted">No item matches.</p>'
    back = e(query.params())
    rows = []
    for it in items:
        actions = []
        hidden = (
            f'<input type=hidden name=csrf value="{e(session.csrf)}"><input type=hidden name=flow value="{e(it.flow)}">'
            f'<input type=hidden name=id value="{e(it.id)}"><input type=hidden name=back value="{back}">'
        )
        if it.state == "failed":
            actions.append(f'<form method=post action="/page/retry">{hidden}<button>Retry</button></form>')
        if it.state != "in_flight":
            actions.append(
                f'<form method=post action="/page/forget">{hidden}<button class="quiet">Forget</button></form>'
            )
        updated = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(it.updated))
        rows.append(
            f'<tr class="item {e(it.state)}"><td>{e(it.flow)}</td>'
            f'<td class="mono id" title="{e(it.id)}">{e(it.id[:12])}</td>'
            f'<td class="name">{e(it.name or it.path or "")}</td><td>{_badge(it.state)}</td>'
            f"<td class=num>{it.attempts}</td>"
            f"<td class=nowrap>{updated}Z</td><td class=err>{e(it.last_error) if it.last_error else '—'}</td>"
            f'<td class="actions">{"".join(actions)}</td></tr>'
        )
    return (
        flash + "<table><thead><tr><th>Flow</th><th>Id</th><th>Name</th><th>State</th><th>Attempts</th><th>Updated</th>"
        "<th>Last error</th><th></th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
    )


def render_sections(doc: dict[str, Any], session: Session | None, query: Query) -> dict[str, str]:
    """The live sections by element id (what the script swaps in)."""
    return {
        "head": render_head(doc),
        "instances": render_instances(doc),
        "flows": render_flows(doc, session is not None),
        "ledger": render_ledger(doc, session, query),
    }


STYLE = """
:root{color-scheme:light dark;--bg:#fff;--fg:#1b1f24;--muted:#667;--line:#d9dde3;--ok:#1a7f37;--warn:#9a6700;
--bad:#cf222e;--wait:#0969da;--off:#6e7781;--row:#f6f8fa;--btn:#0969da;--btnfg:#fff}
@media (prefers-color-scheme:dark){:root{--bg:#0d1117;--fg:#e6edf3;--muted:#8b949e;--line:#30363d;--ok:#3fb950;
--warn:#d29922;--bad:#f85149;--wait:#58a6ff;--off:#8b949e;--row:#161b22;--btn:#238636;--btnfg:#fff}}
body{margin:0 auto;max-width:1400px;padding:1rem 1.5rem;background:var(--bg);color:var(--fg);
font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif}
h1{font-size:1.4rem;margin:.2rem 0}h2{font-size:1.1rem;margin:1.4rem 0 .5rem}
header{display:flex;justify-content:space-between;align-items:center;gap:1rem;flex-wrap:wrap}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:.35rem .5rem;border-bottom:1px solid var(--line);vertical-align:top}
thead th{font-weight:600;color:var(--muted);font-size:.85em}tbody tr:nth-child(even){background:var(--row)}
.num{text-align:right;font-variant-numeric:tabular-nums}.mono{font-family:ui-monospace,monospace;font-size:.9em;
word-break:break-all}.muted{color:var(--muted)}.err{max-width:28rem;overflow-wrap:anywhere}
.name{overflow-wrap:anywhere;max-width:24rem}
.badge{display:inline-block;padding:0 .45rem;border-radius:1rem;font-size:.85em;border:1px solid currentColor}
.ok{color:var(--ok)}.warn,.warn *{color:var(--warn)}.bad{color:var(--bad)}.wait{color:var(--wait)}.off{color:var(--off)}
.spark{display:block}.spark polyline{fill:none;stroke:var(--wait);stroke-width:1.5}
.alert{color:var(--bad);font-weight:600}.note{color:var(--ok)}
form{display:inline}input,select,button{font:inherit;padding:.25rem .5rem;border:1px solid var(--line);
border-radius:4px;background:var(--bg);color:var(--fg)}button{background:var(--btn);color:var(--btnfg);
border-color:var(--btn);cursor:pointer}button.quiet{background:transparent;color:var(--fg);border-color:var(--line)}
.actions{white-space:nowrap}.actions form+form{margin-left:.3rem}.id,.nowrap{white-space:nowrap;word-break:normal}
.search{margin:.3rem 0 .6rem;display:flex;gap:.4rem;flex-wrap:wrap}
#live-state{font-size:.85em}
"""

SCRIPT = """
(function(){
  var sections=["head","instances","flows","ledger"], status=document.getElementById("live-state"), tag="", busy=0;
  // No swap right after a click or key press: it could replace the button or form being used.
  ["pointerdown","keydown","submit"].forEach(function(t){
    document.addEventListener(t,function(){busy=Date.now()+POLL_MS;},true);
  });
  function tick(){
    if(document.hidden||Date.now()<busy){return;}
    var headers=tag?{"If-None-Match":tag}:{};
    fetch("/page/live"+location.search,{credentials:"same-origin",cache:"no-store",headers:headers}).then(function(r){
      if(r.status===304){return {};}
      if(!r.ok){throw new Error("HTTP "+r.status);}
      tag=r.headers.get("ETag")||"";
      return r.json();
    }).then(function(doc){
      if(Date.now()<busy){return;}
      sections.forEach(function(id){
        var el=document.getElementById(id);
        if(el&&doc[id]!==undefined&&el.innerHTML!==doc[id]){el.innerHTML=doc[id];}
      });
      status.textContent="live, updated "+new Date().toLocaleTimeString();status.className="muted";
    }).catch(function(err){status.textContent="not updating: "+err.message;status.className="bad";});
  }
  setInterval(tick,POLL_MS);
})();
""".replace("POLL_MS", str(POLL_MS))


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


HEADERS = {
    "Content-Security-Policy": (
        f"default-src 'none'; script-src {_csp_hash(SCRIPT)}; style-src {_csp_hash(STYLE)}; "
        "img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",  # no-referrer would make forms send Origin: null
    "Cache-Control": "no-store",
}


def render_page(
    doc: dict[str, Any], session: Session | None, query: Query, sign_in_csrf: str | None, error: str = ""
) -> str:
    """The whole page."""
    s = render_sections(doc, session, query)
    if session is not None:
        account = (
            f'<form method=post action="/page/sign-out"><input type=hidden name=csrf value="{e(session.csrf)}">'
            '<button class="quiet">Sign out</button></form>'
        )
        flow_opts = "".join(
            f'<option value="{e(n)}"{" selected" if n == query.flow else ""}>{e(n)}</option>' for n in doc["flow_names"]
        )
        state_opts = "".join(
            f'<option value="{st}"{" selected" if st == query.state else ""}>{st.replace("_", " ")}</option>'
            for st in STATES
        )
        search = (
            '<form class="search" method=get action="/" role="search">'
            f'<input type=search name=q value="{e(query.text)}" placeholder="name, path or id" '
            'aria-label="name, path or id">'
            f'<select name=flow aria-label="flow"><option value="">all flows</option>{flow_opts}</select>'
            f'<select name=state aria-label="state"><option value="">any state</option>{state_opts}</select>'
            '<button>Search</button> <a href="/">clear</a></form>'
        )
    else:
        account = (
            f'<form method=post action="/page/sign-in"><input type=hidden name=csrf value="{e(sign_in_csrf or "")}">'
            "<input type=password name=token autocomplete=current-password "
            'placeholder="API token" aria-label="API token" required> <button>Sign in</button></form>'
        )
        search = ""
    error_html = f'<p class="alert" role="alert">{e(error)}</p>' if error else ""
    params = query.params()
    refresh = "/" + ("?" + e(params) if params else "")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<meta name="color-scheme" content="light dark"><title>conveyor status</title><style>{STYLE}</style></head>
<body><header><div><h1>conveyor</h1><div id="head">{s["head"]}</div></div>
<div>{account} <span id="live-state" class="muted">updates every {POLL_MS // 1000}s with JavaScript</span> ·
<a href="{refresh}">refresh</a></div></header>
{error_html}
<h2>Instances</h2><div id="instances">{s["instances"]}</div>
<h2>Flows</h2><div id="flows">{s["flows"]}</div>
<h2 id="ledger-title">Ledger</h2>{search}<div id="ledger">{s["ledger"]}</div>
<script>{SCRIPT}</script></body></html>"""


# -- the routes ------------------------------------------------------------------------------------
class StatusPage:
    """The page's routes; sessions live as long as the server."""

    def __init__(self, server: PageServer) -> None:
        self.server = server
        self.sessions = Sessions()

    def routes(self, app: web.Application) -> None:
        """Register ``/`` and ``/page/…``."""
        app.router.add_get("/", self.page)
        app.router.add_get("/page/live", self.live)
        app.router.add_post("/page/sign-in", self.sign_in)
        app.router.add_post("/page/sign-out", self.sign_out)
        app.router.add_post("/page/retry", self.retry)
        app.router.add_post("/page/forget", self.forget)

    def _session(self, request: web.Request) -> Session | None:
        return self.sessions.find(request.cookies.get(SESSION_COOKIE), self.server.api_token())

    async def _doc(self, request: web.Request, session: Session | None, query: Query) -> dict[str, Any]:
        daemon = request.app[DAEMON_KEY]
        return await self.server.on_daemon_loop(gather(self.server, daemon, query if session else None))

    async def page(self, request: web.Request, *, error: str = "", status: int = 200) -> web.Response:
        """GET /: the whole page."""
        session = self._session(request)
        query = Query.of(request.query, request.app[DAEMON_KEY].config.flows)
        doc = await self._doc(request, session, query)
        sign_in_csrf = None
        if session is None:
            sign_in_csrf = request.cookies.get(SIGN_IN_COOKIE) or secrets.token_urlsafe(32)
        body = redact(render_page(doc, session, query, sign_in_csrf, error))
        response = web.Response(text=body, status=status, content_type="text/html", headers=HEADERS)
        if sign_in_csrf is not None and request.cookies.get(SIGN_IN_COOKIE) != sign_in_csrf:
            self._cookie(request, response, SIGN_IN_COOKIE, sign_in_csrf, 3600)
        return response

    async def live(self, request: web.Request) -> web.Response:
        """GET /page/live: the sections as JSON, for the script's refresh.

        The ETag names each section's content; given back in ``If-None-Match``, the answer leaves
        out the sections the browser has already (``304`` when that is all of them)."""
        session = self._session(request)
        query = Query.of(request.query, request.app[DAEMON_KEY].config.flows)
        doc = await self._doc(request, session, query)
        # Redacted one by one: a section without a URL skips the credentials pattern entirely.
        sections = {k: redact(v) for k, v in render_sections(doc, session, query).items()}
        tags = {k: _tag(v) for k, v in sections.items()}
        etag = '"' + ".".join(tags.values()) + '"'
        have = _tags_given(request.headers.get("If-None-Match", ""), list(tags))
        headers = {"Cache-Control": "no-store", "ETag": etag}
        changed = {k: v for k, v in sections.items() if have.get(k) != tags[k]}
        if not changed:
            return web.Response(status=304, headers=headers)
        return web.Response(text=json.dumps(changed), content_type="application/json", headers=headers)

    @staticmethod
    def _cookie(request: web.Request, response: web.StreamResponse, name: str, value: str, max_age: int) -> None:
        response.set_cookie(
            name, value, max_age=max_age, path="/", httponly=True, samesite="Strict", secure=request.secure
        )

    async def sign_in(self, request: web.Request) -> web.StreamResponse:
        """POST /page/sign-in (token, csrf): the session cookie."""
        form = await request.post()
        given, csrf = str(form.get("token") or "").strip(), str(form.get("csrf") or "")
        expected = request.cookies.get(SIGN_IN_COOKIE) or ""
        if not expected or not hmac.compare_digest(csrf.encode(), expected.encode()):
            return await self.page(request, error="The sign-in form expired: try again.", status=403)
        token = self.server.api_token()
        if not given or not hmac.compare_digest(given.encode(), token.encode()):
            return await self.page(request, error="Wrong token.", status=401)
        sid, _ = self.sessions.start(token)
        response = _see_other("/")
        self._cookie(request, response, SESSION_COOKIE, sid, SESSION_SECONDS)
        response.del_cookie(SIGN_IN_COOKIE, path="/")
        return response

    async def _form(self, request: web.Request) -> tuple[Session, Mapping[str, str]]:
        """The session and form of a change; 403 without a session or with a wrong CSRF token."""
        session = self._session(request)
        form = {k: str(v) for k, v in (await request.post()).items()}
        if session is None:
            raise web.HTTPForbidden(text="sign in first", content_type="text/plain")
        if not hmac.compare_digest(form.get("csrf", "").encode(), session.csrf.encode()):
            raise web.HTTPForbidden(text="wrong or missing CSRF token: reload the page", content_type="text/plain")
        return session, form

    async def sign_out(self, request: web.Request) -> web.StreamResponse:
        """POST /page/sign-out."""
        await self._form(request)
        self.sessions.end(request.cookies.get(SESSION_COOKIE))
        response = _see_other("/")
        response.del_cookie(SESSION_COOKIE, path="/")
        return response

    async def retry(self, request: web.Request) -> web.StreamResponse:
        """POST /page/retry (flow, id): a failed item is delivered again."""
        return await self._act(request, "retry")

    async def forget(self, request: web.Request) -> web.StreamResponse:
        """POST /page/forget (flow, id): the ledger forgets an item."""
        return await self._act(request, "forget")

    async def _act(self, request: web.Request, action: str) -> web.StreamResponse:
        from conveyor.health_ledger import apply

        session, form = await self._form(request)
        daemon = request.app[DAEMON_KEY]
        flow, pid = form.get("flow", ""), form.get("id", "")
        if flow not in daemon.config.flows:
            session.flash.append((time.time(), f"No flow named {flow}."))
        else:
            code, doc = await self.server.on_daemon_loop(apply(daemon, flow, pid, action))
            if code == 200:
                item = doc.get("item") or {}
                done = "will be delivered again" if action == "retry" else "was forgotten"
                session.flash.append((time.time(), f"{item.get('name') or pid} {done}."))
            else:
                session.flash.append((time.time(), str(doc.get("error", code))))
        back = Query.of(dict(_parse_qs(form.get("back", ""))), daemon.config.flows).params()
        raise web.HTTPSeeOther("/" + ("?" + back if back else "") + "#ledger-title")


def _tag(text: str) -> str:
    """A short name of a section's content."""
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def _tags_given(header: str, names: list[str]) -> dict[str, str]:
    """The section tags of an ``If-None-Match`` this page's ETag came back in ({} for any other)."""
    parts = header.strip().removeprefix("W/").strip('"').split(".")
    if len(parts) != len(names):
        return {}
    return dict(zip(names, parts, strict=True))


def _see_other(location: str) -> web.Response:
    """A 303 to ``location`` (a response, so cookies can be set on it)."""
    return web.Response(status=303, headers={"Location": location, "Cache-Control": "no-store"})


def _parse_qs(text: str) -> list[tuple[str, str]]:
    from urllib.parse import parse_qsl

    return parse_qsl(text)[:10]


def add_page_routes(app: web.Application, server: PageServer) -> StatusPage:
    """Register the status page on ``app``."""
    page = StatusPage(server)
    page.routes(app)
    return page
