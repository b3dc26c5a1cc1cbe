"""The hostile suite's harness: one real ``conveyor run`` process per group of cases, and the checks
every case gets.

A *case* is one misbehaving peer with its own flow, target folder and sentinel folder. A *group*
is the cases that share one daemon (cases that may blow up memory or hang a thread get a group of
their own, so one hole does not hide another). Every group's daemon also runs a healthy local flow.

For every case, after the daemon was stopped:

- **error line**: an item that was not delivered is named (by a token of its own) in a warning or
  error line that names the flow; a case about the whole listing or stream names its folder;
- **escapes**: nothing changed outside the case's target folder (a snapshot of the group's tree
  before and after, symlinks not followed), no private content reached a target, and no file
  carrying the run's marker appeared in ``/``, ``/tmp`` or the daemon's working folder;
- **forged sidecars**: every ``.meta.json`` in the target is a document conveyor wrote about the
  body beside it: valid JSON, the body's SHA-256 and size, and the identity (name or message id)
  of the item that body was sent as; a sidecar whose bytes are a sent body is forged outright;
- **lost**: an item the source let go of (file deleted, message acked) or the ledger holds as
  delivered has its body in the target;
- **crash**: the daemon never exited on its own, answered ``/healthz`` at the end and stopped
  with exit 0 within 30 s; no Python traceback in its output;
- **memory**: its peak RSS (``VmHWM``) stayed under :data:`RSS_LIMIT_MB`;
- **other flows**: the healthy flow delivered a file written after the attacks.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.hostile import figures
from tests.servers.ops import free_port

RSS_LIMIT_MB = 200
"""Peak RSS a daemon may reach under attack."""
RSS_KILL_MB = 700
"""Past this the harness kills the daemon to protect the machine (the case has failed anyway)."""
STOP_TIMEOUT = 30.0
RUN = uuid.uuid4().hex[:6]
MARK = f"hx{RUN}"
"""Every hostile name and id carries this, so a stray file anywhere can be found and attributed."""
PRIVATE = f"PRIVATE-{RUN}-".encode()
"""Content of files a source must never read: found in a target, it is an escape."""


def sha(data: bytes) -> str:
    """Hex SHA-256."""
    return hashlib.sha256(data).hexdigest()


@dataclass
class Sent:
    """One item a hostile peer offers: a file on a server or folder, or a published message."""

    key: str
    """A plain token of this item (part of its name or id) that an error line about it contains."""
    sha256: str
    size: int
    expect: str = "any"
    """``deliver``: it must arrive; ``any``: delivered, or refused with an error line naming it;
    ``never``: refused with an error line naming it (its bytes do not match what was listed);
    ``replaceable``: a decoy that a later item may replace under the target's ``exists: replace``."""
    ident: dict[str, Any] = field(default_factory=dict)
    """What its sidecar must say: {"name": ...}, {"message_id": ...} or {"id": ...}."""
    ledger_id: str | None = None
    path: str | None = None
    """Its path at the source (file sources), to find its ledger row."""
    body: bytes | None = None
    """The bytes, when small (a sidecar equal to a sent body is forged)."""


@dataclass
class Outcome:
    """What one case came to."""

    problems: list[str] = field(default_factory=list)
    escapes: int = 0
    forged: int = 0
    lost: int = 0
    crashed: bool = False
    rss_mb: float = 0.0


