"""local→http payloads/s against a plain aiohttp client loop posting the same bodies, same run.

A sink (an aiohttp server in its own process) counts requests and bytes. First a plain
aiohttp client reads each file and POSTs it with the same concurrency as the flow's
``max_in_flight``; then the daemon delivers the same files from a local folder to the same
sink, all appearing at once in its source folder (a backlog). The daemon does more per
payload (state store claim/deliver/settle, SHA-256 for X-Conveyor-Meta, the after action),
which is what the ratio prices. A third client, the plain loop plus the per-payload work conveyor
owes every such delivery (SHA-256 and metadata headers, the file deleted after the 2xx)
but no ledger, separates the price of that work from conveyor's own.

The daemon runs twice: with ``after: keep`` (the default; the plain loop leaves its files
too) and with ``after: delete``. Each client gets hard links of its own to one set of files.

Rates are taken as the sink saw them (first to last POST of each run; the ratio quoted in the
README) and by the client's wall clock (the plain loop from its first read, the daemon from
the moment the files appeared, its poll interval of 100 ms included). With ``--rounds`` every
client runs once per round, in alternating order, and ratios are taken within each round: on a
shared machine whole rounds are disturbed together. Medians are shown with [min-max].

    python bench/bench_http.py [--files 5000] [--size 4096] [--concurrency 32] [--rounds 1] [--dir /var/tmp]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
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

import aiohttp

from common import Daemon, table, write_config

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.servers.ops

from tests.servers.ops import free_port


def cpu_self() -> float:
    """This process's user + system CPU seconds."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def sink_main(port: int) -> None:
    """The sink process: POST anything counts; GET /count reports."""
    from aiohttp import web

    counts = {"n": 0, "bytes": 0}
    arrived: list[float] = []  # when each POST's body had been read (CLOCK_MONOTONIC: one clock for all processes)

    async def post(request: web.Request) -> web.Response:
        n = 0
        async for chunk in request.content.iter_any():
            n += len(chunk)
        counts["n"] += 1
        counts["bytes"] += n
        arrived.append(time.monotonic())
        return web.Response(status=201)

    async def count(_r: web.Request) -> web.Response:
        return web.json_response(counts)

    async def span(request: web.Request) -> web.Response:
        first, last = int(request.query["first"]), int(request.query["last"])
        return web.json_response({"first": arrived[first], "last": arrived[last]})

    app = web.Application(client_max_size=1 << 40)
    app.router.add_post("/hook", post)
    app.router.add_get("/count", count)
    app.router.add_get("/span", span)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


async def sink_count(s: aiohttp.ClientSession, url: str) -> int:
    async with s.get(url + "/count") as r:
        return int((await r.json())["n"])


async def sink_rate(s: aiohttp.ClientSession, url: str, first: int, n: int) -> float:
    """Payloads/s as the sink saw them: POSTs number ``first`` to ``first + n - 1``, first to last."""
    async with s.get(url + "/span", params={"first": str(first), "last": str(first + n - 1)}) as r:
        span = await r.json()
    return float((n - 1) / (span["last"] - span["first"]))


PLAIN_HEADERS = {"Content-Type": "application/octet-stream"}


def spec_headers(f: Path, data: bytes) -> dict[str, str]:
    """The per-payload headers every HTTP delivery carries: the SHA-256 and metadata document
    in ``X-Conveyor-Meta``, ``Idempotency-Key`` and ``X-Conveyor-Flow``."""
    meta = {
        "id": f.name,
        "flow": "bench",
        "source": {"instance": "disk", "type": "local"},
        "received_at": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "name": f.name,
        "file": {"path": str(f)},
        "message": None,
    }
    return {
        **PLAIN_HEADERS,
        "Idempotency-Key": f.name,
        "X-Conveyor-Flow": "bench",
        "X-Conveyor-Meta": base64.urlsafe_b64encode(json.dumps(meta).encode()).decode(),
    }


