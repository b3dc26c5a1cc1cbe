"""Helpers shared by the benchmarks: run the daemon as a process, watch its memory, time OpenSSH's
``sftp`` and conveyor's SFTP download side by side."""

from __future__ import annotations

import compileall
import ctypes
import functools
import hashlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

MIB = 1024 * 1024


def write_config(folder: Path, instances: dict[str, Any], flows: dict[str, Any], **top: Any) -> Path:
    """A daemon config for a benchmark run (text logs at warning: logging is not what we measure)."""
    doc: dict[str, Any] = {
        "state": str(folder / "state.db"),
        "spool_dir": str(folder / "spool"),
        "health": {"listen": None},
        "log": {"level": "warning", "format": "text"},
    }
    doc.update(top)
    doc["instances"] = instances
    doc["flows"] = flows
    path = folder / "bench.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@functools.cache
def compile_conveyor() -> None:
    """Byte-compile conveyor's modules once, as installing the package does: a checkout that has
    none (or stale ones after a change) under ``PYTHONDONTWRITEBYTECODE`` would have every daemon
    compile them again at its start, a tenth of a second or more that no user pays."""
    import conveyor

    compileall.compile_dir(Path(conveyor.__file__).parent, quiet=1)


class Daemon:
    """``conveyor run`` as a child process."""

    def __init__(self, config: Path, profile: Path | None = None) -> None:
        """``profile``: run it under cProfile, whose statistics go to that file when it stops."""
        compile_conveyor()
        python = [sys.executable] + (["-m", "cProfile", "-o", str(profile)] if profile else [])
        self.proc = subprocess.Popen(
            [*python, "-m", "conveyor", "run", "-c", str(config)],
            stderr=open(config.parent / "daemon.log", "wb"),  # noqa: SIM115
        )

    def status(self, field: str) -> int:
        """A /proc/PID/status field in KiB (VmRSS, VmHWM)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        return 0

    def cpu_seconds(self) -> float:
        """User + system CPU time so far."""
        parts = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        """SIGTERM and wait."""
        self.proc.terminate()
        self.proc.wait(60)


def wait_until(pred: Any, timeout: float, interval: float = 0.01) -> float:
    """Poll until ``pred()``; returns the time it took."""
    start = time.monotonic()
    while not pred():
        if time.monotonic() - start > timeout:
            raise TimeoutError("benchmark did not finish in time")
        time.sleep(interval)
    return time.monotonic() - start


def table(rows: list[tuple[str, ...]]) -> str:
    """A plain text table."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)


def raw_durable_writes(folder: Path, n: int, batch: int, body: bytes) -> tuple[float, float]:
    """The disk's ceiling for a directory target: the files it writes for ``n`` messages (body,
    ~600 B sidecar, temporary names, renames, ``syncfs`` before and after each batch) with
    nothing else; (seconds, CPU seconds)."""
    folder.mkdir(parents=True)
    meta = json.dumps({"id": "m" * 16, "pad": "x" * 560}, indent=2).encode()
    c0, t0 = time.process_time(), time.monotonic()
    for start in range(0, n, batch):
        durable_batch(folder, [(f"m{i}", body, meta) for i in range(start, min(n, start + batch))])
    return time.monotonic() - t0, time.process_time() - c0


def durable_batch(folder: Path, files: list[tuple[str, bytes, bytes]]) -> None:
    """The directory target's flush policy for a batch of ``(name, body, sidecar)``: each file
    written under a temporary name, ``syncfs``, the renames (body, then sidecar), ``syncfs``.
    What a plain consumer that writes durable files does before it acks the batch."""
    from conveyor.targets.fsync import sync_folder

    for name, body, meta in files:
        (folder / f".{name}.tmp").write_bytes(body)
        (folder / f".{name}.meta.tmp").write_bytes(meta)
    sync_folder(folder)
    for name, _, _ in files:
        os.replace(folder / f".{name}.tmp", folder / name)
        os.replace(folder / f".{name}.meta.tmp", folder / f"{name}.meta.json")
    sync_folder(folder)


def sidecar(id: str, source: str, body: bytes, message: dict[str, Any]) -> bytes:
    """A sidecar as the directory target writes one for a message (the same fields, one line of
    JSON), built the way a plain consumer would: for the plain sides of the broker benchmarks."""
    doc = {
        "id": id,
        "flow": "plain",
        "source": {"instance": "plain", "type": source},
        "received_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "size": len(body),
        "sha256": hashlib.sha256(body).hexdigest(),
        "name": None,
        "file": None,
        "message": message,
    }
    return json.dumps(doc).encode() + b"\n"


def cpu_self() -> float:
    """User + system CPU seconds of this process so far (all its threads)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def cpu_children() -> float:
    """User + system CPU seconds of the child processes waited for so far (and their own children)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def random_file(path: Path, size_mib: int) -> Path:
    """A file of ``size_mib`` MiB that no transport can compress (one random MiB repeated)."""
    block = os.urandom(MIB)
    with open(path, "wb") as f:
        for _ in range(size_mib):
            f.write(block)
    return path


def adopt_orphans() -> None:
    """Make this process the subreaper of its descendants (Linux ``PR_SET_CHILD_SUBREAPER``): a
    process its parent leaves unwaited, as `ssh` leaves a ProxyJump's `ssh`, then comes back to
    this one, which waits for it in :func:`sftp_batch` so its CPU time is counted."""
    if ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def _wait_orphans(names: tuple[str, ...]) -> None:
    """Wait for this process's children named ``names`` (adopted orphans: see :func:`adopt_orphans`)."""
    me = os.getpid()
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            head, tail = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)
        except OSError:
            continue
        if int(tail.split()[1]) == me and head.split("(", 1)[1] in names:
            os.waitpid(int(d), 0)