class Case:
    """One hostile peer; subclasses set up the flow and the attack. ``name`` is the flow's name."""

    cls = ""
    group = "main"
    deadline = 25.0
    """Seconds the case may take, from the daemon's start, to reach :meth:`done`."""
    listing_tokens: tuple[str, ...] = ()
    """When set, an error line naming the flow and one of these is required (a whole listing or
    stream was refused, not one item)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.sent: list[Sent] = []
        self.planted: dict[str, str] = {}
        """Paths (relative to the target) the attacker put there, with their SHA-256, if regular files."""
        self.outcome = Outcome()
        self.h: Group | None = None
        self.dir = Path()
        self.target = Path()
        self.outside = Path()
        self.volatile: list[Path] = []
        """Paths under the case's folder the flow may change (its source folder)."""
        self.finished_at: float | None = None
        self.notes: list[str] = []
        """Problems found while the case ran (a server's safety cap reached, say)."""

    # -- what subclasses provide --------------------------------------------------------------
    def flow(self) -> dict[str, Any]:
        """The flow's config; the target defaults to a directory target on :attr:`target`."""
        raise NotImplementedError

    async def prepare(self) -> None:
        """Before the daemon starts (files on a server, messages on a queue)."""

    async def attack(self) -> None:
        """While the daemon runs; returns when the attack is over."""

    def done(self) -> bool:
        """Whether the case came to an end: each item delivered or named in an error line."""
        g = self.g
        have = self.bodies()
        for s in self.sent:
            if s.expect == "replaceable" or (s.sha256 in have and s.expect != "never"):
                continue
            if s.expect == "deliver" or not g.error_line(self.name, (s.key,)):
                return False
        return not self.listing_tokens or bool(g.error_line(self.name, self.listing_tokens))

    def completed(self, s: Sent) -> bool:
        """Whether the source let go of ``s`` (deleted it, acked it): then it must be in the target."""
        return False

    async def after_stop(self) -> None:
        """After the daemon stopped (drain queues, say)."""

    def extra(self) -> list[str]:
        """Problems particular to this case."""
        return []

    def extra_escapes(self) -> list[str]:
        """Escapes particular to this case (bytes sent to a host the flow does not name, say)."""
        return []

    # -- helpers --------------------------------------------------------------------------------
    @property
    def g(self) -> Group:
        assert self.h is not None
        return self.h

    def directory(self, **over: Any) -> dict[str, Any]:
        """A directory target on this case's target folder."""
        return {"type": "directory", "path": str(self.target), **over}

    def add(self, key: str, body: bytes, expect: str = "any", **kw: Any) -> Sent:
        """Record an item this case offers."""
        s = Sent(key, sha(body), len(body), expect, body=body if len(body) <= 1 << 20 else None, **kw)
        self.sent.append(s)
        return s

    def bodies(self) -> dict[str, list[Path]]:
        """SHA-256 → paths of every body in the target (sidecars and temp files left out)."""
        return bodies_in(self.target)


def bodies_in(folder: Path) -> dict[str, list[Path]]:
    """SHA-256 → regular files under ``folder`` that are not sidecars or temp files."""
    import stat

    out: dict[str, list[Path]] = {}
    for p in walk(folder):
        if p.name.endswith(".meta.json") or (p.name.startswith(".") and p.name.endswith(".tmp")):
            continue
        with contextlib.suppress(OSError):
            st = os.lstat(p)
            if stat.S_ISREG(st.st_mode):
                key = (str(p), st.st_ino, st.st_size, st.st_mtime_ns)
                digest = _HASHES.get(key)
                if digest is None:
                    digest = _HASHES[key] = hash_file(p)
                out.setdefault(digest, []).append(p)
    return out


_HASHES: dict[tuple[str, int, int, int], str] = {}
"""Digests of bodies already hashed: cases poll their target several times a second."""


def walk(folder: Path) -> Iterable[Path]:
    """Every entry under ``folder`` (symlinks not followed)."""
    if not folder.is_dir() or folder.is_symlink():
        return
    for dirpath, dirs, files in os.walk(folder, followlinks=False):
        for n in dirs + files:
            yield Path(dirpath) / n


def _regular(p: Path) -> bool:
    import stat

    return stat.S_ISREG(os.lstat(p).st_mode)


def hash_file(p: Path) -> str:
    """SHA-256 of a regular file, opened without following a link and without blocking on a FIFO."""
    h = hashlib.sha256()
    fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


