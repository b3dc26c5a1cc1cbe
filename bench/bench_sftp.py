"""SFTP speed and memory: conveyor's sftp connector next to OpenSSH's `sftp` client, in one run.

Starts a private OpenSSH sshd on loopback (needs root and openssh-server, like the tests),
then, for each round, interleaved so both sides see the same machine load:

- 1 GiB download: `sftp` batch `get` vs ``SftpInstance.download`` into a spool file (and, for
  reference, asyncssh's own ``SFTPClient.get`` with its defaults)
- 1 GiB upload:   `sftp` batch `put` vs ``SftpInstance.upload`` from a file body
- 200 files of 4 KiB: one listing plus every download, files/s (one at a time, and 4 at once)
- 100 idle flows polling an empty folder every 5 s over one instance: CPU % of one core

Conveyor's side runs in a child process so its peak RSS (ru_maxrss) is its own. Both sides
use key auth (ed25519). Numbers are noisy on a shared machine: use --rounds and read the best.

    python bench/bench_sftp.py [--size-mib 1024] [--rounds 1] [--idle-seconds 30]
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.servers

MIB = 1024 * 1024


# --------------------------------------------------------------------------- conveyor side (child)
def _instance(a: argparse.Namespace) -> Any:
    from conveyor.transfer.sftp import SftpInstance
    from conveyor.transfer.sftp_config import SftpConfig

    cfg = SftpConfig.model_validate({
        "type": "sftp", "host": "127.0.0.1", "port": a.port, "username": a.user, "private_key_file": a.key,
        "host_fingerprint": a.fingerprint, "root": a.root, "timeout": "30s",
    })
    return SftpInstance("bench", cfg, None)


async def _worker(a: argparse.Namespace) -> dict[str, float]:
    from conveyor.payload import Body, Spool

    inst = _instance(a)
    spool = Spool(Path(a.spool))
    spool.prepare()
    out: dict[str, float] = {}
    try:
        await inst.check()  # connect outside the timing, as the daemon's pooled session would be
        if a.worker == "download":
            f = await inst.stat(a.path)
            t = time.perf_counter()
            w = spool.writer()
            await inst.download(f, w)
            body = w.finish()
            out["seconds"] = time.perf_counter() - t
            body.release()
        elif a.worker == "asyncssh-get":  # reference: asyncssh's own get with its default settings
            import asyncssh

            async with asyncssh.connect("127.0.0.1", a.port, username=a.user, client_keys=[a.key],
                                        known_hosts=None, config=None) as conn, conn.start_sftp_client() as sftp:
                t = time.perf_counter()
                await sftp.get(f"{a.root}/{a.path}", f"{a.spool}/asyncssh-get.bin")
                out["seconds"] = time.perf_counter() - t
            Path(f"{a.spool}/asyncssh-get.bin").unlink()  # noqa: ASYNC240 (after the timing)
        elif a.worker == "upload":
            body = Body.from_file(Path(a.local), owned=False)
            t = time.perf_counter()
            await inst.upload(body, a.path, exists="replace", chmod=None)
            out["seconds"] = time.perf_counter() - t
        elif a.worker == "small":
            for conc in (1, 4):
                sem = asyncio.Semaphore(conc)

                async def one(f: Any, sem: asyncio.Semaphore = sem) -> None:
                    async with sem:
                        w = spool.writer()
                        await inst.download(f, w)
                        w.finish().release()

                for _ in range(2):  # the first round opens the pool's sessions; the second is a steady poll
                    t = time.perf_counter()
                    files = [f async for f in inst.list(a.path, False)]
                    await asyncio.gather(*(one(f) for f in files))
                    out[f"files_per_s_{conc}"] = len(files) / (time.perf_counter() - t)
        elif a.worker == "idle":
            async def flow() -> None:
                while True:
                    [f async for f in inst.list(a.path, False)]
                    await asyncio.sleep(5)

            c0 = time.process_time()
            tasks = [asyncio.ensure_future(flow()) for _ in range(100)]
            await asyncio.sleep(a.idle_seconds)
            for t_ in tasks:
                t_.cancel()
            out["cpu_percent"] = 100 * (time.process_time() - c0) / a.idle_seconds
    finally:
        await inst.close()
    out["maxrss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


# --------------------------------------------------------------------------- driver
def _conveyor(base: list[str], worker: str, **kw: Any) -> dict[str, float]:
    args = [*base, "--worker", worker] + [x for k, v in kw.items() for x in (f"--{k.replace('_', '-')}", str(v))]
    r = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"conveyor worker {worker} failed:\n{r.stderr}")
    return dict(json.loads(r.stdout.strip().splitlines()[-1]))


def _openssh(port: int, key: str, user: str, batch: str) -> float:
    opts = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes"]
    t = time.perf_counter()
    subprocess.run(["sftp", "-q", "-b", "-", "-i", key, "-P", str(port), *opts, f"{user}@127.0.0.1"],
                   input=batch, text=True, check=True, capture_output=True)
    return time.perf_counter() - t  # includes the ssh handshake (~tens of ms)


def _daemon_idle(work: Path, instance: dict[str, Any], seconds: float) -> dict[str, float]:
    """CPU % of one core used by `conveyor run` with 100 sftp flows polling an empty folder every 5 s."""
    import yaml

    d = work / "daemon"
    d.mkdir()
    flows = {f"idle{i:03}": {"source": {"instance": "partner", "path": "empty", "poll_interval": "5s"},
                             "target": {"type": "directory", "path": str(d / "out")}} for i in range(100)}
    doc = {"state": str(d / "state.db"), "spool_dir": str(d / "spool"), "health": {"listen": None},
           "log": {"level": "warning", "format": "text"}, "instances": {"partner": instance}, "flows": flows}
    (d / "conveyor.yaml").write_text(yaml.safe_dump(doc))
    conveyor = str(Path(sys.executable).parent / "conveyor")
    with open(d / "log", "wb") as log:
        proc = subprocess.Popen([conveyor, "run", "-c", str(d / "conveyor.yaml")], stderr=log)
    try:
        time.sleep(10)  # start-up and the first poll of every flow
        if proc.poll() is not None:
            raise SystemExit(f"conveyor run exited: {(d / 'log').read_text()}")

        def cpu() -> float:
            fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

        c0, t0 = cpu(), time.monotonic()
        time.sleep(seconds)
        used = cpu() - c0
        rss = int(Path(f"/proc/{proc.pid}/status").read_text().split("VmHWM:")[1].split()[0]) / 1024
        return {"cpu_percent": 100 * used / (time.monotonic() - t0), "maxrss_mib": rss}
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--idle-seconds", type=float, default=30.0)
    ap.add_argument("--worker")
    for opt in ("port", "user", "key", "fingerprint", "root", "path", "spool", "local"):
        ap.add_argument(f"--{opt}")
    a = ap.parse_args()
    if a.worker:
        a.port = int(a.port)
        print(json.dumps(asyncio.run(_worker(a))))
        return

    from tests.servers.ssh_keys import make_client_keys
    from tests.servers.sshd import USER, start_sshd

    from conveyor.transfer.hostkeys import sha256_fp

    work = Path(tempfile.mkdtemp(prefix="conveyor-bench-"))
    keys = make_client_keys(work / "keys")
    srv = start_sshd(keys)
    try:
        key = str(keys.keys["ed25519"])
        base = ["--port", str(srv.port), "--user", USER, "--key", key, "--root", str(srv.root),
                "--fingerprint", sha256_fp(srv.host_blob("ed25519")), "--spool", str(work / "spool")]
        size = a.size_mib * MIB
        src = work / "local.bin"
        block = os.urandom(MIB)
        with open(src, "wb") as f:
            for _ in range(a.size_mib):
                f.write(block)
        shutil.copy(src, srv.root / "big.bin")
        srv.chown(srv.root / "big.bin")
        small = srv.root / "small"
        small.mkdir()
        srv.chown(small)
        for i in range(200):
            p = small / f"f{i:03}.dat"
            p.write_bytes(os.urandom(4096))
            srv.chown(p)
        (srv.root / "empty").mkdir()
        srv.chown(srv.root / "empty")

        rows: dict[str, list[float]] = {k: [] for k in ("oss_down", "cv_down", "ash_down", "oss_up", "cv_up")}
        rss: list[float] = []
        for _ in range(a.rounds):
            rows["oss_down"].append(size / _openssh(srv.port, key, USER, f"get {srv.root}/big.bin {work}/o.bin\n"))
            (work / "o.bin").unlink()
            r = _conveyor(base, "download", path="big.bin")
            rows["cv_down"].append(size / r["seconds"])
            rss.append(r["maxrss_mib"])
            rows["ash_down"].append(size / _conveyor(base, "asyncssh-get", path="big.bin")["seconds"])
            rows["oss_up"].append(size / _openssh(srv.port, key, USER, f"put {src} {srv.root}/up_o.bin\n"))
            r = _conveyor(base, "upload", path="up_c.bin", local=src)
            rows["cv_up"].append(size / r["seconds"])
            rss.append(r["maxrss_mib"])
        small_r = _conveyor(base, "small", path="small")
        idle_r = _conveyor(base, "idle", path="empty", idle_seconds=a.idle_seconds)
        inst_cfg = {"type": "sftp", "host": "127.0.0.1", "port": srv.port, "username": USER, "private_key_file": key,
                    "host_fingerprint": sha256_fp(srv.host_blob("ed25519")), "root": str(srv.root)}
        daemon_r = _daemon_idle(work, inst_cfg, a.idle_seconds)

        def best(k: str) -> float:
            return max(rows[k]) / MIB

        print(f"\nconveyor sftp bench — OpenSSH {srv.port} on loopback, {a.size_mib} MiB, "
              f"{a.rounds} round(s), best of rounds; load avg {os.getloadavg()[0]:.1f}")
        print(f"{'measure':<38}{'OpenSSH sftp':>14}{'conveyor':>12}{'ratio':>8}")
        for label, o, c in (("download MiB/s", "oss_down", "cv_down"), ("upload MiB/s", "oss_up", "cv_up"),
                            ("download MiB/s, bare asyncssh get", "oss_down", "ash_down")):
            print(f"{label:<38}{best(o):>14.0f}{best(c):>12.0f}{best(c) / best(o):>8.2f}")
        print(f"{'peak RSS of conveyor side, MiB':<38}{'':>14}{max(rss):>12.0f}")
        print(f"{'200 x 4 KiB list+download, files/s':<38}{'':>14}{small_r['files_per_s_1']:>12.0f}  (one at a time)")
        print(f"{'':<38}{'':>14}{small_r['files_per_s_4']:>12.0f}  (4 at once)")
        print(f"{'100 idle pollers every 5 s, CPU %':<38}{'':>14}{idle_r['cpu_percent']:>12.2f}  "
              f"(connector only, {a.idle_seconds:g}s)")
        print(f"{'':<38}{'':>14}{daemon_r['cpu_percent']:>12.2f}  (conveyor run, 100 flows, {a.idle_seconds:g}s; "
              f"RSS {daemon_r['maxrss_mib']:.0f} MiB)")
        print("all rounds MiB/s:", {k: [round(v / MIB) for v in vs] for k, vs in rows.items()})
    finally:
        srv.stop()
        shutil.rmtree(srv.base, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
