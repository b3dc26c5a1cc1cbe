"""Many flows in one process: ``conveyor run`` with 200 sftp instances of 5 flows each, idle.

Starts a few private OpenSSH sshd listeners on loopback (needs root and openssh-server, like the
tests), with MaxStartups and MaxSessions raised for that many logins, gives every instance a
folder of its own with one sub-folder per flow, and runs the daemon with every flow polling its
empty folder. Then it measures, each against its goal:

- start: from the process start to every flow having listed its folder once (``/status``), and
  the CPU seconds that took
- idle: CPU % of one core and RSS while the flows keep polling (a whole number of intervals)
- connections: the SSH connections each instance opened (``/metrics``) and those open at the
  end (the daemon's established sockets to the listeners), next to ``max_connections``
- delivery: one file dropped into each folder at once; the time until every one of them is in
  its directory target, against one poll interval plus 30 s

The machine is shared: the load average is printed before and after, next to the sshd side's
CPU (its listeners and every session process under them).

    python bench/bench_flows.py [--instances 200] [--flows 5] [--listeners 4] [--poll 30]
                                [--max-connections 2] [--idle-seconds 60]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from common import Daemon, table, wait_until, write_config

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.servers

from tests.servers.ops import free_port
from tests.servers.ssh_keys import make_client_keys
from tests.servers.sshd import Sshd, start_sshd

GOAL_CPU = 10.0
GOAL_RSS_MB = 300.0
GOAL_START = 10.0


def _get(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as r:
        return str(r.read().decode())


def _tree_cpu(pids: list[int]) -> float:
    """User + system CPU seconds of these processes and everything under them (live ones)."""
    children: dict[int, list[int]] = {}
    stats: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            f = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(f[1]), []).append(int(d))
        stats[int(d)] = (int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])) / tick
    total, todo = 0.0, list(pids)
    while todo:
        p = todo.pop()
        total += stats.get(p, 0.0)
        todo.extend(children.get(p, []))
    return total


def _established(pid: int, ports: set[int]) -> int:
    """The process's established TCP connections to one of ``ports`` on loopback."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with_target = os.readlink(fd) if fd.is_symlink() else ""
        if with_target.startswith("socket:["):
            inodes.add(with_target[8:-1])
    n = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        f = line.split()
        if f[3] == "01" and int(f[2].split(":")[1], 16) in ports and f[9] in inodes:
            n += 1
    return n


def _connects(metrics: str) -> dict[str, float]:
    """Successful SSH connects per instance, from /metrics."""
    out: dict[str, float] = {}
    for m in re.finditer(r"conveyor_connect_attempts_total\{([^}]*)\}\s+([\d.e+]+)", metrics):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        if labels.get("outcome") == "ok":
            out[labels["instance"]] = float(m.group(2))
    return out


