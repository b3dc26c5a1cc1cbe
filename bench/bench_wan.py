"""SFTP at WAN latency: conveyor next to OpenSSH `sftp` and rclone, through a delay line.

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

Rows (``--rows``, comma-separated; default ``download``):

- ``download``: the one large file, as above
- ``small``: ``--files`` files of ``--file-kib`` KiB in one folder, listed and downloaded:
  OpenSSH `sftp` ``get -r``, rclone ``copy --transfers 8``, conveyor's ``SftpInstance.list`` then
  ``download`` of each file into the spool with ``--in-flight`` at once (a flow's
  ``max_in_flight``), and ``conveyor run --once`` with a flow from that folder to a directory target
- ``upload``: the large file put on the server: OpenSSH `sftp` ``put``, rclone ``copyto`` (4
  streams), conveyor's ``SftpInstance.upload`` of a spooled body (temp name, then rename)
- ``run``: ``conveyor run --once``, a flow from the server's folder holding the large file to a
  directory target (durable: written, flushed, renamed, with its sidecar), next to OpenSSH `sftp`
  and rclone 4 streams each followed by a flush of the file they wrote

Each client is timed from its start, so its logins are included (conveyor's in a child
process, from connecting to the finished spool body; Python's own start-up is not counted,
except in the ``conveyor run`` rows, timed from process start to exit like the references).
Ratios are per round (conveyor / reference of the same round), median over rounds.

    python bench/bench_wan.py [--rtt 50 [--rtt 100]] [--size-mib 256] [--rounds 2] [--rows download,small]
"""

from __future__ import annotations

import argparse
import asyncio
import filecmp
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.servers
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import random_file, run_worker
from delayline import model_options

MIB = 1024 * 1024
GOALS = {"oss": 2.0, "rclone4": 1.0}
"""The download goals: conveyor at least this many times the reference's rate."""
ROW_GOALS: dict[str, dict[str, float]] = {
    "download": GOALS,
    "small": {"oss": 3.0, "rclone": 1.0},
    "upload": {"oss": 1.5, "rclone": 1.0},
    "run": {"oss": 2.0, "rclone": 1.0},
}
"""Per row: reference -> the least ratio of conveyor's rate to it."""
OPTS = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes"]