# -- the daemon ---------------------------------------------------------------------------------
class Daemon:
    """``conveyor run -c FILE`` in ``cwd``, watched: peak RSS, killed past :data:`RSS_KILL_MB`."""

    def __init__(self, config: Path, cwd: Path, health_port: int) -> None:
        self.config = config
        self.cwd = cwd
        self.health_port = health_port
        self.log_path = cwd / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.peak_kb = 0
        self.killed_for_memory = False
        self._watch = threading.Event()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        """Start it and its memory watch."""
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "conveyor", "run", "-c", str(self.config)],
                cwd=self.cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                start_new_session=True,
            )
        threading.Thread(target=self._watch_memory, daemon=True, name="hostile-rss").start()

    def _watch_memory(self) -> None:
        assert self.proc is not None
        status = Path(f"/proc/{self.proc.pid}/status")
        while not self._watch.is_set() and self.proc.poll() is None:
            try:
                fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
            except OSError:
                return
            hwm = int(fields.get("VmHWM", "0 kB").split()[0])
            self.peak_kb = max(self.peak_kb, hwm)
            if int(fields.get("VmRSS", "0 kB").split()[0]) > RSS_KILL_MB * 1024:
                self.killed_for_memory = True
                self.proc.kill()
                return
            time.sleep(0.02)

    def alive(self) -> bool:
        """Still running."""
        return self.proc is not None and self.proc.poll() is None

    def healthz(self) -> int | None:
        """The status code of GET /healthz, or None when it does not answer within 5 s."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=5) as r:
                return int(r.status)
        except urllib.error.HTTPError as e:
            return int(e.code)
        except OSError:
            return None

    def stop(self) -> int | None:
        """SIGTERM; the exit code, or None when it had to be killed after :data:`STOP_TIMEOUT`."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc: int | None = self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            rc = None
        self._watch.set()
        return rc

    def text(self) -> str:
        """Everything it printed."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass
class LogLine:
    """One line of the daemon's output: its level and everything it says, fields included."""

    level: str
    text: str
    flow: str | None = None
    """The line's ``flow`` field (JSON lines)."""

    def names(self, flow: str) -> bool:
        """Whether the line is about ``flow``: its field, or the name as a whole word in the text."""
        if self.flow is not None:
            return self.flow == flow
        return re.search(rf"(?<![\w.-]){re.escape(flow)}(?![\w.-])", self.text) is not None


def parse_line(raw: str) -> LogLine:
    """One line of the daemon's output."""
    try:
        doc = json.loads(raw)
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        parts = [str(doc.get(k, "")) for k in ("flow", "instance", "payload_id", "msg", "error")]
        flow = doc.get("flow")
        return LogLine(str(doc.get("level", "")), " ".join(parts), str(flow) if flow is not None else None)
    words = raw.split(None, 3)
    return LogLine(words[2] if len(words) > 2 else "", raw)