def _folders(srv: Sshd, n_inst: int, first: int, flows: int) -> None:
    for i in range(first, first + n_inst):
        for k in range(flows):
            d = srv.root / f"i{i:03}" / f"f{k}"
            d.mkdir(parents=True)
            srv.chown(d)
            srv.chown(d.parent)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--instances", type=int, default=200)
    ap.add_argument("--flows", type=int, default=5, help="flows per instance")
    ap.add_argument("--listeners", type=int, default=4, help="sshd processes the instances are spread over")
    ap.add_argument("--poll", type=float, default=30.0, help="poll_interval, seconds")
    ap.add_argument("--max-connections", type=int, default=2)
    ap.add_argument("--idle-seconds", type=float, default=60.0, help="idle measure (a whole number of polls)")
    ap.add_argument("--profile", type=Path, help="run the daemon under cProfile, statistics to this file")
    ap.add_argument("--auth", choices=("password", "key"), default="password", help="how the instances log in")
    a = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="conveyor-bench-flows-"))
    keys = make_client_keys(work / "keys")
    per = -(-a.instances // a.listeners)
    limits = (f"MaxStartups {per * a.max_connections + 10}:30:{per * a.max_connections + 100}", "MaxSessions 10")
    servers: list[Sshd] = []
    daemon: Daemon | None = None
    try:
        for _ in range(a.listeners):
            servers.append(start_sshd(keys, host_key_types=("ed25519",), extra=limits))
        instances: dict[str, Any] = {}
        flows: dict[str, Any] = {}
        out = work / "out"
        for i in range(a.instances):
            srv = servers[i % a.listeners]
            _folders(srv, 1, i, a.flows)
            name = f"i{i:03}"
            login: dict[str, Any] = (
                {"password": None, "private_key_file": str(keys.keys["ed25519"])} if a.auth == "key" else {}
            )
            instances[name] = srv.instance_config(
                root=str(srv.root / name), max_connections=a.max_connections, timeout="20s", **login
            )
            for k in range(a.flows):
                flows[f"{name}-f{k}"] = {
                    "source": {"instance": name, "path": f"f{k}", "poll_interval": f"{a.poll:g}s", "after": "delete"},
                    "target": {"type": "directory", "path": str(out / name / f"f{k}")},
                }
        port = free_port()
        config = write_config(work, instances, flows, health={"listen": f"127.0.0.1:{port}"})
        total: int = a.instances * a.flows
        sshd_pids = [s.proc.pid for s in servers]
        load0 = os.getloadavg()

        # -- start ----------------------------------------------------------------
        s0 = _tree_cpu(sshd_pids)
        daemon = Daemon(config, a.profile)

        def all_polled() -> bool:
            if daemon is None or daemon.proc.poll() is not None:
                raise SystemExit(f"conveyor run exited:\n{(work / 'daemon.log').read_text()[-3000:]}")
            try:
                doc = json.loads(_get(port, "/status"))
            except OSError:
                return False
            polled = [f for f in dict(doc["flows"]).values() if f.get("last_poll")]
            return len(polled) == total

        start_s = wait_until(all_polled, 300, 0.25)
        start_cpu = daemon.cpu_seconds()
        start_sshd_cpu = _tree_cpu(sshd_pids) - s0

        # -- idle -----------------------------------------------------------------
        time.sleep(min(a.poll, 10.0))  # the polls after the first spread as they will stay
        c0, s0, i0 = daemon.cpu_seconds(), _tree_cpu(sshd_pids), time.monotonic()
        time.sleep(a.idle_seconds)
        took = time.monotonic() - i0
        idle_cpu = 100 * (daemon.cpu_seconds() - c0) / took
        idle_sshd = 100 * (_tree_cpu(sshd_pids) - s0) / took
        rss = daemon.status("VmRSS") / 1024
        open_now = _established(daemon.proc.pid, {s.port for s in servers})

        # -- delivery ---------------------------------------------------------------
        d0 = time.monotonic()
        for i in range(a.instances):
            srv = servers[i % a.listeners]
            for k in range(a.flows):
                srv.put(f"i{i:03}/f{k}/drop.bin", os.urandom(1024))
        dropped = time.monotonic() - d0

        def delivered() -> int:
            # the target names each file by its payload id, next to its .meta.json sidecar
            return sum(1 for _ in out.glob("*/*/*.meta.json")) if out.exists() else 0

        try:
            deliver_s = wait_until(lambda: delivered() == total, a.poll * 3 + 120, 0.2)
        except TimeoutError:
            said = (work / "daemon.log").read_text()[-3000:]
            raise SystemExit(f"{delivered()} of {total} delivered; the daemon's log ends:\n{said}") from None
        connects_after = _connects(_get(port, "/metrics"))
        hwm = daemon.status("VmHWM") / 1024  # the deliveries included (a writer thread per target folder)
        threads = len(os.listdir(f"/proc/{daemon.proc.pid}/task"))
        load1 = os.getloadavg()

        worst = max(connects_after.values(), default=0.0)
        deliver_goal = a.poll + 30
        print(
            f"\nconveyor flows bench — {a.instances} sftp instances x {a.flows} flows = {total} flows, "
            f"{a.listeners} OpenSSH sshd listeners on loopback, poll every {a.poll:g}s, "
            f"max_connections {a.max_connections}, {a.auth} logins; "
            f"load avg {load0[0]:.1f} before, {load1[0]:.1f} after; "
            f"{os.cpu_count()} cores"
        )
        rows: list[tuple[str, ...]] = [
            ("measure", "conveyor", "goal", "ratio to goal"),
            ("start to all flows polled, s", f"{start_s:.1f}", f"< {GOAL_START:g}", f"{start_s / GOAL_START:.2f}"),
            ("idle CPU, % of one core", f"{idle_cpu:.2f}", f"< {GOAL_CPU:g}", f"{idle_cpu / GOAL_CPU:.2f}"),
            ("RSS idle, MB", f"{rss:.0f}", f"< {GOAL_RSS_MB:g}", f"{rss / GOAL_RSS_MB:.2f}"),
            ("peak RSS with the deliveries, MB", f"{hwm:.0f}", f"< {GOAL_RSS_MB:g}", f"{hwm / GOAL_RSS_MB:.2f}"),
            (
                "most SSH connects by one instance",
                f"{worst:.0f}",
                f"<= {a.max_connections}",
                f"{worst / a.max_connections:.2f}",
            ),
            (
                f"{total} files delivered after the drop, s",
                f"{deliver_s:.1f}",
                f"< {deliver_goal:g}",
                f"{deliver_s / deliver_goal:.2f}",
            ),
        ]
        print(table(rows))
        print(
            f"start: {start_cpu:.1f} CPU s in conveyor, {start_sshd_cpu:.1f} in sshd; "
            f"idle sshd side {idle_sshd:.2f} % of one core over {took:.0f}s; "
            f"SSH connections open when idle {open_now} ({open_now / a.instances:.2f} per instance); "
            f"dropping the files took {dropped:.1f}s; {threads} threads after the deliveries"
        )
    finally:
        if daemon is not None:
            daemon.stop()
        for srv in servers:
            srv.stop()
            shutil.rmtree(srv.base, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
