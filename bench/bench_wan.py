"""SFTP download at WAN latency: conveyor next to OpenSSH `sftp` and rclone, through a delay line.

Starts a private OpenSSH sshd on loopback (needs root and openssh-server, like the tests) and,
for each round trip asked for, a delay-line proxy in front of it (``bench/delayline.py``: each
chunk released a fixed time after it arrived, both ways, no bandwidth cap). Every client goes
through the same proxy to the same server and file, interleaved round by round:

- OpenSSH `sftp` batch `get` (its defaults: 64 requests of 32 KiB in flight, so at most
  2 MiB per round trip: about 40 MiB/s at 50 ms, 20 at 100 ms). This row is also the check
  of the delay line: it must sit at or below that ceiling.
- rclone (Debian's) `copyto` from an on-the-fly sftp remote with ``--multi-thread-streams 4``
  (and with 1, for reference)
- conveyor's ``SftpInstance.download`` into a spool file with the SHA-256 computed, ``streams``
  unset (chosen by size and round trip) and ``streams: 1``

Each client is timed from its start, so its logins are included (conveyor's in a child
process, from connecting to the finished spool body; Python's own start-up is not counted).
Ratios are per round (conveyor / reference of the same round), median over rounds.

    python bench/bench_wan.py [--rtt 50 [--rtt 100]] [--size-mib 256] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
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

from common import random_file, run_worker

MIB = 1024 * 1024
GOALS = {"oss": 2.0, "rclone4": 1.0}
"""The download goals: conveyor at least this many times the reference's rate."""


# --------------------------------------------------------------------------- conveyor side (child)
async def _worker(a: argparse.Namespace) -> dict[str, Any]:
    from conveyor.payload import Spool
    from conveyor.transfer.sftp.config import SftpConfig
    from conveyor.transfer.sftp.instance import SftpInstance, read_depth

    over: dict[str, Any] = {} if a.streams == "auto" else {"streams": int(a.streams)}
    cfg = SftpConfig.model_validate(
        {
            "type": "sftp",
            "host": "127.0.0.1",
            "port": int(a.port),
            "username": a.user,
            "private_key_file": a.key,
            "host_fingerprint": a.fingerprint,
            "root": a.root,
            "timeout": "30s",
            **over,
        }
    )
    inst = SftpInstance("bench", cfg, None)
    spool = Spool(Path(a.spool))
    spool.prepare()
    try:
        out = await download_from_login(inst, spool, a.path)
        rtt = next((s.rtt for s in inst.pool._sessions if s.rtt is not None), None)
        return {
            **out,
            "sessions": inst.pool.handshakes,
            "rtt_ms": None if rtt is None else round(rtt * 1000, 1),
            "depth": read_depth(rtt),
        }
    finally:
        await inst.close()


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


# --------------------------------------------------------------------------- the clients
def _conveyor(base: list[str], port: int, streams: str) -> dict[str, Any]:
    return run_worker(__file__, ["--worker", *base, "--port", str(port), "--streams", streams])


def _openssh(port: int, key: str, user: str, src: str, dst: Path) -> dict[str, Any]:
    opts = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes"]
    r = timed(
        ["sftp", "-q", "-b", "-", "-i", key, "-P", str(port), *opts, f"{user}@127.0.0.1"], input=f"get {src} {dst}\n"
    )
    dst.unlink()
    return r


def _rclone(port: int, key: str, user: str, known_hosts: Path, src: str, dst: Path, streams: int) -> dict[str, Any]:
    remote = f":sftp,host=127.0.0.1,port={port},user={user},key_file={key},known_hosts_file={known_hosts}:{src}"
    out = timed(["rclone", "copyto", remote, str(dst), "--multi-thread-streams", str(streams), "--config", "/dev/null"])
    dst.unlink()
    return out