# -- a group of cases on one daemon ------------------------------------------------------------
class Group:
    """Cases sharing one daemon; :meth:`run` runs them and fills each case's outcome."""

    def __init__(
        self, cls: str, name: str, root: Path, cases: list[Case], instances: dict[str, Any] | None = None, **top: Any
    ) -> None:
        self.cls = cls
        self.name = name
        self.root = root
        self.cases = cases
        self.instances = dict(instances or {})
        self.top = top
        self.daemon: Daemon | None = None
        self.problems: list[str] = []
        """Problems of the whole daemon (crash, memory, the healthy flow): every case gets them."""
        self.crashed = False
        self._log: list[LogLine] = []
        self._log_at = 0
        self._log_tail = b""
        self.started = 0.0
        self.healthy = root / "healthy"
        self.var = root / "var"
        """The daemon's own state folder: its state store, spool and whatever it keeps beside them."""
        self._strays: set[str] = set()

    # -- the log --------------------------------------------------------------------------------
    def lines(self) -> list[LogLine]:
        """The daemon's log so far (what it wrote since the last call is parsed and added)."""
        assert self.daemon is not None
        with contextlib.suppress(FileNotFoundError), open(self.daemon.log_path, "rb") as f:
            f.seek(self._log_at)
            new = f.read()
            self._log_at += len(new)
            *whole, self._log_tail = (self._log_tail + new).split(b"\n")
            self._log += [parse_line(raw.decode(errors="replace")) for raw in whole]
        return self._log

    def error_line(self, flow: str, tokens: Iterable[str]) -> str | None:
        """A warning or error line naming ``flow`` and one of ``tokens``."""
        toks = [t for t in tokens if t]
        for ln in self.lines():
            if (
                ln.level.lower() in ("warning", "error", "critical")
                and any(t in ln.text for t in toks)
                and ln.names(flow)
            ):
                return ln.text
        return None

    def ledger(self, flow: str) -> list[dict[str, Any]]:
        """The flow's ledger rows (SQLite state, read after the daemon stopped)."""
        db = self.var / "state.db"
        if not db.exists():
            return []
        with contextlib.closing(sqlite3.connect(db)) as c:
            c.row_factory = sqlite3.Row
            return [dict(r) for r in c.execute("SELECT * FROM items WHERE flow=?", (flow,))]

    def ledger_seen(self, flow: str, id: str) -> bool:
        """Whether the ledger holds ``id`` of ``flow`` as delivered (readable while the daemon runs)."""
        return any(r["id"] == id and r["state"] == "delivered" for r in self.ledger(flow))

    # -- running --------------------------------------------------------------------------------
    def _config(self) -> Path:
        hin, hout = self.healthy / "in", self.healthy / "out"
        hin.mkdir(parents=True, exist_ok=True)
        flows: dict[str, Any] = {}
        for c in self.cases:
            flows[c.name] = c.flow()
        flows["healthy"] = {
            "source": {
                "instance": "healthy-disk",
                "path": "in",
                "poll_interval": "200ms",
                "min_age": "0s",
                "after": "delete",
            },
            "target": {"type": "directory", "path": str(hout), "filename": "{name}"},
        }
        instances = {**self.instances, "healthy-disk": {"type": "local", "root": str(self.healthy)}}
        doc: dict[str, Any] = {
            "state": str(self.var / "state.db"),
            "spool_dir": str(self.var / "spool"),
            "health": {"listen": f"127.0.0.1:{free_port()}"},
            "log": {"level": "debug", "format": "json"},
            "shutdown_timeout": "10s",
            **self.top,
            "instances": instances,
            "flows": flows,
        }
        path = self.root / "conveyor.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
        return path

    async def _healthy_delivers(self, tag: str, timeout: float) -> bool:
        body = f"healthy {tag} {time.time()}\n".encode()
        (self.healthy / "in" / f"h-{tag}").write_bytes(body)
        out = self.healthy / "out" / f"h-{tag}"
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with contextlib.suppress(OSError):
                if out.read_bytes() == body:
                    return True
            if self.daemon is not None and not self.daemon.alive():
                return False
            await asyncio.sleep(0.1)
        return False

    async def _case(self, c: Case) -> None:
        try:
            await c.attack()
            end = self.started + c.deadline
            while time.monotonic() < end:
                if c.done():
                    c.finished_at = time.monotonic()
                    return
                if self.daemon is not None and not self.daemon.alive():
                    return
                await asyncio.sleep(0.2)
        except Exception as e:  # a bug of the case itself: say so, do not take the group down
            c.notes.append(f"the case's own code failed: {type(e).__name__}: {e}")

    async def run(self) -> None:
        """Set up, start the daemon, attack, stop, judge."""
        self.root.mkdir(parents=True, exist_ok=True)
        for c in self.cases:
            c.h = self
            c.cls = self.cls
            c.dir = self.root / c.name
            c.target = c.dir / "target"
            c.outside = c.dir / "outside"
            c.outside.mkdir(parents=True, exist_ok=True)
            (c.outside / "sentinel.txt").write_bytes(b"must not change\n")
            await c.prepare()
        self.var.mkdir(parents=True, exist_ok=True)
        config = self._config()
        before = snapshot(self.root, self._excluded())
        self._strays = set(strays())
        daemon = self.daemon = Daemon(config, self.root, _health_port(config))
        daemon.start()
        self.started = time.monotonic()
        try:
            if not await self._healthy_delivers("start", 40):
                self.problems.append(
                    "the daemon never delivered the healthy flow's first file (did it start?); "
                    f"its output ends:\n{daemon.text()[-1500:]}"
                )
            await asyncio.gather(*(self._case(c) for c in self.cases))
            await asyncio.sleep(1.0)  # late misbehaviour (a second write, a crash) has a moment to show
            if daemon.alive() and not await self._healthy_delivers("end", 20):
                self.problems.append("the healthy flow stopped delivering during the attacks")
            if daemon.alive():
                code = await asyncio.to_thread(daemon.healthz)
                if code != 200:
                    self.crashed = True
                    self.problems.append(f"/healthz answered {code} at the end")
        finally:
            died = not daemon.alive()
            rc = await asyncio.to_thread(daemon.stop)
        if daemon.killed_for_memory:
            self.crashed = True  # as it would be by the kernel, or by the unit's MemoryMax=
            self.problems.append(f"the daemon passed {RSS_KILL_MB} MB RSS and was killed by the harness")
        elif died:
            self.crashed = True
            self.problems.append(f"the daemon died (exit {rc}); its output ends:\n{daemon.text()[-1500:]}")
        elif rc != 0:
            self.crashed = True
            self.problems.append(
                "the daemon did not stop within 30 s of SIGTERM (killed)"
                if rc is None
                else f"the daemon exited {rc} when stopped"
            )
        rss = daemon.peak_kb / 1024
        if rss >= RSS_LIMIT_MB:
            self.problems.append(f"daemon peak RSS {rss:.0f} MB (VmHWM), limit {RSS_LIMIT_MB} MB")
        if "Traceback (most recent call last)" in daemon.text():
            self.problems.append("a Python traceback in the daemon's output")
        for c in self.cases:
            with contextlib.suppress(Exception):
                await c.after_stop()
        after = snapshot(self.root, self._excluded())
        self._judge(before, after, rss)

    def _excluded(self) -> list[Path]:
        skip = [self.root / n for n in ("var", "daemon.log", "conveyor.yaml", "healthy")]
        for c in self.cases:
            skip += [c.target, *c.volatile]
        return skip

    def _judge(self, before: dict[str, Any], after: dict[str, Any], rss: float) -> None:
        changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
        stray = [p for p in strays() if p not in self._strays]
        private_in = [
            p for folder in [*(c.target for c in self.cases), self.healthy] for p in walk(folder) if _holds_private(p)
        ]
        for c in self.cases:
            o = c.outcome
            o.rss_mb = rss
            o.crashed = self.crashed
            o.problems += self.problems + c.notes
            mine = f"{c.name}/"
            esc = [
                f"changed outside its target: {k}"
                for k in changed
                if k.startswith(mine) or not any(k.startswith(f"{x.name}/") for x in self.cases)
            ]
            esc += [f"private content delivered: {p}" for p in private_in if p.is_relative_to(c.target)]
            esc += [
                f"a file carrying the run's marker appeared outside: {p}"
                for p in stray
                if any(s.key in p for s in c.sent) or not any(s.key in p for x in self.cases for s in x.sent)
            ]
            esc += c.extra_escapes()
            o.escapes = len(esc)
            o.problems += esc
            forged = forged_sidecars(c)
            o.forged = len(forged)
            o.problems += forged
            have = c.bodies()
            delivered_ids = {r["id"] for r in self.ledger(c.name) if r["state"] == "delivered"}
            delivered_paths = {r["path"] for r in self.ledger(c.name) if r["state"] == "delivered"}
            for s in c.sent:
                if s.expect == "replaceable":
                    continue
                if s.sha256 in have:
                    if s.expect == "never":
                        o.problems.append(
                            f"delivered although it must not be (bytes unlike its listing, or a "
                            f"name out of its folder): {s.key!r}"
                        )
                    continue
                in_ledger = (s.ledger_id is not None and s.ledger_id in delivered_ids) or (
                    s.path is not None and s.path in delivered_paths
                )
                if c.completed(s) or in_ledger:
                    o.lost += 1
                    why = "the ledger holds it delivered" if in_ledger else "its source let go of it"
                    o.problems.append(f"lost: {s.key!r} is not in the target, but {why}")
                elif s.expect == "deliver":
                    o.problems.append(f"not delivered: {s.key!r}")
                elif not self.error_line(c.name, (s.key,)):
                    o.problems.append(f"no warning or error line names flow {c.name!r} and item {s.key!r}")
            if c.listing_tokens and not self.error_line(c.name, c.listing_tokens):
                o.problems.append(
                    f"no warning or error line names flow {c.name!r} and {' or '.join(map(repr, c.listing_tokens))}"
                )
            if c.finished_at is None and not self.problems:
                o.problems.append(f"the case did not come to an end within {c.deadline:.0f}s")
            o.problems += c.extra()
            figures.record(self.cls, c.name, self.name, o)
        figures.daemon(self.cls, self.name, crashed=self.crashed, rss_mb=rss)


