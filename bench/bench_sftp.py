"""SFTP speed, CPU and memory: conveyor's sftp connector next to OpenSSH's `sftp` client, in one run.

Starts a private OpenSSH sshd on loopback (needs root and openssh-server, like the tests),
then, for each round, interleaved so both sides see the same machine load:

- 1 GiB download: `sftp` batch `get` vs ``SftpInstance.download`` into a spool file, vs
  ``conveyor run`` with a flow from the sftp folder into a directory target (from the moment
  the file appears on the server to the moment it is in the target folder), and, for reference,
  asyncssh's own ``SFTPClient.get`` with its defaults
- 1 GiB upload: `sftp` batch `put` vs ``SftpInstance.upload`` of a spooled body (its SHA-256
  already known, as for anything a remote source downloaded) and of a local file read in place
  (SHA-256 not known yet), vs ``conveyor run`` with a flow from a local folder to the sftp
  instance (file dropped in the folder -> file renamed into place on the server)
- 200 files of 4 KiB: one listing plus every download, files/s (one at a time, and 4 at once)
- 100 idle flows polling an empty folder every 5 s over one instance: CPU % of one core

The machine is shared, so every transfer is reported as the ratio to the OpenSSH run of the
same round (median and range over the rounds), next to CPU time per MiB (user + system of the
client side: `sftp` and its `ssh`, or conveyor's process with its threads), which other load
disturbs far less than MiB/s, and of the server side (sshd's session and sftp-server processes):
on this 2-core loopback setup the two sides share the cores, so a client that makes the server
work harder is slower too. Both sides use key auth (ed25519); the ciphers each side
negotiated are printed (OpenSSH picks chacha20-poly1305 by default, conveyor aes128-gcm;
``--openssh-cipher aes128-gcm@openssh.com`` makes OpenSSH use the same). Conveyor's side runs
in a child process so its peak RSS (ru_maxrss) is its own.

    python bench/bench_sftp.py [--size-mib 1024] [--rounds 3] [--idle-seconds 30] [--no-daemon]

``--cold-run`` measures instead ``conveyor run`` from its process start (fresh state, the file already
on the server) to the durable file and its sidecar in a directory target, against OpenSSH ``sftp``
(aes128-gcm, as conveyor) from its process start through its ``get`` and an fsync of the file.
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
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.servers

from common import (
    MIB,
    cold_run,
    cold_summary,
    cpu_self,
    flush_seconds,
    print_profile,
    random_file,
    run_worker,
    sftp_batch,
    timed_download,
)

COLD_CIPHER = "aes128-gcm@openssh.com"  # conveyor's, so both sides do the same crypto


class _ServerCpu:
    """CPU seconds that sshd's children (session processes, sftp-server) use during a transfer.

    They exit with their connection and sshd does not collect their times (its cutime stays
    flat), so /proc is sampled every 50 ms and the last value seen of each process counts: at
    most 50 ms of CPU missed per process, a few % of a 1 GiB transfer. A scan costs ~2 ms.
    """

    def __init__(self, sshd_pid: int) -> None:
        self.root = sshd_pid
        self.seen: dict[int, float] = {}
        self.base: dict[int, float] = {}
        self.seconds = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> dict[int, float]:
        procs: dict[int, tuple[int, float]] = {}
        tick = os.sysconf("SC_CLK_TCK")
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    f = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                procs[int(d)] = (int(f[1]), (int(f[11]) + int(f[12])) / tick)
        out = {}
        for pid, (_, cpu) in procs.items():
            p = pid
            while p in procs and p != self.root:
                p = procs[p][0]
            if p == self.root and pid != self.root:
                out[pid] = cpu
        return out

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.seen.update(self._sample())

    def __enter__(self) -> _ServerCpu:
        self.base = self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.seen.update(self._sample())
        self.seconds = sum(c - self.base.get(p, 0.0) for p, c in self.seen.items())


# --------------------------------------------------------------------------- conveyor side (child)
def _instance(a: argparse.Namespace) -> Any:
    from conveyor.transfer.sftp.config import SftpConfig
    from conveyor.transfer.sftp.instance import SftpInstance

    cfg = SftpConfig.model_validate(
        {
            "type": "sftp",
            "host": "127.0.0.1",
            "port": a.port,
            "username": a.user,
            "private_key_file": a.key,
            "host_fingerprint": a.fingerprint,
            "root": a.root,
            "timeout": "30s",
        }
    )
    return SftpInstance("bench", cfg, None)


async def _worker(a: argparse.Namespace) -> dict[str, Any]:
    from conveyor.payload import Body, Spool, hash_file

    inst = _instance(a)
    spool = Spool(Path(a.spool))
    spool.prepare()
    out: dict[str, Any] = {}
    try:
        await inst.check()  # connect outside the timing, as the daemon's pooled session would be
        async with inst.pool.session() as s:
            out["cipher"] = s.conn.get_extra_info("send_cipher")
        if a.worker == "download":
            out.update(await timed_download(inst, spool, a.path))
        elif a.worker == "asyncssh-get":  # reference: asyncssh's own get with its default settings
            import asyncssh

            async with (
                asyncssh.connect(
                    "127.0.0.1", a.port, username=a.user, client_keys=[a.key], known_hosts=None, config=None
                ) as conn,
                conn.start_sftp_client() as sftp,
            ):
                t, c = time.perf_counter(), cpu_self()
                await sftp.get(f"{a.root}/{a.path}", f"{a.spool}/asyncssh-get.bin")
                out["seconds"], out["cpu"] = time.perf_counter() - t, cpu_self() - c
                out["cipher"] = conn.get_extra_info("send_cipher")
            Path(f"{a.spool}/asyncssh-get.bin").unlink()  # noqa: ASYNC240 (after the timing)
        elif a.worker in ("upload", "upload-file"):
            # "upload": a spooled body, whose SHA-256 the spool writer computed on the way in;
            # "upload-file": a local file read in place, hash unknown.
            known = hash_file(Path(a.local)) if a.worker == "upload" else None
            body = Body.from_file(Path(a.local), owned=False, sha256=known)
            t, c = time.perf_counter(), cpu_self()
            await inst.upload(body, a.path, exists="replace", chmod=None)
            out["seconds"], out["cpu"] = time.perf_counter() - t, cpu_self() - c
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
def _conveyor(base: list[str], worker: str, **kw: Any) -> dict[str, Any]:
    args = [*base, "--worker", worker] + [x for k, v in kw.items() for x in (f"--{k.replace('_', '-')}", str(v))]
    return run_worker(__file__, args)


def _openssh(port: int, key: str, user: str, batch: str, cipher: str | None) -> dict[str, Any]:
    """One `sftp -b` run: wall seconds (including the ~tens of ms handshake), CPU of sftp + ssh, cipher."""
    opts = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes"]
    if cipher:
        opts += ["-o", f"Ciphers={cipher}"]
    return sftp_batch(["-i", key, "-P", str(port), *opts, f"{user}@127.0.0.1"], batch)


class _DaemonFlows:
    """``conveyor run`` with one flow each way, to time transfers through the whole daemon."""

    def __init__(self, work: Path, srv: Any, instance: dict[str, Any]) -> None:
        from common import Daemon, write_config

        self.dir = work / "daemon-flows"
        self.out, self.inbox = self.dir / "out", self.dir / "in"
        for p in (self.out, self.inbox):
            p.mkdir(parents=True)
        self.srv = srv
        for name in ("dl", "up"):
            (srv.root / name).mkdir()
            srv.chown(srv.root / name)
        src = {"poll_interval": "0.2s", "min_age": "0s", "after": "delete"}
        flows = {
            "down": {
                "source": {"instance": "partner", "path": "dl", **src},
                "target": {"type": "directory", "path": str(self.out), "filename": "{name}"},
            },
            "up": {
                "source": {"instance": "local", "path": "in", **src},
                "target": {"instance": "partner", "path": "up"},
            },
        }
        instances = {"partner": instance, "local": {"type": "local", "root": str(self.dir)}}
        log = {"level": os.environ.get("BENCH_LOG", "warning"), "format": "text"}
        self.daemon = Daemon(write_config(self.dir, instances, flows, log=log))
        self._wait(lambda: (self.dir / "state.db").exists(), 30)
        time.sleep(2)  # start-up: connect and the first (empty) polls

    def _wait(self, pred: Any, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not pred():
            if self.daemon.proc.poll() is not None:
                raise SystemExit(f"conveyor run exited: {(self.dir / 'daemon.log').read_text()}")
            if time.monotonic() > deadline:
                log = (self.dir / "daemon.log").read_text()
                raise SystemExit(f"conveyor run did not deliver in {timeout:g}s: {log}")
            time.sleep(0.005)

    def _timed(self, drop: Any, arrived: Any) -> dict[str, Any]:
        t, c = time.perf_counter(), self.daemon.cpu_seconds()
        drop()
        self._wait(arrived, float(os.environ.get("BENCH_TIMEOUT", "300")))
        return {"seconds": time.perf_counter() - t, "cpu": self.daemon.cpu_seconds() - c}

    def download(self, server_file: Path, name: str, size: int) -> dict[str, Any]:
        """Hard-link ``server_file`` into the flow's sftp folder; wait for it in the target folder."""
        dst = self.out / name
        r = self._timed(
            lambda: os.link(server_file, self.srv.root / "dl" / name),
            lambda: dst.exists() and dst.stat().st_size == size,
        )
        dst.unlink()
        return r

    def upload(self, local: Path, name: str, size: int) -> dict[str, Any]:
        """Hard-link ``local`` into the flow's local folder; wait until it is renamed into place on the server."""
        dst = self.srv.root / "up" / name
        r = self._timed(lambda: os.link(local, self.inbox / name), lambda: dst.exists() and dst.stat().st_size == size)
        dst.unlink()
        return r

    def stop(self) -> float:
        """Stop the daemon; its peak RSS in MiB."""
        rss = self.daemon.status("VmHWM") / 1024
        self.daemon.stop()
        return rss