# --------------------------------------------------------------------------- driver
def parser(doc: str, worker_options: tuple[str, ...]) -> argparse.ArgumentParser:
    """The options of a WAN bench: --rtt (repeatable), --size-mib, --rounds, and --worker with
    ``worker_options`` (strings) for the conveyor child it starts."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rtt", type=float, action="append", help="round trip in ms (repeatable; default 50)")
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--worker", action="store_true")
    for opt in worker_options:
        ap.add_argument(f"--{opt}")
    return ap


def timed(cmd: list[str], **kw: Any) -> dict[str, Any]:
    """Seconds a reference client takes from its start; its stderr on failure."""
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode:
        raise SystemExit(f"{cmd[0]} failed:\n{r.stderr}")
    return {"seconds": time.perf_counter() - t}


def main() -> None:
    ap = parser(__doc__ or "", ("port", "user", "key", "fingerprint", "root", "path", "spool", "streams"))
    ap.add_argument("--no-rclone-single", action="store_true", help="skip rclone with one stream")
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(asyncio.run(_worker(a))))
        return

    from tests.servers.ssh_keys import make_client_keys
    from tests.servers.sshd import USER, start_sshd

    from conveyor.transfer.sftp.hostkeys import sha256_fp
    from delayline import delay_process

    rtts = a.rtt or [50.0]
    work = Path(tempfile.mkdtemp(prefix="conveyor-bench-wan-"))
    keys = make_client_keys(work / "keys")
    srv = start_sshd(keys)
    try:
        key = str(keys.keys["ed25519"])
        size = a.size_mib * MIB
        random_file(srv.root / "big.bin", a.size_mib)
        srv.chown(srv.root / "big.bin")
        src = f"{srv.root}/big.bin"
        host_keys = [" ".join(Path(f"{p}.pub").read_text().split()[:2]) for p in srv.host_keys.values()]
        base = [
            "--user",
            USER,
            "--key",
            key,
            "--root",
            str(srv.root),
            "--fingerprint",
            sha256_fp(srv.host_blob("ed25519")),
            "--spool",
            str(work / "spool"),
            "--path",
            "big.bin",
        ]
        print(
            f"conveyor WAN bench — OpenSSH sshd behind a delay line, {a.size_mib} MiB, {a.rounds} round(s), "
            f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; MiB/s per client, timed from its "
            "start (logins included)"
        )
        for rtt in rtts:
            with delay_process("127.0.0.1", srv.port, rtt / 2) as port:
                known = work / f"known_hosts_{port}"
                known.write_text("".join(f"[127.0.0.1]:{port} {k}\n" for k in host_keys))
                clients: dict[str, Any] = {
                    "oss": lambda p=port: _openssh(p, key, USER, src, work / "o.bin"),
                    "rclone4": lambda p=port, k=known: _rclone(p, key, USER, k, src, work / "r.bin", 4),
                    "conveyor": lambda p=port: _conveyor(base, p, "auto"),
                    "conveyor1": lambda p=port: _conveyor(base, p, "1"),
                }
                if not a.no_rclone_single:
                    clients["rclone1"] = lambda p=port, k=known: _rclone(p, key, USER, k, src, work / "r.bin", 1)
                rows: dict[str, list[dict[str, Any]]] = {k: [] for k in clients}
                for _ in range(a.rounds):
                    for k, run in clients.items():
                        rows[k].append(run())
                _report(rtt, rows, size)
    finally:
        srv.stop()
        shutil.rmtree(srv.base, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


NAMES = {
    "oss": "OpenSSH sftp get (64 x 32 KiB in flight)",
    "rclone1": "rclone copyto, --multi-thread-streams 1",
    "rclone4": "rclone copyto, --multi-thread-streams 4",
    "conveyor1": "conveyor SftpInstance.download, streams: 1",
    "conveyor": "conveyor SftpInstance.download, streams unset",
}


REFS = {"oss": "OpenSSH sftp", "rclone4": "rclone 4 streams"}


def _report(rtt: float, rows: dict[str, list[dict[str, Any]]], size: int) -> None:
    def detail(r: dict[str, Any]) -> str:
        return f"{r['sessions']} session(s), rtt {r['rtt_ms']} ms, {r['depth']} reads in flight"

    ceiling = 64 * 32 * 1024 / (rtt / 1000) / MIB
    print(f"\nround trip {rtt:g} ms (OpenSSH's window-bound ceiling: {ceiling:.1f} MiB/s)")
    report(rtt, rows, size, NAMES, REFS, GOALS, detail)
    oss = statistics.median(size / MIB / float(r["seconds"]) for r in rows["oss"])
    print(
        f"delay line check: OpenSSH sftp at {oss:.1f} MiB/s, "
        f"{'within' if oss <= ceiling * 1.05 else 'ABOVE'} its {ceiling:.1f} MiB/s ceiling"
    )


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