def _health_port(config: Path) -> int:
    doc = yaml.safe_load(config.read_text())
    return int(doc["health"]["listen"].rsplit(":", 1)[1])


def snapshot(root: Path, excluded: list[Path]) -> dict[str, Any]:
    """Relative path → (kind, size, content hash or link target) of everything under ``root``,
    minus ``excluded`` subtrees; symlinks are recorded, not followed."""
    import stat

    skip = {str(p) for p in excluded}
    out: dict[str, Any] = {}
    for dirpath, dirs, files in os.walk(root, followlinks=False):
        dirs[:] = [d for d in dirs if os.path.join(dirpath, d) not in skip]
        for n in dirs + files:
            p = os.path.join(dirpath, n)
            if p in skip:
                continue
            rel = os.path.relpath(p, root)
            try:
                st = os.lstat(p)
            except OSError:
                continue
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISREG(st.st_mode):
                out[rel] = ("file", st.st_size, hash_file(Path(p)) if st.st_size <= 1 << 22 else st.st_mtime_ns)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir",)
            else:
                out[rel] = ("other", stat.S_IFMT(st.st_mode))
    return out


def strays() -> list[str]:
    """Entries carrying the run's marker in ``/``, ``/tmp``, this process's folder and the home folder."""
    out: list[str] = []
    for folder in {"/", "/tmp", os.getcwd(), os.path.expanduser("~")}:
        with contextlib.suppress(OSError), os.scandir(folder) as it:
            out += [os.path.join(folder, e.name) for e in it if MARK in e.name]
    return out


