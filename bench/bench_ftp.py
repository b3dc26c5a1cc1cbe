"""FTP/FTPS throughput: conveyor's FtpInstance against curl, side by side, on vsftpd over loopback.

Run as root (vsftpd sessions run as a system user): ``/work/venv/bin/python bench/bench_ftp.py``.
Measures 1 GiB download and upload, plain FTP and explicit FTPS (vsftpd with require_ssl_reuse=YES),
and a poll of 200 files of 4 KiB (list + download each). The conveyor side runs in a subprocess so
its peak RSS (ru_maxrss) is its own. Numbers are noisy on a shared machine: run it twice if in doubt.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MiB = 1024 * 1024
SIZE = 1024 * MiB
SMALL = 200


# -- conveyor side (a subprocess) ---------------------------------------------
async def _worker(mode: str, config: dict[str, Any], work: Path) -> dict[str, Any]:
    from tests.backends.ftp import ftp_instance

    from conveyor.payload import Body

    inst, _, spool = ftp_instance(config, work / "spool")
    out: dict[str, Any] = {}
    try:
        await inst.check()
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
    finally:
        await inst.close()
    out["maxrss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def run_conveyor(mode: str, config: dict[str, Any], work: Path) -> dict[str, Any]:
    """One conveyor measurement in a fresh interpreter."""
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", mode, "--config", json.dumps(config), "--work", str(work)],
        capture_output=True, text=True, check=True,
    )
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


# -- curl side -----------------------------------------------------------------
def run_curl(args: list[str]) -> float:
    """Seconds one curl command takes."""
    t0 = time.perf_counter()
    subprocess.run(["curl", "-s", "-S", "--fail", *args], check=True)
    return time.perf_counter() - t0


def main(rounds: int) -> None:
    """Start vsftpd (plain and FTPS), run every measurement ``rounds`` times, print a table."""
    load0 = os.getloadavg()
    from tests.servers.pyftpd import make_certs
    from tests.servers.vsftpd import PASSWORD, USER, available, start_vsftpd

    reason = available()
    if reason or not shutil.which("curl"):
        sys.exit(reason or "curl is not installed (apt-get install -y curl)")
    work = Path(tempfile.mkdtemp(prefix="bench-ftp-"))
    certs = make_certs(work / "certs")
    servers = {"ftp": start_vsftpd("none"), "ftps": start_vsftpd("explicit", certs)}
    try:
        src = work / "1g.src"
        block = os.urandom(MiB)
        with open(src, "wb") as fh:
            for i in range(SIZE // MiB):
                fh.write(block[i:] + block[:i])
        for srv in servers.values():
            os.link(src, srv.root / "1g.bin") if src.stat().st_dev == srv.root.stat().st_dev else shutil.copy(
                src, srv.root / "1g.bin")
            (srv.root / "up").mkdir()
            (srv.root / "small").mkdir()
            srv.own(srv.root / "up")
            for i in range(SMALL):
                (srv.root / "small" / f"f{i:03}.dat").write_bytes(os.urandom(4096))
        rows: list[tuple[str, float, float, float]] = []
        extra: list[str] = []
        for kind, srv in servers.items():
            cfg = srv.config(timeout="30s")
            tls_args = ["--ssl-reqd", "-k"] if kind == "ftps" else []
            url = f"ftp://{USER}:{PASSWORD}@127.0.0.1:{srv.port}"
            best: dict[str, list[float]] = {"cd": [], "vd": [], "cu": [], "vu": [], "rss": []}
            for _ in range(rounds):  # alternate the two sides; keep the best of each (least disturbed)
                best["cd"].append(run_curl([*tls_args, "-o", str(work / "curl.out"), f"{url}/1g.bin"]))
                (work / "curl.out").unlink()
                r = run_conveyor("download", cfg, work)
                best["vd"].append(r["seconds"])
                best["rss"].append(r["maxrss_mib"])
                best["cu"].append(run_curl([*tls_args, "-T", str(src), f"{url}/up/curl.bin"]))
                r = run_conveyor("upload", cfg, work)
                best["vu"].append(r["seconds"])
                best["rss"].append(r["maxrss_mib"])
                for f in (srv.root / "up").iterdir():
                    f.unlink()
            rss = max(best["rss"])
            rows.append((f"{kind} download 1 GiB", SIZE / MiB / min(best["cd"]), SIZE / MiB / min(best["vd"]), rss))
            rows.append((f"{kind} upload 1 GiB", SIZE / MiB / min(best["cu"]), SIZE / MiB / min(best["vu"]), rss))
            for mode in ("small", "small-concurrent"):
                r = run_conveyor(mode, cfg, work)
                extra.append(f"{kind} poll of {r['files']} x 4 KiB ({mode}, max_connections=2): "
                             f"{r['files'] / r['seconds']:.0f} files/s, peak RSS {r['maxrss_mib']:.0f} MiB")
        print(f"best of {rounds} rounds; load average before/after: {load0} / {os.getloadavg()}")
        print(f"{'measurement':<24} {'curl MiB/s':>11} {'conveyor MiB/s':>15} {'ratio':>6} {'conveyor peak RSS':>18}")
        for name, c, v, rss in rows:
            print(f"{name:<24} {c:>11.0f} {v:>15.0f} {v / c:>6.2f} {rss:>14.0f} MiB")
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
    ap.add_argument("--rounds", type=int, default=3, help="repetitions; the best of each side is shown")
    a = ap.parse_args()
    if a.worker:
        print(json.dumps(asyncio.run(_worker(a.worker, json.loads(a.config), Path(a.work)))))
    else:
        main(a.rounds)
