"""SFTP download direct, through a SOCKS5 proxy and through a jump host: conveyor next to OpenSSH's
`sftp`, in one run.

Starts on loopback (needs root, openssh-server, microsocks and netcat-openbsd, as the tests do) an
OpenSSH sshd as the server, a second sshd as the jump host, and microsocks as the SOCKS5 proxy, then
for each round and each path downloads the same file (256 MiB by default) with:

- OpenSSH: `sftp` batch `get`; through the proxy with ``ProxyCommand=nc -X 5 -x PROXY %h %p``,
  through the jump host with ``-J`` (ProxyJump: a second `ssh` logs in to the jump host and carries
  the connection, ``-W``); key auth at both hops, host keys checked against a known_hosts file
  (``StrictHostKeyChecking yes``).
- conveyor: ``SftpInstance.download`` into a spool file, the instance configured with ``proxy:`` or
  ``jump:`` (key auth at both hops, host keys pinned by fingerprint), in a child process so its CPU
  time is its own. The connection is made before the clock starts, as the daemon's pooled session
  would be; OpenSSH's batch prints the time just before and just after its `get` (``!date``), so
  both sides time the transfer alone (OpenSSH's CPU time includes its connect: a few tens of ms).

Every SSH connection on both sides uses aes128-gcm@openssh.com (conveyor's first choice; OpenSSH's
``Ciphers``, which also reaches the jump host's `ssh` through ``-F``), so the ratio compares like
with like; the ciphers negotiated are printed. OpenBSD ``nc -X 5`` cannot authenticate to a SOCKS5
proxy, so microsocks runs without authentication for both sides. Rounds are interleaved, and
alternate which side goes first, because the machine is shared: read the ratio of each round
(median and range), and CPU time per MiB of the client side (`sftp` and every process under it,
the ProxyCommand's `nc` and the ProxyJump's `ssh` included; or conveyor's process), which other
load disturbs less than MiB/s. On this loopback setup the client shares the cores with both sshds
and the proxy, so a client that needs more CPU per MiB is slower too.

OpenSSH spreads a download over two or three processes (`sftp`, `ssh`, and `nc` or the jump's
`ssh`), which run at once on two cores; conveyor does its SSH work in one thread. ``--cpu N`` runs
everything on one CPU, which compares the work each side does per MiB rather than how it spreads.

    python bench/bench_reach.py [--size-mib 256] [--rounds 3] [--cpu N] [--profile DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.servers

from common import adopt_orphans, random_file, run_worker, sftp_batch, timed_download

CIPHER = "aes128-gcm@openssh.com"
STAMP = "!date +%s.%N\n"
"""A local command in the `sftp` batch: the time just before and just after the `get`."""
GOAL = 0.9
PATHS = {"direct": "direct", "socks5": "SOCKS5 proxy", "jump": "one jump host"}


# --------------------------------------------------------------------------- conveyor side (child)
async def _worker(config: dict[str, Any], path: str, spool_dir: str) -> dict[str, Any]:
    from conveyor.payload import Spool
    from conveyor.transfer.sftp.config import SftpConfig
    from conveyor.transfer.sftp.instance import SftpInstance

    inst = SftpInstance("bench", SftpConfig.model_validate(config), None)
    spool = Spool(Path(spool_dir))
    spool.prepare()
    try:
        await inst.check()
        async with inst.pool.session() as s:
            conns = [*s.hops, s.conn]
            ciphers = [c.get_extra_info("send_cipher") for c in conns]
        out = await timed_download(inst, spool, path)
    finally:
        await inst.close()
    out["cipher"] = "/".join(dict.fromkeys(ciphers))
    out["maxrss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def _worker_main(a: argparse.Namespace) -> None:
    run = _worker(json.loads(a.config), a.path, a.spool)
    if a.profile_to:  # where conveyor's CPU goes: the event loop thread's CPU time, which other load leaves alone
        import cProfile
        import time

        prof = cProfile.Profile(time.thread_time)
        out = prof.runcall(asyncio.run, run)
        prof.dump_stats(a.profile_to)
    else:
        out = asyncio.run(run)
    print(json.dumps(out))


# --------------------------------------------------------------------------- driver
def _known_hosts(servers: list[Any]) -> str:
    """known_hosts lines (``[127.0.0.1]:PORT type key``) for every host key of ``servers``."""
    lines = []
    for srv in servers:
        for key in srv.host_keys.values():
            keytype, blob = Path(f"{key}.pub").read_text().split()[:2]
            lines.append(f"[127.0.0.1]:{srv.port} {keytype} {blob}\n")
    return "".join(lines)


def _ssh_config(work: Path, user: str, key: str, known_hosts: Path) -> Path:
    """An ssh_config for `sftp -F`: a ProxyJump's `ssh` is given the same file, so both hops get it."""
    path = work / "ssh_config"
    path.write_text(
        "Host *\n"
        f"  User {user}\n"
        f"  IdentityFile {key}\n"
        "  IdentitiesOnly yes\n"
        "  BatchMode yes\n"
        "  StrictHostKeyChecking yes\n"
        f"  UserKnownHostsFile {known_hosts}\n"
        "  GlobalKnownHostsFile /dev/null\n"
        "  UpdateHostKeys no\n"
        f"  Ciphers {CIPHER}\n"
    )
    return path