# --------------------------------------------------------------------------- conveyor side (child)
def _instance_config(a: argparse.Namespace) -> dict[str, Any]:
    over: dict[str, Any] = {} if a.streams in (None, "auto") else {"streams": int(a.streams)}
    return {
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


async def _worker(a: argparse.Namespace) -> dict[str, Any]:
    from conveyor.payload import Body, Spool, hash_file
    from conveyor.transfer.sftp.config import SftpConfig
    from conveyor.transfer.sftp.instance import SftpInstance, read_depth

    inst = SftpInstance("bench", SftpConfig.model_validate(_instance_config(a)), None)
    spool = Spool(Path(a.spool))
    spool.prepare()
    out: dict[str, Any] = {}
    try:
        t, c = time.perf_counter(), time.process_time()
        if a.worker == "small":
            sem = asyncio.Semaphore(int(a.in_flight))

            async def one(f: Any) -> None:
                async with sem:
                    w = spool.writer()
                    await inst.download(f, w)
                    w.finish().release()

            files = [f async for f in inst.list(a.path, False)]
            await asyncio.gather(*(one(f) for f in files))
            out["files"] = len(files)
        elif a.worker == "upload":
            body = Body.from_file(Path(a.local), owned=False, sha256=hash_file(Path(a.local)))  # as spooled
            t, c = time.perf_counter(), time.process_time()
            await inst.upload(body, a.path, exists="replace", chmod=None)
        else:
            f = await inst.stat(a.path)  # the first login
            assert f is not None
            out["login"] = time.perf_counter() - t
            w = spool.writer()
            await inst.download(f, w)
            w.finish().release()
        out["seconds"] = time.perf_counter() - t
        out["cpu"] = time.process_time() - c  # all threads: the event loop and the spool's writer
        rtt = next((s.rtt for s in inst.pool._sessions if s.rtt is not None), None)
        out.update(
            sessions=inst.pool.handshakes,
            rtt_ms=None if rtt is None else round(rtt * 1000, 1),
            depth=read_depth(rtt),
        )
        return out
    finally:
        await inst.close()


# --------------------------------------------------------------------------- the clients
def _conveyor(base: list[str], port: int, worker: str, **kw: Any) -> dict[str, Any]:
    args = [*base, "--worker", worker, "--port", str(port)]
    args += [x for k, v in kw.items() for x in (f"--{k.replace('_', '-')}", str(v))]
    return run_worker(__file__, args)


def _flush(path: Path) -> None:
    """The durability a directory target gives: the file's bytes on disk (every file of a folder)."""
    for p in sorted(path.rglob("*")) if path.is_dir() else [path]:
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _done(dst: Path) -> None:
    if dst.is_dir():
        shutil.rmtree(dst)
    else:
        dst.unlink()


def _openssh(port: int, key: str, user: str, batch: str, dst: Path, flush: bool = False) -> dict[str, Any]:
    t = time.perf_counter()
    subprocess.run(
        ["sftp", "-q", "-b", "-", "-i", key, "-P", str(port), *OPTS, f"{user}@127.0.0.1"],
        input=batch,
        text=True,
        check=True,
        capture_output=True,
    )
    if flush:
        _flush(dst)
    r = {"seconds": time.perf_counter() - t}
    if dst.exists():
        _done(dst)
    return r


def _rclone(args: list[str], dst: Path | None, flush: bool = False) -> dict[str, Any]:
    t = time.perf_counter()
    r = subprocess.run(["rclone", *args, "--config", "/dev/null"], capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"rclone failed:\n{r.stderr}")
    if flush and dst is not None:
        _flush(dst)
    out = {"seconds": time.perf_counter() - t}
    if dst is not None:
        _done(dst)
    return out


def _conveyor_run(work: Path, instance: dict[str, Any], folder: str, expect: int, source: Path) -> dict[str, Any]:
    """``conveyor run --once``: a flow from ``folder`` on the server to a directory target, timed
    from process start to exit; ``expect`` files must have arrived, each the same bytes as its
    original in ``source`` (compared after the clock stopped)."""
    from common import write_config

    run = work / "run"
    shutil.rmtree(run, ignore_errors=True)
    out = run / "out"
    out.mkdir(parents=True)
    flows = {
        "wan": {
            "source": {"instance": "partner", "path": folder, "min_age": "0s", "after": "keep"},
            "target": {"type": "directory", "path": str(out), "filename": "{name}"},
        }
    }
    cfg = write_config(run, {"partner": instance}, flows)
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "conveyor", "run", "--once", "-c", str(cfg)], capture_output=True)
    seconds = time.perf_counter() - t
    got = sum(1 for p in out.iterdir() if not p.name.endswith(".meta.json"))
    if r.returncode or got != expect:
        raise SystemExit(f"conveyor run --once: exit {r.returncode}, {got} of {expect} files:\n{r.stderr[-3000:]!r}")
    for p in out.iterdir():
        if not p.name.endswith(".meta.json") and not filecmp.cmp(p, source / p.name, shallow=False):
            raise SystemExit(f"conveyor run --once delivered {p.name} with other bytes than the server's")
    shutil.rmtree(run)
    return {"seconds": seconds}


