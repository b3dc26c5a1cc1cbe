"""FTP download at WAN latency: conveyor next to curl and lftp ``pget -n 4``, through a delay line.

Starts a private vsftpd (needs root, like the tests) and, for each round trip asked for, delay
lines in one child process (``bench/delayline.py``) on 127.0.0.2: one at the control port and
one at each passive data port (vsftpd announces 127.0.0.2 in PASV), each forwarding to the same
port on 127.0.0.1. So every data channel crosses the same long link as its control connection,
and every client goes through the same lines to the same server and file, round by round:

- curl (one connection, EPSV)
- lftp ``pget -n 4``: four connections, each reading one quarter of the file with REST
- conveyor's ``FtpInstance.download`` into a spool file with the SHA-256 computed,
  ``max_connections: 8``, ``streams`` unset (chosen by size and round trip) and ``streams: 1``

Each client is timed from its start, so its logins are included (conveyor's in a child process,
from connecting to the finished spool body; Python's own start-up is not counted). Ratios are
per round (conveyor / reference of the same round), median over rounds. ``--tls explicit`` runs
the same over FTPS (vsftpd with ``require_ssl_reuse=YES``; curl ``--ssl-reqd``, lftp
``ftp:ssl-force``).

    python bench/bench_wan_ftp.py [--rtt 50 [--rtt 100]] [--size-mib 256] [--rounds 2] [--tls explicit]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.servers
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_wan import MIB
from common import random_file, run_worker
from delayline import model_options

GOALS = {"curl": 2.0, "lftp4": 1.0}
"""The download goals: conveyor at least this many times the reference's rate."""
NAMES = {
    "curl": "curl (one connection)",
    "lftp4": "lftp pget -n 4",
    "conveyor1": "conveyor FtpInstance.download, streams: 1",
    "conveyor": "conveyor FtpInstance.download, streams unset",
}
REFS = {"curl": "curl", "lftp4": "lftp pget -n 4"}
FAR = "127.0.0.2"
"""The address the delay lines listen on: the server as the clients see it."""
PASV_PORTS = 16


async def _worker(config: dict[str, Any], spool_dir: str) -> dict[str, Any]:
    from tests.backends.ftp import ftp_instance

    inst, _, spool = ftp_instance(config, Path(spool_dir))
    try:
        out = await download_from_login(inst, spool, "big.bin")
        rtt = next((c.rtt for c in inst.pool._idle if c.rtt is not None), None)
        return {
            **out,
            "connections": inst.pool.connects,
            "rtt_ms": None if rtt is None else round(rtt * 1000, 1),
        }
    finally:
        await inst.close()


def _detail(r: dict[str, Any]) -> str:
    return f"{r['connections']} connection(s), rtt {r['rtt_ms']} ms"


def main() -> None:
    ap = parser(__doc__ or "", ("config", "spool"))
    ap.add_argument("--tls", choices=("none", "explicit"), default="none")
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(asyncio.run(_worker(json.loads(a.config), a.spool))))
        return

    from tests.servers.ops import free_port
    from tests.servers.pyftpd import make_certs
    from tests.servers.vsftpd import PASSWORD, USER, available, start_vsftpd

    from delayline import delay_ports

    reason = available()
    if reason or not shutil.which("curl") or not shutil.which("lftp"):
        sys.exit(reason or "curl and lftp are needed (apt-get install -y curl lftp)")
    rtts = a.rtt or [50.0]
    work = Path(tempfile.mkdtemp(prefix="conveyor-bench-wan-ftp-"))
    certs = make_certs(work / "certs") if a.tls != "none" else None
    pasv = free_port()
    pasv_ports = list(range(pasv, pasv + PASV_PORTS))
    extra = {"pasv_min_port": str(pasv), "pasv_max_port": str(pasv_ports[-1]), "pasv_address": FAR}
    srv = start_vsftpd(a.tls, certs, extra=extra)
    try:
        size = a.size_mib * MIB
        random_file(srv.root / "big.bin", a.size_mib)
        srv.own(srv.root / "big.bin")
        out = work / "out.bin"
        spool = str(work / "spool")
        tls_curl = ["--ssl-reqd", "-k"] if a.tls != "none" else []
        tls_lftp = (
            "set ftp:ssl-force yes; set ftp:ssl-protect-data yes; set ssl:verify-certificate no"
            if a.tls != "none"
            else "set ftp:ssl-allow no"
        )
        url = f"ftp://{USER}:{PASSWORD}@{FAR}:{srv.port}/big.bin"
        lftp_script = f"{tls_lftp}; set net:max-retries 1; pget -n 4 big.bin -o {out}; quit"

        def ref(cmd: list[str]) -> dict[str, Any]:
            r = timed(cmd)
            out.unlink()
            return r

        def conveyor(streams: int | None) -> dict[str, Any]:
            # The certificate names 127.0.0.1: pinned instead, as a partner's self-signed one would be.
            pin = {"ca_file": None, "tls_fingerprint": certs.fingerprint} if certs is not None else {}
            cfg = srv.config(host=FAR, timeout="30s", max_connections=8, streams=streams, **pin)
            return run_worker(__file__, ["--worker", "--config", json.dumps(cfg), "--spool", spool])

        print(
            f"conveyor FTP WAN bench — vsftpd (tls: {a.tls}) behind delay lines, {a.size_mib} MiB, "
            f"{a.rounds} round(s), {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; MiB/s per "
            "client, timed from its start (logins included)"
        )
        clients: dict[str, Any] = {
            "curl": lambda: ref(["curl", "-s", "-S", "--fail", *tls_curl, "-o", str(out), url]),
            "lftp4": lambda: ref(["lftp", "-u", f"{USER},{PASSWORD}", "-p", str(srv.port), "-e", lftp_script, FAR]),
            "conveyor": lambda: conveyor(None),
            "conveyor1": lambda: conveyor(1),
        }
        for rtt in rtts:
            model = {"window_kib": a.window_kib, "slow_start": not a.no_slow_start}
            with delay_ports("127.0.0.1", [srv.port, *pasv_ports], rtt / 2, FAR, **model):
                rows: dict[str, list[dict[str, Any]]] = {k: [] for k in clients}
                for _ in range(a.rounds):
                    for k, run in clients.items():
                        rows[k].append(run())
                print(f"\nround trip {rtt:g} ms")
                report(rtt, rows, size, NAMES, REFS, GOALS, _detail)
    finally:
        srv.stop()
        shutil.rmtree(work, ignore_errors=True)