def _ratios(cv: list[dict[str, Any]], oss: list[dict[str, Any]]) -> list[float]:
    return [float(b["seconds"]) / float(c["seconds"]) for c, b in zip(cv, oss, strict=True)]


def _summary(rows: dict[str, dict[str, list[dict[str, Any]]]], size_mib: int) -> list[str]:
    """One line per path: median MiB/s of each side, median ratio and its range, CPU ms per MiB."""

    def rate(rs: list[dict[str, Any]]) -> float:
        return statistics.median(size_mib / float(r["seconds"]) for r in rs)

    def cpu(rs: list[dict[str, Any]]) -> float:
        return statistics.median(1000 * float(r["cpu"]) / size_mib for r in rs)

    lines = [
        f"{'path (median of rounds)':<24}{'OpenSSH':>9}{'conveyor':>10}{'ratio':>7}{'range':>12}"
        f"{'CPU ms/MiB':>12}{'':>9}{'connect':>9}  goal",
        f"{'':<24}{'MiB/s':>9}{'MiB/s':>10}{'':>7}{'':>12}{'OpenSSH':>12}{'conveyor':>9}{'OpenSSH':>9}",
    ]
    failed = []
    for key, label in PATHS.items():
        oss, cv, hs = rows[key]["openssh"], rows[key]["conveyor"], rows[key]["connect"]
        ratios = _ratios(cv, oss)
        ratio = statistics.median(ratios)
        ok = ratio >= GOAL
        if not ok:
            failed.append(label)
        lines.append(
            f"{label:<24}{rate(oss):>9.0f}{rate(cv):>10.0f}{ratio:>7.2f}"
            f"{f'{min(ratios):.2f}-{max(ratios):.2f}':>12}{cpu(oss):>12.2f}{cpu(cv):>9.2f}"
            f"{statistics.median(float(r['seconds']) for r in hs):>8.2f}s  {'pass' if ok else 'FAIL'}"
        )
    verdict = "pass" if not failed else f"FAIL ({', '.join(failed)})"
    lines.append(f"goal: conveyor >= {GOAL}x OpenSSH on each path (median ratio): {verdict}")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--profile", metavar="DIR", help="run conveyor's side under cProfile (CPU time), one .prof per transfer"
    )
    ap.add_argument(
        "--cpu",
        type=int,
        metavar="N",
        help="run everything (servers, proxy, both clients) on CPU N only: the same CPU for both sides, "
        "so the ratio is the cost per MiB, not how many cores each side's processes can spread over",
    )
    ap.add_argument(
        "--streams",
        type=int,
        help="conveyor's `streams` setting (default: unset, which reads over one connection on loopback)",
    )
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--config", help=argparse.SUPPRESS)
    ap.add_argument("--path", help=argparse.SUPPRESS)
    ap.add_argument("--spool", help=argparse.SUPPRESS)
    ap.add_argument("--profile-to", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        _worker_main(a)
        return
    if shutil.which("nc.openbsd") is None:
        raise SystemExit("OpenBSD netcat is missing: apt-get install -y netcat-openbsd (scripts/test-setup does)")

    from tests.servers.proxies import start_proxy
    from tests.servers.ssh_keys import make_client_keys
    from tests.servers.sshd import USER, start_sshd

    from conveyor.transfer.sftp.hostkeys import sha256_fp

    adopt_orphans()  # a ProxyJump's `ssh` is left unwaited by its `ssh`: count its CPU time too
    if a.cpu is not None:
        os.sched_setaffinity(0, {a.cpu})  # inherited by every process started from here
    load0 = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="conveyor-bench-reach-"))
    keys = make_client_keys(work / "keys")
    key = str(keys.keys["ed25519"])
    srv = start_sshd(keys)
    hop = start_sshd(keys)
    proxy = start_proxy("socks5", auth=False)
    try:
        known_hosts = work / "known_hosts"
        known_hosts.write_text(_known_hosts([srv, hop]))
        ssh_config = _ssh_config(work, USER, key, known_hosts)
        server: dict[str, Any] = {
            "type": "sftp",
            "host": "127.0.0.1",
            "port": srv.port,
            "username": USER,
            "private_key_file": key,
            "host_fingerprint": sha256_fp(srv.host_blob("ed25519")),
            "root": str(srv.root),
            "timeout": "30s",
        }
        if a.streams:
            server["streams"] = a.streams
        jump = {
            "host": "127.0.0.1",
            "port": hop.port,
            "username": USER,
            "private_key_file": key,
            "host_fingerprint": sha256_fp(hop.host_blob("ed25519")),
        }
        conveyor_cfg = {
            "direct": server,
            "socks5": {**server, "proxy": proxy.url()},
            "jump": {**server, "jump": [jump]},
        }
        dest = ["-F", str(ssh_config), "-P", str(srv.port), "127.0.0.1"]
        nc = f"nc.openbsd -X 5 -x 127.0.0.1:{proxy.port} %h %p"
        openssh_args = {
            "direct": dest,
            "socks5": ["-o", f"ProxyCommand={nc}", *dest],
            "jump": ["-J", f"{USER}@127.0.0.1:{hop.port}", *dest],
        }
        random_file(srv.root / "big.bin", a.size_mib)
        srv.chown(srv.root / "big.bin")
        got = work / "openssh.bin"
        get = f"get {srv.root}/big.bin {got}\n"
        if a.profile:
            Path(a.profile).mkdir(parents=True, exist_ok=True)

        rows: dict[str, dict[str, list[dict[str, Any]]]] = {
            p: {"openssh": [], "conveyor": [], "connect": []} for p in PATHS
        }
        rss: list[float] = []
        for rnd in range(a.rounds):
            for p in PATHS:
                args = ["--worker", "--config", json.dumps(conveyor_cfg[p]), "--path", "big.bin"]
                args += ["--spool", str(work / "spool")]
                if a.profile:
                    args += ["--profile-to", str(Path(a.profile) / f"{p}-{rnd}.prof")]

                def openssh(p: str = p) -> None:
                    r = sftp_batch(openssh_args[p], f"{STAMP}{get}{STAMP}")
                    got.unlink()
                    start, end = (float(x) for x in r["output"].split() if re.fullmatch(r"\d+\.\d+", x))
                    rows[p]["connect"].append({"seconds": r["seconds"] - (end - start)})
                    rows[p]["openssh"].append({**r, "seconds": end - start})

                def conveyor(args: list[str] = args, p: str = p) -> None:
                    r = run_worker(__file__, args)
                    rss.append(r["maxrss_mib"])
                    rows[p]["conveyor"].append(r)

                for side in (openssh, conveyor) if rnd % 2 == 0 else (conveyor, openssh):
                    side()

        ciphers = {f"{p} {side}": rows[p][side][0]["cipher"] for p in PATHS for side in ("openssh", "conveyor")}
        wrong = {k: v for k, v in ciphers.items() if set(v.split("/")) != {CIPHER}}
        print(
            f"\nconveyor reach bench: {a.size_mib} MiB SFTP download on loopback (OpenSSH sshd, a second sshd "
            f"as jump host, microsocks), {a.rounds} round(s), interleaved; load avg {load0[0]:.1f} before, "
            f"{os.getloadavg()[0]:.1f} after; "
            + (f"everything on CPU {a.cpu} only" if a.cpu is not None else f"{os.cpu_count()} cores shared")
        )
        print(
            f"cipher {CIPHER} on every SSH connection of both sides"
            + (f"; NOT SO: {wrong}" if wrong else "")
            + "; SOCKS5 without authentication for both (OpenBSD nc -X 5 has none)"
        )
        print("ratio = OpenSSH seconds / conveyor seconds of the same round, the transfer alone on both sides")
        print("\n".join(_summary(rows, a.size_mib)))
        print(f"peak RSS, conveyor worker: {max(rss):.0f} MiB")
        print(
            "all rounds MiB/s:",
            {
                f"{p} {s}": [round(a.size_mib / float(r["seconds"])) for r in rows[p][s]]
                for p in PATHS
                for s in ("openssh", "conveyor")
            },
        )
    finally:
        proxy.remove()
        for s in (hop, srv):
            s.stop()
            shutil.rmtree(s.base, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
