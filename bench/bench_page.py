"""What the status page costs: the daemon's CPU with the page open, and how fast the page loads.

``cpu``: a feeder moves 1 KiB files into a watched folder at a steady rate (default 1,000 a
second); the daemon (a child process) delivers them to a directory. Its CPU time is measured over
windows of the same length, alternately with no browser and with the page open and signed in in
headless Chromium (Debian's ``chromium``, driven by Playwright; the page refreshes itself every
two seconds). Printed side by side, with the ratio of CPU time per payload delivered.

``load``: a daemon with 100 flows and a ledger of 100,000 items (one in fifty failed). The time
to load ``/`` signed in (HTML from the server, then the whole page in Chromium until its ``load``
event), beside ``GET /status`` as the reference.

    python bench/bench_page.py [--part cpu|load|both] [--rate 1000] [--seconds 30] [--items 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from common import Daemon, table, write_config

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.servers.ops import free_port

from conveyor.state.sqlite import SCHEMA

TOKEN = "bench-page-token-0123456789abcdef"
CHROMIUM = "/usr/bin/chromium"


async def wait_up(base: str) -> None:
    async with aiohttp.ClientSession() as s:
        for _ in range(600):
            try:
                async with s.get(base + "/readyz") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise TimeoutError("the daemon did not become ready")


async def delivered(base: str) -> int:
    async with aiohttp.ClientSession() as s, s.get(base + "/status") as r:
        doc = await r.json()
    return sum(int(f["delivered"]) for f in doc["flows"].values())


async def open_page(p: Any, base: str) -> tuple[Any, Any]:
    """Chromium with the page open and signed in."""
    browser = await p.chromium.launch(executable_path=CHROMIUM)
    page = await browser.new_page(viewport={"width": 1400, "height": 900})
    await page.goto(base + "/")
    await page.fill('input[name="token"]', TOKEN)
    await page.click("text=Sign in")
    await page.locator('input[name="q"]').wait_for()
    return browser, page


# -- cpu ----------------------------------------------------------------------------------------
FEEDER = """
import os, sys, time
staging, inbox, rate = sys.argv[1], sys.argv[2], int(sys.argv[3])
body = os.urandom(1024)
step, n, nxt = max(1, rate // 10), 0, time.monotonic()
while True:
    for _ in range(step):
        name = f"f{n:08}.dat"
        with open(os.path.join(staging, name), "wb") as f:
            f.write(body)
        os.rename(os.path.join(staging, name), os.path.join(inbox, name))
        n += 1
    nxt += 0.1
    time.sleep(max(0.0, nxt - time.monotonic()))
"""
"""Moves 1 KiB files into the watched folder at a steady rate, a tenth of a second's worth at a
time: a process of its own, so the browser's driver in this one does not slow it."""


async def cpu_part(base_dir: Path, rate: int, seconds: float, rounds: int) -> list[tuple[str, ...]]:
    from playwright.async_api import async_playwright

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    inbox, staging = base_dir / "disk" / "in", base_dir / "disk" / "staging"
    inbox.mkdir(parents=True)
    staging.mkdir()
    flows = {
        "f": {
            "source": {"instance": "disk", "path": "in", "poll_interval": "100ms", "min_age": "0s", "after": "delete"},
            "target": {"type": "directory", "path": str(base_dir / "out"), "fsync": False},
            "max_in_flight": 200,
        }
    }
    cfg = write_config(
        base_dir,
        {"disk": {"type": "local", "root": str(base_dir / "disk")}},
        flows,
        health={"listen": f"127.0.0.1:{port}", "token": TOKEN},
        retention="1m",
    )
    d = Daemon(cfg)
    feeder: subprocess.Popen[bytes] | None = None
    rows: list[tuple[str, ...]] = []
    try:
        await wait_up(base)
        feeder = subprocess.Popen(  # noqa: ASYNC220 (started once, not waited for)
            [sys.executable, "-c", FEEDER, str(staging), str(inbox), str(rate)]
        )
        await asyncio.sleep(5)  # steady state first

        totals = {False: [0.0, 0], True: [0.0, 0]}

        async def window(open_page_too: bool) -> None:
            c0, n0, t0 = d.cpu_seconds(), await delivered(base), time.monotonic()
            await asyncio.sleep(seconds)
            c1, n1, t1 = d.cpu_seconds(), await delivered(base), time.monotonic()
            totals[open_page_too][0] += c1 - c0
            totals[open_page_too][1] += n1 - n0
            label = "page open, signed in (refresh every 2 s)" if open_page_too else "no browser"
            rows.append(
                (
                    label,
                    f"{(n1 - n0) / (t1 - t0):,.0f}",
                    f"{(c1 - c0) / (t1 - t0) * 100:.1f} %",
                    f"{(c1 - c0) / max(1, n1 - n0) * 1e6:.0f}",
                )
            )

        # Alternating windows, so a change in the machine's load falls on both sides alike.
        async with async_playwright() as p:
            for _ in range(rounds):
                await window(False)
                browser, _page = await open_page(p, base)
                try:
                    await asyncio.sleep(3)
                    await window(True)
                finally:
                    await browser.close()
        per = {k: c / max(1, n) for k, (c, n) in totals.items()}
        rows.append(("daemon CPU per payload, with the page / without", "", "", f"{per[True] / per[False]:.3f}x"))
    finally:
        if feeder is not None:
            feeder.kill()
            feeder.wait()
        d.stop()
    return [("window", "payloads/s", "daemon CPU", "CPU µs/payload"), *rows]


# -- load ---------------------------------------------------------------------------------------
def fill_ledger(db: Path, flows: list[str], items: int) -> None:
    """``items`` rows spread over ``flows`` (one in fifty failed, with an error), written directly."""
    conn = sqlite3.connect(db)
    conn.executescript(SCHEMA)
    now = time.time()
    per = items // len(flows)
    rows = []
    for fi, flow in enumerate(flows):
        for i in range(per):
            k = fi * per + i
            failed = k % 50 == 0
            rows.append(
                (
                    flow,
                    f"{k:032x}",
                    "failed" if failed else "delivered",
                    1,
                    "POST https://partner.example/orders: HTTP 422 Unprocessable Entity" if failed else None,
                    0 if failed else 1,
                    f"order-{k:06}.csv",
                    f"in/order-{k:06}.csv",
                    2048,
                    now - k,
                    None,
                    None,
                    now - k,
                    now - k,
                )
            )
    conn.executemany("INSERT INTO items VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
    conn.commit()
    conn.close()


async def timed_get(s: aiohttp.ClientSession, url: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        async with s.get(url) as r:
            await r.read()
            assert r.status == 200, r.status
        out.append((time.perf_counter() - t0) * 1000)
    return out


async def load_part(base_dir: Path, flows_n: int, items: int, rounds: int) -> list[tuple[str, ...]]:
    from playwright.async_api import async_playwright

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    names = [f"flow{i:03}" for i in range(flows_n)]
    (base_dir / "disk").mkdir()
    src = {"instance": "disk", "poll_interval": "1h", "min_age": "0s", "after": "delete"}
    flows = {}
    for n in names:
        (base_dir / "disk" / n).mkdir()
        flows[n] = {"source": {**src, "path": n}, "target": {"type": "directory", "path": str(base_dir / "out" / n)}}
    cfg = write_config(
        base_dir,
        {"disk": {"type": "local", "root": str(base_dir / "disk")}},
        flows,
        health={"listen": f"127.0.0.1:{port}", "token": TOKEN},
    )
    fill_ledger(base_dir / "state.db", names, items)
    d = Daemon(cfg)
    try:
        await wait_up(base)
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
            status = await timed_get(s, base + "/status", rounds)
            async with s.get(base + "/") as r:
                csrf = r.cookies["conveyor_sign_in"].value
            async with s.post(base + "/page/sign-in", data={"token": TOKEN, "csrf": csrf}) as r:
                assert r.status == 200 and "Sign out" in await r.text()
            page_html = await timed_get(s, base + "/", rounds)
            search = await timed_get(s, base + "/?q=order-0999&state=failed", rounds)
            live = await timed_get(s, base + "/page/live", rounds)
            any_state = await timed_get(s, base + "/?q=order-0999", rounds)
        browser_ms: dict[str, list[float]] = {"/": [], "/status": []}
        async with async_playwright() as p:
            browser, page = await open_page(p, base)
            try:
                for _ in range(rounds):
                    for path, times in browser_ms.items():
                        await page.goto(base + path, wait_until="load")
                        times.append(
                            await page.evaluate(
                                "(() => { const t = performance.getEntriesByType('navigation')[0];"
                                " return t.loadEventEnd - t.startTime; })()"
                            )
                        )
            finally:
                await browser.close()
    finally:
        d.stop()
    label = f"{flows_n} flows, {items:,} ledger items"

    def row(what: str, xs: list[float]) -> tuple[str, ...]:
        return (f"{what} ({label})", f"{statistics.median(xs):.1f}", f"{max(xs):.1f}", str(len(xs)))

    return [
        ("measure", "median ms", "max ms", "samples"),
        row("GET /status (reference)", status),
        row("GET / signed in, HTML", page_html),
        row("GET /?q=…&state=failed, HTML", search),
        row("GET /?q=… in every state, HTML", any_state),
        row("GET /page/live (each refresh)", live),
        row("Chromium: /status JSON to the load event (reference)", browser_ms["/status"]),
        row("Chromium: the page to the load event", browser_ms["/"]),
    ]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", choices=["cpu", "load", "both"], default="both")
    ap.add_argument("--rate", type=int, default=1000, help="files a second for the cpu part")
    ap.add_argument("--seconds", type=float, default=30.0, help="length of each cpu window")
    ap.add_argument("--cpu-rounds", type=int, default=3, help="pairs of cpu windows (without, with the page)")
    ap.add_argument("--flows", type=int, default=100)
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--dir", default=None, help="where to work (default: a temp folder)")
    args = ap.parse_args()
    for part in ["cpu", "load"] if args.part == "both" else [args.part]:
        base = Path(tempfile.mkdtemp(prefix="conveyor-bench-page-", dir=args.dir))
        try:
            if part == "cpu":
                print(table(asyncio.run(cpu_part(base, args.rate, args.seconds, args.cpu_rounds))))
            else:
                print(table(asyncio.run(load_part(base, args.flows, args.items, args.rounds))))
        finally:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