def _daemon_idle(work: Path, instance: dict[str, Any], seconds: float) -> dict[str, float]:
    """CPU % of one core used by `conveyor run` with 100 sftp flows polling an empty folder every 5 s."""
    import yaml

    d = work / "daemon"
    d.mkdir()
    flows = {
        f"idle{i:03}": {
            "source": {"instance": "partner", "path": "empty", "poll_interval": "5s"},
            "target": {"type": "directory", "path": str(d / "out")},
        }
        for i in range(100)
    }
    doc = {
        "state": str(d / "state.db"),
        "spool_dir": str(d / "spool"),
        "health": {"listen": None},
        "log": {"level": "warning", "format": "text"},
        "instances": {"partner": instance},
        "flows": flows,
    }
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


def _summary(rows: dict[str, list[dict[str, Any]]], size: int) -> list[str]:
    """Per measure: median MiB/s, median ratio to OpenSSH of the same round with its range, CPU ms/MiB."""
    mib = size / MIB

    def rate(r: dict[str, Any]) -> float:
        return mib / float(r["seconds"])

    def ms_per_mib(rs: list[dict[str, Any]], field: str = "cpu") -> str:
        return f"{statistics.median(1000 * float(r[field]) / mib for r in rs):.2f}"

    lines = [
        f"{'measure (median of rounds)':<44}{'MiB/s':>7}{'ratio':>7}{'range':>13}{'CPU ms/MiB':>12}"
        f"{'server':>8}  cipher"
    ]
    for ref, label in (("oss_down", "download"), ("oss_up", "upload")):
        base = rows[ref]
        lines.append(
            f"{'OpenSSH sftp ' + label:<44}{statistics.median(map(rate, base)):>7.0f}{'1':>7}{'':>13}"
            f"{ms_per_mib(base):>12}{ms_per_mib(base, 'server_cpu'):>8}  {base[0].get('cipher', '?')}"
        )
        for key, name in MEASURES[ref]:
            rs = rows.get(key) or []
            if not rs:
                continue
            ratios = [rate(r) / rate(b) for r, b in zip(rs, base, strict=True)]
            lines.append(
                f"{name:<44}{statistics.median(map(rate, rs)):>7.0f}{statistics.median(ratios):>7.2f}"
                f"{f'{min(ratios):.2f}-{max(ratios):.2f}':>13}{ms_per_mib(rs):>12}"
                f"{ms_per_mib(rs, 'server_cpu'):>8}  {rs[0].get('cipher', '')}"
            )
    return lines