# --------------------------------------------------------------------------- driver
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rtt", type=float, action="append", help="round trip in ms (repeatable; default 50)")
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--rows", default="download", help="comma-separated: download, small, upload, run")
    ap.add_argument("--files", type=int, default=1000, help="files of the small row")
    ap.add_argument("--file-kib", type=int, default=16, help="size of each file of the small row")
    ap.add_argument("--in-flight", type=int, default=16, help="small row: files conveyor fetches at once")
    ap.add_argument("--no-rclone-single", action="store_true", help="skip rclone with one stream")
    model_options(ap)
    ap.add_argument("--worker")
    for opt in ("port", "user", "key", "fingerprint", "root", "path", "spool", "streams", "local"):
        ap.add_argument(f"--{opt}")
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(asyncio.run(_worker(a))))
        return

    from tests.servers.ssh_keys import make_client_keys
    from tests.servers.sshd import USER, start_sshd

    from conveyor.transfer.sftp.hostkeys import sha256_fp
    from delayline import delay_process

    rtts = a.rtt or [50.0]
    rows_asked = a.rows.split(",")
    unknown = set(rows_asked) - set(ROW_GOALS)
    if unknown:
        ap.error(f"unknown rows: {', '.join(sorted(unknown))}")
    work = Path(tempfile.mkdtemp(prefix="conveyor-bench-wan-"))
    keys = make_client_keys(work / "keys")
    srv = start_sshd(keys)
    try:
        key = str(keys.keys["ed25519"])
        size = a.size_mib * MIB
        big = srv.root / "big" / "big.bin"
        big.parent.mkdir()
        random_file(big, a.size_mib)
        local = random_file(work / "local.bin", a.size_mib) if "upload" in rows_asked else None
        srv.chown(big.parent)
        srv.chown(big)
        for d in ("small", "up"):
            (srv.root / d).mkdir()
            srv.chown(srv.root / d)
        if "small" in rows_asked:
            for i in range(a.files):
                srv.put(f"small/f{i:05d}.bin", os.urandom(a.file_kib * 1024))
        host_keys = [" ".join(Path(f"{p}.pub").read_text().split()[:2]) for p in srv.host_keys.values()]
        fingerprint = sha256_fp(srv.host_blob("ed25519"))
        base = ["--user", USER, "--key", key, "--root", str(srv.root), "--fingerprint", fingerprint]
        base += ["--spool", str(work / "spool")]
        print(
            f"conveyor WAN bench — OpenSSH sshd behind a delay line, {a.size_mib} MiB, {a.rounds} round(s), "
            f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; MiB/s per client, timed from its "
            "start (logins included)"
        )
        for rtt in rtts:
            model = {"window_kib": a.window_kib, "slow_start": not a.no_slow_start}
            with delay_process("127.0.0.1", srv.port, rtt / 2, **model) as port:
                known = work / f"known_hosts_{port}"
                known.write_text("".join(f"[127.0.0.1]:{port} {k}\n" for k in host_keys))
                remote = f":sftp,host=127.0.0.1,port={port},user={USER},key_file={key},known_hosts_file={known}:"
                ns = argparse.Namespace(port=port, user=USER, key=key, fingerprint=fingerprint, root=str(srv.root))
                instance = _instance_config(argparse.Namespace(**vars(ns), streams=None))
                clients = _clients(a, rows_asked, base, port, key, remote, work, big, local, instance)
                for row, cs in clients.items():
                    rows: dict[str, list[dict[str, Any]]] = {k: [] for k in cs}
                    for _ in range(a.rounds):
                        for k, run in cs.items():
                            rows[k].append(run())
                    _report(rtt, row, rows, size, a)
    finally:
        srv.stop()
        shutil.rmtree(srv.base, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


def _clients(
    a: argparse.Namespace,
    rows: list[str],
    base: list[str],
    port: int,
    key: str,
    remote: str,
    work: Path,
    big: Path,
    local: Path | None,
    instance: dict[str, Any],
) -> dict[str, dict[str, Any]]:
    """Per row asked for: client name -> a call that runs it once and returns its timing."""
    from tests.servers.sshd import USER

    src = str(big)
    root = big.parent.parent
    o, r, d = work / "o.bin", work / "r.bin", work / "dir"
    out: dict[str, dict[str, Any]] = {}
    if "download" in rows:
        dl = {"path": "big/big.bin"}
        out["download"] = {
            "oss": lambda: _openssh(port, key, USER, f"get {src} {o}\n", o),
            "rclone4": lambda: _rclone(["copyto", remote + src, str(r), "--multi-thread-streams", "4"], r),
            "conveyor": lambda: _conveyor(base, port, "download", streams="auto", **dl),
            "conveyor1": lambda: _conveyor(base, port, "download", streams="1", **dl),
        }
        if not a.no_rclone_single:
            out["download"]["rclone1"] = lambda: _rclone(
                ["copyto", remote + src, str(r), "--multi-thread-streams", "1"], r
            )
    if "small" in rows:
        small = f"{root}/small"
        out["small"] = {
            "oss": lambda: _openssh(port, key, USER, f"get -r {small} {d}\n", d),
            "rclone": lambda: _rclone(["copy", remote + small, str(d), "--transfers", "8"], d),
            "conveyor": lambda: _conveyor(base, port, "small", path="small", in_flight=a.in_flight),
            "conveyor_run": lambda: _conveyor_run(work, instance, "small", a.files, root / "small"),
        }
    if "upload" in rows:
        assert local is not None
        up = f"{root}/up/big.bin"

        def removed(run: Any) -> dict[str, Any]:
            res = run()
            Path(up).unlink()
            return dict(res)

        out["upload"] = {
            "oss": lambda: removed(lambda: _openssh(port, key, USER, f"put {local} {up}\n", o)),
            "rclone": lambda: removed(
                lambda: _rclone(["copyto", str(local), remote + up, "--multi-thread-streams", "4"], None)
            ),
            "conveyor": lambda: removed(lambda: _conveyor(base, port, "upload", path="up/big.bin", local=local)),
            "conveyor1": lambda: removed(
                lambda: _conveyor(base, port, "upload", path="up/big.bin", local=local, streams=1)
            ),
        }
    if "run" in rows:
        out["run"] = {
            "oss": lambda: _openssh(port, key, USER, f"get {src} {o}\n", o, flush=True),
            "rclone": lambda: _rclone(["copyto", remote + src, str(r), "--multi-thread-streams", "4"], r, True),
            "conveyor_run": lambda: _conveyor_run(work, instance, "big", 1, big.parent),
        }
    return out


NAMES = {
    "download": {
        "oss": "OpenSSH sftp get (64 x 32 KiB in flight)",
        "rclone1": "rclone copyto, --multi-thread-streams 1",
        "rclone4": "rclone copyto, --multi-thread-streams 4",
        "conveyor1": "conveyor SftpInstance.download, streams: 1",
        "conveyor": "conveyor SftpInstance.download, streams unset",
    },
    "small": {
        "oss": "OpenSSH sftp get -r",
        "rclone": "rclone copy --transfers 8",
        "conveyor": "conveyor SftpInstance list + download",
        "conveyor_run": "conveyor run --once, sftp -> directory",
    },
    "upload": {
        "oss": "OpenSSH sftp put",
        "rclone": "rclone copyto, --multi-thread-streams 4",
        "conveyor1": "conveyor SftpInstance.upload, streams: 1",
        "conveyor": "conveyor SftpInstance.upload, streams unset",
    },
    "run": {
        "oss": "OpenSSH sftp get + flush",
        "rclone": "rclone copyto, 4 streams + flush",
        "conveyor_run": "conveyor run --once, sftp -> directory",
    },
}
REFS = {"oss": "OpenSSH sftp", "rclone4": "rclone 4 streams", "rclone": "rclone"}
TITLES = {
    "download": "download of one file",
    "small": "small files, list + download",
    "upload": "upload of one file",
    "run": "conveyor run, sftp -> directory, one file, durable",
}


def _report(rtt: float, row: str, rows: dict[str, list[dict[str, Any]]], size: int, a: argparse.Namespace) -> None:
    if row == "small":
        mib = a.files * a.file_kib / 1024
        unit = "files/s"

        def rate(r: dict[str, Any]) -> float:
            return int(a.files) / float(r["seconds"])
    else:
        mib = size / MIB
        unit = "MiB/s"

        def rate(r: dict[str, Any]) -> float:
            return mib / float(r["seconds"])

    ceiling = 64 * 32 * 1024 / (rtt / 1000) / MIB
    what = f"{a.files} x {a.file_kib} KiB" if row == "small" else f"{a.size_mib} MiB"
    print(f"\nround trip {rtt:g} ms, {TITLES[row]} ({what}; OpenSSH's window-bound ceiling: {ceiling:.1f} MiB/s)")
    print(f"{'client':<46}{unit:>7}   rounds")
    for k, name in NAMES[row].items():
        if k in rows:
            rs = [rate(r) for r in rows[k]]
            extra = ""
            if k.startswith("conveyor") and "sessions" in rows[k][0]:
                r0 = rows[k][0]
                extra = (
                    f"   ({r0['sessions']} session(s), rtt {r0['rtt_ms']} ms, {r0['depth']} reads in flight; "
                    f"CPU {statistics.median(r['cpu'] for r in rows[k]):.2f} s)"
                )
            print(f"{name:<46}{statistics.median(rs):>7.1f}   {' '.join(f'{x:.1f}' for x in rs)}{extra}")
    if row == "download":
        oss = statistics.median(map(rate, rows["oss"]))
        print(
            f"delay line check: OpenSSH sftp at {oss:.1f} MiB/s, "
            f"{'within' if oss <= ceiling * 1.05 else 'ABOVE'} its {ceiling:.1f} MiB/s ceiling"
        )
    for mine in ("conveyor", "conveyor_run"):
        if mine not in rows:
            continue
        for ref, goal in ROW_GOALS[row].items():
            ratios = [rate(c) / rate(r) for c, r in zip(rows[mine], rows[ref], strict=True)]
            med = statistics.median(ratios)
            verdict = "met" if med >= goal else "NOT met"
            print(
                f"{rtt:g} ms {row}: {NAMES[row][mine]} / {REFS[ref]}: {med:.2f}x "
                f"(rounds {' '.join(f'{x:.2f}' for x in ratios)}); goal >= {goal:g}x: {verdict}"
            )


if __name__ == "__main__":
    main()
