"""FTP/FTPS throughput: conveyor's FtpInstance against curl, side by side, on vsftpd over loopback.

Run as root (vsftpd sessions run as a system user): ``/work/venv/bin/python bench/bench_ftp.py``.
Measures 1 GiB download and upload, plain FTP and explicit FTPS (vsftpd with require_ssl_reuse=YES),
and a poll of 200 files of 4 KiB (list + download each). The conveyor side runs in a subprocess so
its peak RSS (ru_maxrss) and CPU time are its own.

Each round runs curl and conveyor back to back, in alternating order (the second writer of a round
meets the first one's dirty pages being flushed), and the ratio is taken per round: on a shared
machine whole rounds are disturbed together, so the median of the per-round ratios (with its
spread) is steadier than comparing the best of each side. CPU time per MiB (user + sys of the
client process: curl's whole run, conveyor's transfer) is shown as a steadier secondary figure.

``--cold-run`` measures instead ``conveyor run`` from its process start (fresh state, the file already
on the server) to the durable file and its sidecar in a directory target, against curl from its
process start through its download and an fsync of the file (``--ssl-reqd`` with the test CA for FTPS).
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
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "bench"))

MiB = 1024 * 1024
SIZE = 1024 * MiB
SMALL = 200


def _cpu(usage: resource.struct_rusage) -> float:
    return usage.ru_utime + usage.ru_stime


# -- conveyor side (a subprocess) ---------------------------------------------
async def _worker(mode: str, config: dict[str, Any], work: Path) -> dict[str, Any]:
    from tests.backends.ftp import ftp_instance

    from conveyor.payload import Body

    inst, _, spool = ftp_instance(config, work / "spool")
    out: dict[str, Any] = {}
    try:
        await inst.check()
        cpu0 = _cpu(resource.getrusage(resource.RUSAGE_SELF))
        t0 = time.perf_counter()
        if mode == "download":
            f = await inst.stat("1g.bin")
            w = spool.writer()
            await inst.download(f, w)
            body = w.finish()
            out["bytes"] = body.size
            out["seconds"] = time.perf_counter() - t0
            body.release()
        elif mode == "upload":
            body = Body.from_file(work / "1g.src", owned=False)
            await inst.upload(body, "up/conveyor.bin", exists="replace", chmod=None)
            out["bytes"] = body.size
            out["seconds"] = time.perf_counter() - t0
        elif mode in ("small", "small-concurrent"):
            files = [f async for f in inst.list("small", False)]

            async def one(f: Any) -> None:
                w = spool.writer()
                await inst.download(f, w)
                w.finish().release()

            if mode == "small":
                for f in files:
                    await one(f)
            else:
                await asyncio.gather(*(one(f) for f in files))
            out["files"] = len(files)
            out["seconds"] = time.perf_counter() - t0
        out["cpu"] = _cpu(resource.getrusage(resource.RUSAGE_SELF)) - cpu0
    finally:
        await inst.close()
    out["maxrss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def run_conveyor(mode: str, config: dict[str, Any], work: Path) -> dict[str, Any]:
    """One conveyor measurement in a fresh interpreter."""
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", mode, "--config", json.dumps(config), "--work", str(work)],
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


# -- curl side -----------------------------------------------------------------
def run_curl(args: list[str]) -> tuple[float, float]:
    """Seconds one curl command takes, and its CPU time (user + sys)."""
    cpu0 = _cpu(resource.getrusage(resource.RUSAGE_CHILDREN))
    t0 = time.perf_counter()
    subprocess.run(["curl", "-s", "-S", "--fail", *args], check=True)
    return time.perf_counter() - t0, _cpu(resource.getrusage(resource.RUSAGE_CHILDREN)) - cpu0


def _spread(values: list[float], fmt: str) -> str:
    """``median [min-max]`` of ``values``."""
    return f"{statistics.median(values):{fmt}} [{min(values):{fmt}}-{max(values):{fmt}}]"


def cold(rounds: int, kinds: list[str], size_mib: int, profile: bool) -> None:
    """Cold ``conveyor run`` against curl + fsync for each of ``kinds``, interleaved rounds."""
    from tests.servers.pyftpd import make_certs
    from tests.servers.vsftpd import PASSWORD, USER, start_vsftpd

    from common import cold_run, cold_summary, flush_seconds, print_profile, random_file

    work = Path(tempfile.mkdtemp(prefix="bench-ftp-cold-"))
    certs = make_certs(work / "certs")
    servers = {k: start_vsftpd("none") if k == "ftp" else start_vsftpd("explicit", certs) for k in kinds}
    try:
        src = random_file(work / "src.bin", size_mib)
        for srv in servers.values():
            (srv.root / "cold").mkdir()
            shutil.copy(src, srv.root / "cold" / "cold.bin")
            srv.own(srv.root / "cold")
            srv.own(srv.root / "cold" / "cold.bin")
        refs: dict[str, list[float]] = {k: [] for k in kinds}
        runs: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
        for rnd in range(rounds):
            for kind, srv in servers.items():
                tls = ["--ssl-reqd", "--cacert", str(certs.ca_file)] if kind == "ftps" else []
                url = f"ftp://{USER}:{PASSWORD}@127.0.0.1:{srv.port}/cold/cold.bin"
                for side in ("curl", "conveyor") if rnd % 2 == 0 else ("conveyor", "curl"):
                    if side == "curl":
                        out = work / "curl.out"
                        refs[kind].append(run_curl([*tls, "-o", str(out), url])[0] + flush_seconds(out))
                        out.unlink()
                    else:
                        d = work / f"cold-{kind}-{rnd}"
                        runs[kind].append(cold_run(d, srv.config(timeout="30s"), "cold", "cold.bin", size_mib * MiB))
                        shutil.rmtree(d)
        print(f"load average {os.getloadavg()}; {rounds} interleaved rounds, medians")
        for kind in kinds:
            print("\n".join(cold_summary(kind, "curl + fsync", refs[kind], runs[kind], size_mib)))
        if profile:
            for kind, srv in servers.items():
                prof = work / f"{kind}.prof"
                cold_run(work / f"profile-{kind}", srv.config(timeout="30s"), "cold", "cold.bin", size_mib * MiB, prof)
                print(f"--- cProfile of conveyor run, {kind}")
                print_profile(prof)
    finally:
        for srv in servers.values():
            srv.stop()
        shutil.rmtree(work, ignore_errors=True)


def main(rounds: int, kinds: list[str], small: bool) -> None:
    """Start vsftpd (plain and FTPS), run every measurement ``rounds`` times, print a table."""
    load0 = os.getloadavg()
    from tests.servers.pyftpd import make_certs
    from tests.servers.vsftpd import PASSWORD, USER, available, start_vsftpd

    reason = available()
    if reason or not shutil.which("curl"):
        sys.exit(reason or "curl is not installed (apt-get install -y curl)")
    work = Path(tempfile.mkdtemp(prefix="bench-ftp-"))
    certs = make_certs(work / "certs")
    servers = {k: start_vsftpd("none") if k == "ftp" else start_vsftpd("explicit", certs) for k in kinds}
    try:
        src = work / "1g.src"
        block = os.urandom(MiB)
        with open(src, "wb") as fh:
            for i in range(SIZE // MiB):
                fh.write(block[i:] + block[:i])
        for srv in servers.values():
            os.link(src, srv.root / "1g.bin") if src.stat().st_dev == srv.root.stat().st_dev else shutil.copy(
                src, srv.root / "1g.bin"
            )
            (srv.root / "up").mkdir()
            (srv.root / "small").mkdir()
            srv.own(srv.root / "up")
            for i in range(SMALL):
                (srv.root / "small" / f"f{i:03}.dat").write_bytes(os.urandom(4096))
        # "<kind> <mode> 1 GiB" -> side ("curl" or "conveyor") -> (seconds, cpu seconds) per round
        runs: dict[str, dict[str, list[tuple[float, float]]]] = {}
        rss: dict[str, float] = {}
        extra: list[str] = []
        for kind, srv in servers.items():
            cfg = srv.config(timeout="30s")
            tls_args = ["--ssl-reqd", "-k"] if kind == "ftps" else []
            url = f"ftp://{USER}:{PASSWORD}@127.0.0.1:{srv.port}"
            curl_args = {
                "download": [*tls_args, "-o", str(work / "curl.out"), f"{url}/1g.bin"],
                "upload": [*tls_args, "-T", str(src), f"{url}/up/curl.bin"],
            }
            rss[kind] = 0.0
            for i in range(rounds):
                for mode in ("download", "upload"):
                    sides = runs.setdefault(f"{kind} {mode} 1 GiB", {"curl": [], "conveyor": []})
                    for side in ("curl", "conveyor") if i % 2 == 0 else ("conveyor", "curl"):
                        if side == "curl":
                            sides[side].append(run_curl(curl_args[mode]))
                        else:
                            r = run_conveyor(mode, cfg, work)
                            sides[side].append((r["seconds"], r["cpu"]))
                            rss[kind] = max(rss[kind], r["maxrss_mib"])
                        (work / "curl.out").unlink(missing_ok=True)
                        for f in (srv.root / "up").iterdir():
                            f.unlink()
            if small:
                for mode in ("small", "small-concurrent"):
                    r = run_conveyor(mode, cfg, work)
                    extra.append(
                        f"{kind} poll of {r['files']} x 4 KiB ({mode}, max_connections=2): "
                        f"{r['files'] / r['seconds']:.0f} files/s, peak RSS {r['maxrss_mib']:.0f} MiB"
                    )
        mib = SIZE / MiB
        print(f"{rounds} rounds, median [min-max]; load average before/after: {load0} / {os.getloadavg()}")
        print(
            f"{'measurement':<24} {'curl MiB/s':>17} {'conveyor MiB/s':>17} {'ratio (per round)':>18} "
            f"{'CPU ms/MiB curl':>16} {'conveyor':>9} {'peak RSS':>9}"
        )
        for name, sides in runs.items():
            c, v = sides["curl"], sides["conveyor"]
            ratios = [cs / vs for (cs, _), (vs, _) in zip(c, v, strict=True)]
            cpu_c, cpu_v = (statistics.median(x * 1000 / mib for _, x in side) for side in (c, v))
            print(
                f"{name:<24} {_spread([mib / s for s, _ in c], '.0f'):>17} "
                f"{_spread([mib / s for s, _ in v], '.0f'):>17} {_spread(ratios, '.2f'):>18} "
                f"{cpu_c:>16.2f} {cpu_v:>9.2f} {rss[name.split()[0]]:>5.0f} MiB"
            )
        for line in extra:
            print(line)
    finally:
        for srv in servers.values():
            srv.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--worker")
    ap.add_argument("--config")
    ap.add_argument("--work")
    ap.add_argument("--rounds", type=int, default=3, help="repetitions; medians and spreads are shown")
    ap.add_argument("--only", choices=("ftp", "ftps"), help="plain FTP or FTPS alone")
    ap.add_argument("--no-small", action="store_true", help="skip the poll of small files")
    ap.add_argument("--cold-run", action="store_true", help="time `conveyor run` from its start instead")
    ap.add_argument("--size-mib", type=int, default=SIZE // MiB, help="with --cold-run: the file's size")
    ap.add_argument("--profile", action="store_true", help="with --cold-run: one more run under cProfile")
    a = ap.parse_args()
    if a.cold_run:
        cold(a.rounds, [a.only] if a.only else ["ftp", "ftps"], a.size_mib, a.profile)
    elif a.worker:
        print(json.dumps(asyncio.run(_worker(a.worker, json.loads(a.config), Path(a.work)))))
    else:
        main(a.rounds, [a.only] if a.only else ["ftp", "ftps"], not a.no_small)