async def download_from_login(inst: Any, spool: Any, path: str) -> dict[str, float]:
    """Stat ``path`` (the first login) and download it into a spool body, with its SHA-256: the
    seconds from the start, those of the login, and the CPU seconds of all threads."""
    t, c = time.perf_counter(), time.process_time()
    f = await inst.stat(path)
    assert f is not None
    login = time.perf_counter() - t
    w = spool.writer()
    await inst.download(f, w)
    body = w.finish()
    seconds = time.perf_counter() - t
    cpu = time.process_time() - c  # all threads: the event loop and the spool's writer
    body.release()
    return {"seconds": seconds, "login": login, "cpu": cpu}


def parser(doc: str, worker_options: tuple[str, ...]) -> argparse.ArgumentParser:
    """The options of a WAN bench: --rtt (repeatable), --size-mib, --rounds, and --worker with
    ``worker_options`` (strings) for the conveyor child it starts."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rtt", type=float, action="append", help="round trip in ms (repeatable; default 50)")
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--worker", action="store_true")
    model_options(ap)
    for opt in worker_options:
        ap.add_argument(f"--{opt}")
    return ap


def timed(cmd: list[str], **kw: Any) -> dict[str, Any]:
    """Seconds a reference client takes from its start, and its CPU seconds; its stderr on failure."""
    t, c = time.perf_counter(), _children_cpu()
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode:
        raise SystemExit(f"{cmd[0]} failed:\n{r.stderr}")
    return {"seconds": time.perf_counter() - t, "cpu": _children_cpu() - c}


def _children_cpu() -> float:
    """CPU seconds of the children waited for so far (the delay line's are counted only at its end)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def report(
    rtt: float,
    rows: dict[str, list[dict[str, Any]]],
    size: int,
    names: dict[str, str],
    refs: dict[str, str],
    goals: dict[str, float],
    detail: Callable[[dict[str, Any]], str],
) -> None:
    """One round trip's table (MiB/s per client: median, then each round; for conveyor's rows
    ``detail`` of the first run, the median login and CPU), and conveyor's ratio to each
    reference in ``goals`` against its goal."""
    mib = size / MIB

    def rate(r: dict[str, Any]) -> float:
        return mib / float(r["seconds"])

    print(f"{'client':<46}{'MiB/s':>7}   rounds")
    for k, name in names.items():
        if k in rows:
            rs = [rate(r) for r in rows[k]]
            extra = ""
            if "cpu" in rows[k][0]:
                extra = f"   (CPU {statistics.median(r['cpu'] for r in rows[k]):.2f} s)"
            if k.startswith("conveyor"):
                extra = (
                    f"   ({detail(rows[k][0])}; first login {statistics.median(r['login'] for r in rows[k]):.2f} s, "
                    f"CPU {statistics.median(r['cpu'] for r in rows[k]):.2f} s)"
                )
            print(f"{name:<46}{statistics.median(rs):>7.1f}   {' '.join(f'{x:.1f}' for x in rs)}{extra}")
    for ref, goal in goals.items():
        ratios = [rate(c) / rate(r) for c, r in zip(rows["conveyor"], rows[ref], strict=True)]
        med = statistics.median(ratios)
        print(
            f"{rtt:g} ms: conveyor / {refs[ref]}: {med:.2f}x (rounds {' '.join(f'{x:.2f}' for x in ratios)}); "
            f"goal >= {goal:g}x: {'met' if med >= goal else 'NOT met'}"
        )


if __name__ == "__main__":
    main()