async def plain_client(files: list[Path], url: str, concurrency: int, *, spec_work: bool = False) -> float:
    """The reference: read each file, POST it, `concurrency` at a time; seconds taken.

    ``spec_work``: also do the per-payload work owed to any HTTP delivery of a file (the
    headers of :func:`spec_headers`, and the source file deleted after the 2xx: ``files`` are
    then hard links made for this run). No ledger: what stays between it and conveyor is the
    state store and the daemon's own machinery."""
    queue: asyncio.Queue[Path] = asyncio.Queue()
    for f in files:
        queue.put_nowait(f)

    async def worker(s: aiohttp.ClientSession) -> None:
        while not queue.empty():
            f = queue.get_nowait()
            data = await asyncio.to_thread(f.read_bytes)
            headers = spec_headers(f, data) if spec_work else PLAIN_HEADERS
            async with s.post(url + "/hook", data=data, headers=headers) as r:
                await r.read()
                assert r.status == 201
            if spec_work:
                await asyncio.to_thread(f.unlink)

    t0 = time.monotonic()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        await asyncio.gather(*(worker(s) for _ in range(concurrency)))
    return time.monotonic() - t0


async def target_alone(files: list[Path], url: str, concurrency: int) -> float:
    """conveyor's HttpTarget on its own (bodies read into memory, as the local source does for
    small files): the target's share of the cost, without state store and file handling."""
    from conveyor.payload import Body, Payload
    from conveyor.targets.http.config import HttpTargetConfig
    from conveyor.targets.http.target import HttpTarget

    target = HttpTarget("bench", HttpTargetConfig.model_validate({"type": "http", "url": url + "/hook"}))
    queue: asyncio.Queue[Path] = asyncio.Queue()
    for f in files:
        queue.put_nowait(f)

    async def worker() -> None:
        while not queue.empty():
            f = queue.get_nowait()
            data = await asyncio.to_thread(f.read_bytes)
            p = Payload(
                id=f.name,
                flow="bench",
                source_instance="disk",
                source_type="local",
                body=Body.from_bytes(data),
                name=f.name,
            )
            await target.deliver(p)

    t0 = time.monotonic()
    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        await target.close()
    return time.monotonic() - t0


def links(master: Path, folder: Path) -> list[Path]:
    """Hard links to the master files in a new ``folder``: each client gets files of its own
    (two delete theirs), and making them costs no data copy."""
    folder.mkdir(parents=True)
    out = []
    for f in sorted(master.iterdir()):
        os.link(f, folder / f.name)
        out.append(folder / f.name)
    return out


async def daemon_run(
    base: Path, master: Path, url: str, n: int, concurrency: int, after: str, s: aiohttp.ClientSession, *, before: int
) -> tuple[float, float, int]:
    """The daemon delivering ``n`` files that appear at once in its source folder; seconds from
    their appearance to the sink's count reaching ``before + n``, CPU seconds, peak RSS (KiB)."""
    staging = base / "disk" / "staging"
    links(master, staging)
    src = base / "disk" / "in"
    src.mkdir()
    flows = {
        "http": {
            "source": {"instance": "disk", "path": "in", "poll_interval": "100ms", "min_age": "0s", "after": after},
            "target": {"type": "http", "url": url + "/hook"},
            "max_in_flight": concurrency,
        }
    }
    cfg = write_config(base, {"disk": {"type": "local", "root": str(base / "disk")}}, flows)
    d = Daemon(cfg)
    try:
        await asyncio.sleep(1.5)  # started and idle
        t0, c0 = time.monotonic(), d.cpu_seconds()
        # All files appear at once (one rename of their folder over the empty one): a backlog,
        # and no renames of the bench's own competing with the daemon.
        os.rename(staging, src)
        while await sink_count(s, url) < before + n:
            if time.monotonic() - t0 > 600:
                raise TimeoutError("daemon did not deliver everything in 10 minutes")
            await asyncio.sleep(0.02)
        return time.monotonic() - t0, d.cpu_seconds() - c0, d.status("VmHWM")
    finally:
        d.stop()