def sftp_batch(args: list[str], batch: str) -> dict[str, Any]:
    """One OpenSSH ``sftp -v -b -`` run with ``args`` (options and destination): wall seconds
    (including the SSH handshakes), CPU of ``sftp`` and every process under it (``ssh``, a
    ProxyCommand, a ProxyJump's ``ssh`` once adopted), the ciphers negotiated, one per SSH connection,
    and what the batch printed (``output``)."""
    t, c = time.perf_counter(), cpu_children()
    r = subprocess.run(["sftp", "-v", "-b", "-", *args], input=batch, text=True, capture_output=True)
    if r.returncode:
        raise SystemExit(f"sftp {' '.join(args)} failed:\n{r.stderr[-3000:]}")
    _wait_orphans(("ssh", "nc.openbsd", "nc"))
    out: dict[str, Any] = {"seconds": time.perf_counter() - t, "cpu": cpu_children() - c, "output": r.stdout}
    said = r.stderr.splitlines()
    ciphers = [line.split("cipher:")[1].split()[0] for line in said if "client->server cipher:" in line]
    out["cipher"] = "/".join(dict.fromkeys(ciphers)) or "?"
    return out


def run_worker(script: str, args: list[str]) -> dict[str, Any]:
    """Run ``script`` with ``args`` in a child Python process; the JSON object it printed last.
    A child of its own gives conveyor's side its own CPU time and peak RSS."""
    r = subprocess.run([sys.executable, script, *args], capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"{Path(script).name} {' '.join(args[:2])} failed:\n{r.stderr[-3000:]}")
    return dict(json.loads(r.stdout.strip().splitlines()[-1]))


async def timed_download(inst: Any, spool: Any, path: str) -> dict[str, Any]:
    """``inst.download`` of ``path`` into a ``spool`` body: wall and CPU seconds of the transfer
    alone (the file's stat and the connection come before the clock starts, as a daemon's pooled
    session would)."""
    f = await inst.stat(path)
    t, c = time.perf_counter(), cpu_self()
    w = spool.writer()
    await inst.download(f, w)
    body = w.finish()
    out = {"seconds": time.perf_counter() - t, "cpu": cpu_self() - c}
    body.release()
    return out


# -- cold `conveyor run`: from the daemon's process start to the delivered file ----------------------
COLD_GOAL = 0.9


def flush_seconds(path: Path) -> float:
    """Time to fsync ``path``: what a reference tool's download owes to match a durable delivery."""
    t = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return time.perf_counter() - t


def cold_run(
    folder: Path, instance: dict[str, Any], path: str, name: str, size: int, profile: Path | None = None
) -> dict[str, Any]:
    """One ``conveyor run`` from a cold start (fresh state, new process) with one flow from ``path`` on
    ``instance`` into a directory target; wall seconds from the process start until ``name`` and its
    sidecar are in the target folder (the sidecar is renamed in after the durable body), the daemon's
    CPU seconds and peak RSS. ``min_age: 0s``: the file is there before the daemon starts."""
    folder.mkdir(parents=True)
    out = folder / "out"
    flows = {
        "cold": {
            "source": {"instance": "partner", "path": path, "min_age": "0s"},
            "target": {"type": "directory", "path": str(out), "filename": "{name}"},
        }
    }
    config = write_config(folder, {"partner": instance}, flows)
    sidecar = out / f"{name}.meta.json"
    t = time.perf_counter()
    daemon = Daemon(config, profile)
    try:
        try:
            wait_until(lambda: sidecar.exists() or daemon.proc.poll() is not None, 30 + size / MIB, 0.002)
        except TimeoutError:
            sidecar = folder / "daemon.log"  # not delivered: show why below
        seconds = time.perf_counter() - t
        if not sidecar.name.endswith(".meta.json") or (out / name).stat().st_size != size:
            raise SystemExit(f"conveyor run did not deliver {name}: {(folder / 'daemon.log').read_text()[-3000:]}")
        r = {"seconds": seconds, "cpu": daemon.cpu_seconds(), "rss_mib": daemon.status("VmHWM") / 1024}
    finally:
        daemon.stop()
    return r


def cold_summary(label: str, reference: str, refs: list[float], runs: list[dict[str, Any]], mib: int) -> list[str]:
    """Lines for one cold-run row: medians of both sides, the per-round ratio (reference time over
    conveyor's) with its range, and the verdict against the goal."""
    ratios = [r / c["seconds"] for r, c in zip(refs, runs, strict=True)]
    ratio = statistics.median(ratios)
    verdict = "met" if ratio >= COLD_GOAL else "not met"
    conv = statistics.median(c["seconds"] for c in runs)
    return [
        f"cold run {label} -> directory {mib} MiB: conveyor {conv:.2f} s, {reference} {statistics.median(refs):.2f} s, "
        f"ratio {ratio:.2f} [{min(ratios):.2f}-{max(ratios):.2f}] (goal {COLD_GOAL}: {verdict}); "
        f"daemon CPU {statistics.median(c['cpu'] for c in runs):.2f} s, "
        f"peak RSS {max(c['rss_mib'] for c in runs):.0f} MiB",
        f"  rounds, s: conveyor {[round(c['seconds'], 2) for c in runs]}, {reference} {[round(r, 2) for r in refs]}",
    ]


def print_profile(path: Path, lines: int = 30) -> None:
    """The functions of a cProfile run with the most cumulative time, then the most own time."""
    import pstats

    stats = pstats.Stats(str(path), stream=sys.stdout)
    stats.sort_stats("cumulative").print_stats(lines)
    stats.sort_stats("tottime").print_stats(lines)