def _holds_private(p: Path) -> bool:
    try:
        if not _regular(p):
            return False
        with open(p, "rb") as f:
            return PRIVATE in f.read(1 << 20)
    except OSError:
        return False


def forged_sidecars(c: Case) -> list[str]:
    """Every ``.meta.json`` in the case's target that is not conveyor's true word about the body
    beside it (the attacker's own planted files, still as planted, excepted)."""
    by_sha = {s.sha256: s for s in c.sent}
    sent_bodies = {s.body for s in c.sent if s.body is not None}
    out: list[str] = []
    for p in walk(c.target):
        if not p.name.endswith(".meta.json"):
            continue
        rel = str(p.relative_to(c.target))
        try:
            if not _regular(p):
                continue  # a planted FIFO or link: the attacker's, not a sidecar conveyor wrote
            raw = p.read_bytes()
        except OSError:
            continue
        if c.planted.get(rel) == sha(raw):
            continue
        why = _sidecar_wrong(raw, p, by_sha, sent_bodies)
        if why:
            out.append(f"forged sidecar {rel[:80]!r}: {why}")
    return out


def _sidecar_wrong(raw: bytes, p: Path, by_sha: dict[str, Sent], sent_bodies: set[bytes]) -> str | None:
    if raw in sent_bodies:
        return "its bytes are a payload's body"
    try:
        meta = json.loads(raw)
    except ValueError:
        return "not JSON"
    if not isinstance(meta, dict) or not isinstance(meta.get("sha256"), str):
        return "not a metadata document"
    body = p.with_name(p.name[: -len(".meta.json")])
    try:
        if not _regular(body):
            return "the body beside it is not a regular file"
        digest = hash_file(body)
    except OSError:
        return "no body beside it"
    if digest != meta["sha256"] or body.stat().st_size != meta.get("size"):
        return "its sha256/size are not the body's"
    s = by_sha.get(digest)
    if s is None:
        # A private file's true sidecar is an escape (counted as one), not a forgery.
        return None if _holds_private(body) else "the body beside it is nothing that was sent"
    for k, v in s.ident.items():
        got = (meta.get("message") or {}).get("id") if k == "message_id" else meta.get(k)
        if got != v:
            return f"{k} {str(got)[:60]!r} is not the body's ({str(v)[:60]!r})"
    return None


def grouped(cls: str, root: Path, cases: list[Case], **top: Any) -> list[Group]:
    """One group (daemon) per distinct ``Case.group``, in the order first named."""
    names = list(dict.fromkeys(c.group for c in cases))
    return [Group(cls, f"{cls}-{n}", root / n, [c for c in cases if c.group == n], **top) for n in names]


class Results(dict[str, Outcome]):
    """Case name → outcome, shown briefly in a failing test's traceback (each case says its own problems)."""

    def __repr__(self) -> str:
        return f"<outcomes of {len(self)} hostile cases>"


def run_groups(groups: list[Group]) -> dict[str, Outcome]:
    """Run the groups concurrently (each its own daemon); case name → outcome."""

    async def main() -> None:
        await asyncio.gather(*(g.run() for g in groups))

    asyncio.run(main())
    cls = groups[0].cls
    figures.complete(cls, sum(len(g.cases) for g in groups))
    return Results({c.name: c.outcome for g in groups for c in g.cases})


def assert_case(results: dict[str, Outcome], name: str) -> None:
    """Fail with every problem the case found."""
    o = results[name]
    assert not o.problems, f"{name}: " + "\n  ".join(o.problems)


def unique(prefix: str) -> str:
    """A token carrying the run's marker."""
    return f"{MARK}-{prefix}"
