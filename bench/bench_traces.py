"""What traces cost: local → directory, N files of 4 KiB, through ``conveyor run`` with traces off
and on (every payload sampled, spans sent to an OTLP/HTTP receiver in this process that reads and
discards them), side by side. Reported: files/s and the daemon's CPU seconds per 1,000 files, and
the ratio on/off. Runs alternate (``--rounds``) and each side keeps its best, the machine being shared.

    python bench/bench_traces.py [--files 5000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import http.server
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from common import Daemon, table, wait_until, write_config

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.servers.ops import free_port


class Receiver(http.server.BaseHTTPRequestHandler):
    """Takes ``POST /v1/traces`` and discards the spans (counting the bytes)."""

    received = 0

    def do_POST(self) -> None:
        n = int(self.headers.get("Content-Length") or 0)
        Receiver.received += len(self.rfile.read(n))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def count_meta(folder: Path) -> int:
    """Delivered payloads (sidecars) in a directory target."""
    try:
        return sum(1 for e in os.scandir(folder) if e.name.endswith(".meta.json"))
    except FileNotFoundError:
        return 0


def one_run(base: Path, n: int, traces: dict[str, Any] | None) -> tuple[float, float]:
    """files/s and daemon CPU seconds per 1,000 files."""
    src = base / "disk" / "in"
    src.mkdir(parents=True)
    out = base / "out"
    flow = {
        "source": {"instance": "disk", "path": "in", "poll_interval": "100ms", "min_age": "0s", "after": "delete"},
        "target": {"type": "directory", "path": str(out), "filename": "{name}"},
        "max_in_flight": 64,
    }
    top = {"traces": traces} if traces is not None else {}
    cfg = write_config(base, {"disk": {"type": "local", "root": str(base / "disk")}}, {"f": flow}, **top)
    body = os.urandom(4096)
    d = Daemon(cfg)
    try:
        time.sleep(1.5)  # started and idle
        cpu0, t0 = d.cpu_seconds(), time.monotonic()
        for i in range(n):
            (src / f"f{i:05}.dat").write_bytes(body)
        wait_until(lambda: count_meta(out) >= n, 600, 0.05)
        elapsed, cpu = time.monotonic() - t0, d.cpu_seconds() - cpu0
    finally:
        d.stop()
    return n / elapsed, cpu / n * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    port = free_port()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    traces = {"endpoint": f"http://127.0.0.1:{port}", "interval": "1s"}
    best: dict[str, tuple[float, float]] = {}
    try:
        for r in range(args.rounds):
            for side, cfg in (("off", None), ("on", traces)):
                base = Path(tempfile.mkdtemp(prefix=f"conveyor-bench-traces-{side}{r}-"))
                try:
                    fps, cpu = one_run(base, args.files, cfg)
                finally:
                    shutil.rmtree(base, ignore_errors=True)
                print(f"round {r + 1} traces {side}: {fps:,.0f} files/s, {cpu:.2f} CPU s per 1,000", flush=True)
                old = best.get(side)
                best[side] = (max(fps, old[0]), min(cpu, old[1])) if old else (fps, cpu)
    finally:
        server.shutdown()
    off, on = best["off"], best["on"]
    print(f"spans received: {Receiver.received / 1e6:.1f} MB of OTLP protobuf")
    print(
        table(
            [
                ("measure", "traces on", "traces off", "ratio on/off"),
                (
                    f"{args.files} x 4 KiB local->directory, files/s",
                    f"{on[0]:,.0f}",
                    f"{off[0]:,.0f}",
                    f"{on[0] / off[0]:.2f}",
                ),
                ("daemon CPU s per 1,000 files", f"{on[1]:.2f}", f"{off[1]:.2f}", f"{on[1] / off[1]:.2f}"),
            ]
        )
    )


if __name__ == "__main__":
    main()