CLIENTS = ("plain", "alone", "spec", "keep", "delete")


async def one_round(
    base: Path, master: Path, url: str, n: int, concurrency: int, s: aiohttp.ClientSession, order: tuple[str, ...]
) -> dict[str, tuple[float, float, float, int]]:
    """Every client once, in ``order``: payloads/s at the sink, payloads/s by the client's
    wall clock, CPU seconds, peak RSS (KiB, the daemon's)."""
    out = {}
    for name in order:
        before = await sink_count(s, url)
        rss = 0
        if name in ("keep", "delete"):
            seconds, cpu, rss = await daemon_run(base / name, master, url, n, concurrency, name, s, before=before)
        else:
            files = links(master, base / name)
            c0 = cpu_self()
            if name == "alone":
                seconds = await target_alone(files, url, concurrency)
            else:
                seconds = await plain_client(files, url, concurrency, spec_work=name == "spec")
            cpu = cpu_self() - c0
        assert await sink_count(s, url) == before + n
        out[name] = (await sink_rate(s, url, before, n), n / seconds, cpu, rss)
        shutil.rmtree(base / name)
    return out


async def run(base: Path, n: int, size: int, concurrency: int, rounds: int) -> list[tuple[str, ...]]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    sink = subprocess.Popen([sys.executable, __file__, "--sink", str(port)])  # noqa: ASYNC220 (started once)
    results: list[dict[str, tuple[float, float, float, int]]] = []
    try:
        async with aiohttp.ClientSession() as s:
            for _ in range(200):
                try:
                    await sink_count(s, url)
                    break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.05)
            master = base / "master"
            master.mkdir()
            body = os.urandom(size)
            for i in range(n):
                (master / f"f{i:06}.dat").write_bytes(body)
            for r in range(rounds):
                # Alternate the order: a client that runs right after another meets the
                # deletes (and freed inodes) of the one before it.
                results.append(
                    await one_round(base, master, url, n, concurrency, s, CLIENTS if r % 2 == 0 else CLIENTS[::-1])
                )
    finally:
        sink.terminate()
        sink.wait(10)

    def spread(values: list[float], fmt: str) -> str:
        text = format(statistics.median(values), fmt)
        return text if len(values) == 1 else f"{text} [{format(min(values), fmt)}-{format(max(values), fmt)}]"

    names = {
        "plain": f"plain aiohttp client, {n} x {size} B, {concurrency} at a time",
        "alone": "conveyor HttpTarget alone, same bodies, same concurrency",
        "spec": "plain client + the per-payload work (SHA-256, headers, delete)",
        "keep": f"conveyor local->http, after: keep (the default), max_in_flight {concurrency}",
        "delete": "conveyor local->http, after: delete",
    }
    rows: list[tuple[str, ...]] = [
        ("measure", "payloads/s (sink)", "ratio (per round)", "ratio (wall)", "CPU ms/payload")
    ]
    for name, label in names.items():
        rows.append(
            (
                label,
                spread([r[name][0] for r in results], ",.0f"),
                spread([r[name][0] / r["plain"][0] for r in results], ".2f"),
                spread([r[name][1] / r["plain"][1] for r in results], ".2f"),
                spread([r[name][2] * 1000 / n for r in results], ".2f"),
            )
        )
    rss = max(r[k][3] for r in results for k in ("keep", "delete"))
    rows.append(("daemon peak RSS", f"{rss / 1024:.0f} MB", "", "", ""))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=5000)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=1, help="repetitions, in alternating order; medians [min-max]")
    ap.add_argument("--dir", default=None)
    ap.add_argument("--sink", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.sink:
        sink_main(args.sink)
        return
    base = Path(tempfile.mkdtemp(prefix="conveyor-bench-http-", dir=args.dir))
    try:
        rows = asyncio.run(run(base, args.files, args.size, args.concurrency, args.rounds))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(table(rows))
    print(json.dumps({"note": "2 shared cores; numbers are noisy"}))


if __name__ == "__main__":
    main()
