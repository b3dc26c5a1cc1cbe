"""PGP decrypt of one large file: `conveyor run` (local → decrypt step → directory) against
`gpg --decrypt` to a file (and to a file then `sync`, as the directory target syncs), with peak RSS.

    python bench/bench_pgp.py [--size-mib 1024] [--rounds 3] [--dir /var/tmp]

Rounds alternate between gpg and conveyor; the medians are printed.

The file is encrypted for a Curve25519 key and signed by another; the step requires that
signature (``verify_with``), as `gpg` checks it too.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from common import Daemon, table, wait_until, write_config


def gpg(home: Path, *args: str) -> bytes:
    cmd = ["gpg", "--homedir", str(home), "--batch", "--yes", "--pinentry-mode", "loopback", "--passphrase", ""]
    return subprocess.run([*cmd, *args], capture_output=True, check=True).stdout


def children_rss(pid: int) -> int:
    """Summed VmRSS (KiB) of ``pid``'s child processes (the daemon's gpg)."""
    total = 0
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) != pid:
                continue
            for line in (d / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", default=None, help="where to work (default: a temp folder)")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="conveyor-bench-", dir=args.dir))
    try:
        home = base / "gnupg"
        home.mkdir(mode=0o700)
        gpg(home, "--quick-gen-key", "us@example.org", "future-default", "default", "never")
        gpg(home, "--quick-gen-key", "partner@example.org", "future-default", "default", "never")
        (base / "us.sec.asc").write_bytes(gpg(home, "--armor", "--export-secret-keys", "us@example.org"))
        (base / "partner.pub.asc").write_bytes(gpg(home, "--armor", "--export", "partner@example.org"))
        plain = base / "plain.bin"
        with open(plain, "wb") as f:
            block = os.urandom(1 << 20)
            for _ in range(args.size_mib):
                f.write(block)
        enc = base / "staging.pgp"
        gpg(home, "--trust-model", "always", "-r", "us@example.org", "-u", "partner@example.org", "--sign",
            "--encrypt", "--compress-algo", "none", "--output", str(enc), str(plain))  # fmt: skip
        plain.unlink()
        mb = args.size_mib * 1.048576
        src, out = base / "disk" / "in", base / "out"
        src.mkdir(parents=True)
        step = {"private_key_file": str(base / "us.sec.asc"), "verify_with": [str(base / "partner.pub.asc")]}
        flow = {
            "source": {"instance": "disk", "path": "in", "poll_interval": "100ms", "min_age": "0s", "after": "delete"},
            "steps": [{"decrypt": step}],
            "target": {"type": "directory", "path": str(out), "filename": "{name}"},
        }
        cfg = write_config(base, {"disk": {"type": "local", "root": str(base / "disk")}}, {"pgp": flow})
        d = Daemon(cfg)
        time.sleep(1.5)
        peak_child = 0
        gpg_runs: list[float] = []
        sync_runs: list[float] = []
        conveyor_runs: list[float] = []
        for n in range(args.rounds):  # alternating, so both sides see the same disk and load
            t0 = time.monotonic()
            gpg(home, "--output", str(base / "ref.bin"), "--decrypt", str(enc))
            gpg_runs.append(time.monotonic() - t0)
            subprocess.run(["sync"], check=True)
            sync_runs.append(time.monotonic() - t0)
            (base / "ref.bin").unlink()
            staged = base / "disk" / f"round-{n}.pgp"
            shutil.copyfile(enc, staged)
            subprocess.run(["sync"], check=True)

            def done(name: str = f"big-{n}.bin") -> bool:
                nonlocal peak_child
                peak_child = max(peak_child, children_rss(d.proc.pid))
                return (out / f"{name}.meta.json").exists()

            os.rename(staged, src / f"big-{n}.bin.pgp")  # appears whole: taken at the next poll
            t0 = time.monotonic()
            wait_until(done, 1800, 0.05)
            conveyor_runs.append(time.monotonic() - t0)
            assert (out / f"big-{n}.bin").stat().st_size == args.size_mib << 20
            (out / f"big-{n}.bin").unlink()
        rss = d.status("VmHWM")
        gpg_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # gpg and sync: the daemon is not reaped yet
        d.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    conveyor_s, gpg_s, gpg_sync_s = (statistics.median(r) for r in (conveyor_runs, gpg_runs, sync_runs))
    print(
        table(
            [
                ("measure", "conveyor", "reference", "ratio"),
                (
                    f"PGP decrypt {args.size_mib} MiB, MB/s vs gpg",
                    f"{mb / conveyor_s:,.0f}",
                    f"{mb / gpg_s:,.0f} (gpg --decrypt)",
                    f"{gpg_s / conveyor_s:.2f}",
                ),
                (
                    f"PGP decrypt {args.size_mib} MiB, MB/s vs gpg+sync",
                    f"{mb / conveyor_s:,.0f}",
                    f"{mb / gpg_sync_s:,.0f} (gpg --decrypt; sync)",
                    f"{gpg_sync_s / conveyor_s:.2f}",
                ),
                ("daemon peak RSS", f"{rss / 1024:.0f} MB", "", ""),
                ("its gpg's peak RSS (sampled)", f"{peak_child / 1024:.0f} MB", f"{gpg_rss / 1024:.0f} MB (gpg)", ""),
            ]
        )
    )


if __name__ == "__main__":
    main()