MEASURES = {
    "oss_down": [
        ("cv_down", "conveyor SftpInstance.download -> spool"),
        ("cv_daemon_down", "conveyor run: sftp flow -> directory target"),
        ("ash_down", "bare asyncssh SFTPClient.get (reference)"),
    ],
    "oss_up": [
        ("cv_up", "conveyor SftpInstance.upload, spooled body"),
        ("cv_up_file", "conveyor upload, local file (hash unknown)"),
        ("cv_daemon_up", "conveyor run: local flow -> sftp target"),
    ],
}


def _cold(a: argparse.Namespace, work: Path, srv: Any, key: str, inst_cfg: dict[str, Any]) -> None:
    """Cold ``conveyor run`` against ``sftp`` + fsync, interleaved rounds (order alternating)."""
    from tests.servers.sshd import USER

    (srv.root / "cold").mkdir()
    srv.chown(srv.root / "cold")
    os.link(srv.root / "big.bin", srv.root / "cold" / "big.bin")
    size = a.size_mib * MIB
    refs: list[float] = []
    runs: list[dict[str, Any]] = []
    cipher = ""

    def reference() -> None:
        nonlocal cipher
        out = work / "o.bin"
        r = _openssh(srv.port, key, USER, f"get {srv.root}/cold/big.bin {out}\n", COLD_CIPHER)
        refs.append(r["seconds"] + flush_seconds(out))
        cipher = r["cipher"]
        out.unlink()

    for rnd in range(a.rounds):
        for side in ("ref", "conveyor") if rnd % 2 == 0 else ("conveyor", "ref"):
            if side == "ref":
                reference()
            else:
                d = work / f"cold-{rnd}"
                runs.append(cold_run(d, inst_cfg, "cold", "big.bin", size))
                shutil.rmtree(d)
    print(f"load average {os.getloadavg()}; OpenSSH cipher {cipher}; {a.rounds} interleaved rounds, medians")
    print("\n".join(cold_summary("sftp", "OpenSSH sftp + fsync", refs, runs, a.size_mib)))
    if a.profile:
        prof = work / "cold.prof"
        cold_run(work / "cold-profile", inst_cfg, "cold", "big.bin", size, profile=prof)
        print_profile(prof)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--idle-seconds", type=float, default=30.0)
    ap.add_argument("--openssh-cipher", help="force OpenSSH's cipher (e.g. aes128-gcm@openssh.com, as conveyor's)")
    ap.add_argument("--no-daemon", action="store_true", help="skip the `conveyor run` transfer rows")
    ap.add_argument("--no-small", action="store_true", help="skip the small-file and idle measures")
    ap.add_argument("--cold-run", action="store_true", help="time `conveyor run` from its start instead")
    ap.add_argument("--profile", action="store_true", help="with --cold-run: one more run under cProfile")
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

    from conveyor.transfer.sftp.hostkeys import sha256_fp

    work = Path(tempfile.mkdtemp(prefix="conveyor-bench-"))
    keys = make_client_keys(work / "keys")
    srv = start_sshd(keys)
    flows: _DaemonFlows | None = None
    try:
        key = str(keys.keys["ed25519"])
        fingerprint = sha256_fp(srv.host_blob("ed25519"))
        base = [
            "--port",
            str(srv.port),
            "--user",
            USER,
            "--key",
            key,
            "--root",
            str(srv.root),
            "--fingerprint",
            fingerprint,
            "--spool",
            str(work / "spool"),
        ]
        inst_cfg = {
            "type": "sftp",
            "host": "127.0.0.1",
            "port": srv.port,
            "username": USER,
            "private_key_file": key,
            "host_fingerprint": fingerprint,
            "root": str(srv.root),
        }
        size = a.size_mib * MIB
        src = random_file(work / "local.bin", a.size_mib)
        shutil.copy(src, srv.root / "big.bin")
        srv.chown(srv.root / "big.bin")
        if a.cold_run:
            _cold(a, work, srv, key, inst_cfg)
            return
        small = srv.root / "small"
        small.mkdir()
        srv.chown(small)
        for i in range(200):
            p = small / f"f{i:03}.dat"
            p.write_bytes(os.urandom(4096))
            srv.chown(p)
        (srv.root / "empty").mkdir()
        srv.chown(srv.root / "empty")
        if not a.no_daemon:
            flows = _DaemonFlows(work, srv, inst_cfg)

        rows: dict[str, list[dict[str, Any]]] = {}
        rss: list[float] = []

        def add(k: str, run: Any) -> None:
            with _ServerCpu(srv.proc.pid) as server:
                r = run()
            r["server_cpu"] = server.seconds
            rows.setdefault(k, []).append(r)
            if "maxrss_mib" in r:
                rss.append(r["maxrss_mib"])

        ciph = a.openssh_cipher
        for rnd in range(a.rounds):
            add("oss_down", lambda: _openssh(srv.port, key, USER, f"get {srv.root}/big.bin {work}/o.bin\n", ciph))
            (work / "o.bin").unlink()
            add("cv_down", lambda: _conveyor(base, "download", path="big.bin"))
            if flows is not None:
                add("cv_daemon_down", lambda f=flows, n=f"big-{rnd}.bin": f.download(srv.root / "big.bin", n, size))
            add("ash_down", lambda: _conveyor(base, "asyncssh-get", path="big.bin"))
            add("oss_up", lambda: _openssh(srv.port, key, USER, f"put {src} {srv.root}/up_o.bin\n", ciph))
            add("cv_up", lambda: _conveyor(base, "upload", path="up_c.bin", local=src))
            add("cv_up_file", lambda: _conveyor(base, "upload-file", path="up_c.bin", local=src))
            if flows is not None:
                add("cv_daemon_up", lambda f=flows, n=f"up-{rnd}.bin": f.upload(src, n, size))
        daemon_rss = flows.stop() if flows is not None else None
        flows = None

        print(
            f"\nconveyor sftp bench — OpenSSH sshd on loopback, {a.size_mib} MiB, {a.rounds} round(s); "
            f"load avg {os.getloadavg()[0]:.1f}; ratio = conveyor / OpenSSH of the same round"
        )
        print("\n".join(_summary(rows, size)))
        print(
            f"peak RSS, conveyor worker: {max(rss):.0f} MiB"
            + (f"; conveyor run with both flows: {daemon_rss:.0f} MiB" if daemon_rss else "")
        )
        print("all rounds MiB/s:", {k: [round(size / MIB / float(r["seconds"])) for r in rs] for k, rs in rows.items()})
        if not a.no_small:
            small_r = _conveyor(base, "small", path="small")
            idle_r = _conveyor(base, "idle", path="empty", idle_seconds=a.idle_seconds)
            daemon_r = _daemon_idle(work, inst_cfg, a.idle_seconds)
            print(
                f"200 x 4 KiB list+download: {small_r['files_per_s_1']:.0f} files/s one at a time, "
                f"{small_r['files_per_s_4']:.0f} with 4 at once"
            )
            print(
                f"100 idle pollers every 5 s: {idle_r['cpu_percent']:.2f} % of one core (connector only), "
                f"{daemon_r['cpu_percent']:.2f} % (conveyor run, 100 flows, RSS {daemon_r['maxrss_mib']:.0f} MiB), "
                f"over {a.idle_seconds:g}s"
            )
    finally:
        if flows is not None:
            flows.daemon.stop()
        srv.stop()
        shutil.rmtree(srv.base, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
