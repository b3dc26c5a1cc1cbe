"""The status page at ``/`` in a real browser: Debian's Chromium, headless, driven by Playwright.

A daemon in this process moves files from a local folder to a real HTTP server (which answers
422 to some bodies until the test "fixes" it) and to a directory. The browser watches a flow's
delivered count rise without reloading, finds the failed item (its name is hostile HTML), Retries
it once the target is fixed and sees it delivered, Forgets it; a cross-site form POST is refused;
signed out, the page shows no item name. Screenshots (light and dark) go to
``$CONVEYOR_SCREENSHOTS`` when set, else to the test's tmp folder.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from conveyor.health_page import Query, Session, render_ledger
from conveyor.state.base import Item
from tests.servers.ops import daemon_in_process, http_sink, serve, wait_for, write_config

CHROMIUM = "/usr/bin/chromium"
TOKEN = "page-test-token-0123456789abcdef"
HOSTILE = '<img src=x onerror="window.pwned=1">zq-order<script>window.pwned=2<.csv'
"""A file name a partner could choose: HTML that runs script if the page does not escape it."""


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: scripts/test-setup installs Debian's chromium")
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM)
        try:
            yield b
        finally:
            await b.close()


def shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("CONVEYOR_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def page_config(tmp: Path, url: str) -> Path:
    for d in ("orders", "archive"):
        (tmp / d).mkdir()
    src = {"instance": "box", "poll_interval": "200ms", "min_age": "0s", "after": "delete"}
    flows = {
        "orders": {
            "source": {**src, "path": "orders"},
            "target": {"type": "http", "url": url},
            "retry": {"attempts": 1},
        },
        "archive": {"source": {**src, "path": "archive"}, "target": {"type": "directory", "path": str(tmp / "out")}},
    }
    return write_config(
        tmp / "conveyor.yaml",
        {
            "health": {"listen": "127.0.0.1:0", "token": TOKEN},
            "instances": {"box": {"type": "local", "root": str(tmp)}},
            "flows": flows,
        },
    )


async def delivered_count(page: Any, flow: str) -> int:
    text = await page.locator(f'tr[data-flow="{flow}"] td.delivered').inner_text()
    return int(text.replace(",", ""))


async def test_the_status_page_in_chromium(tmp_path: Path, browser: Any) -> None:
    target_broken = True

    def answer(request: web.Request) -> web.Response:
        body = sink.received[-1].body
        return web.Response(status=422 if target_broken and body.startswith(b"BAD") else 200, text="checked")

    async with http_sink() as sink:
        sink.default = answer
        cfg = page_config(tmp_path, sink.url)
        async with daemon_in_process(cfg) as d:
            base = d.health.url
            (tmp_path / "orders" / HOSTILE).write_text("BAD row 7")
            await wait_for(lambda: d.status.flows["orders"].failed == 1, 20)
            out = shots(tmp_path)

            # Signed out: counters and states, no item names (nor errors that could name one).
            context = await browser.new_context(color_scheme="light", viewport={"width": 1400, "height": 900})
            page = await context.new_page()
            await page.goto(base + "/")
            await page.locator('tr[data-flow="orders"]').wait_for()
            html = await page.content()
            assert "zq-order" not in html and "onerror" not in html
            assert "Sign in" in html
            await page.screenshot(path=str(out / "signed-out.png"), full_page=True)

            # Signed in with the token: the failed item is listed first, its name shown as text.
            await page.fill('input[name="token"]', TOKEN)
            await page.click("text=Sign in")
            row = page.locator("tr.item", has_text="zq-order<script>")
            await row.wait_for()
            assert await row.locator(".badge").inner_text() == "failed"
            assert await page.locator("tr.item").first.get_attribute("class") == "item failed"
            assert await page.evaluate("window.pwned") is None
            cookies = {c["name"]: c for c in await context.cookies()}
            assert cookies["conveyor_session"]["httpOnly"] and cookies["conveyor_session"]["sameSite"] == "Strict"

            # Files arrive: the delivered count rises on the page without a reload.
            before = await delivered_count(page, "archive")
            for i in range(10):
                (tmp_path / "archive" / f"a{i}.txt").write_text(f"archived {i}")
            await page.wait_for_function(
                "n => parseInt(document.querySelector('tr[data-flow=\"archive\"] td.delivered')"
                ".textContent.replace(/,/g, '')) >= n",
                arg=before + 10,
                timeout=20_000,
            )
            # More arrive until the sparkline has two samples to draw (one every few seconds).
            spark = page.locator('tr[data-flow="archive"] svg.spark')
            for i in range(10, 400):
                if await spark.count():
                    break
                (tmp_path / "archive" / f"a{i}.txt").write_text(f"archived {i}")
                await page.wait_for_timeout(50 * (i % 7))
            await spark.wait_for()
            await page.screenshot(path=str(out / "status-page-light.png"))
            await page.emulate_media(color_scheme="dark")
            await page.screenshot(path=str(out / "status-page-dark.png"))
            await page.emulate_media(color_scheme="light")

            # A cross-site form POST (a page on another origin submitting to the daemon) is refused,
            # even with this browser signed in.
            pid = (await d.store.list("orders", "failed"))[0].id
            evil = web.Application()
            form = (
                f'<form method=post action="{base}/page/retry"><input name=flow value=orders>'
                f'<input name=id value="{pid}"><input name=csrf value=guess></form>'
                "<script>document.forms[0].submit()</script>"
            )

            async def attack(_r: web.Request) -> web.Response:
                return web.Response(text=form, content_type="text/html")

            evil.router.add_get("/", attack)
            async with serve(evil, "127.0.0.2") as port:
                attacker = await context.new_page()
                async with attacker.expect_response(lambda r: "/page/retry" in r.url) as refused:
                    await attacker.goto(f"http://127.0.0.2:{port}/")
                assert (await refused.value).status == 403
                await attacker.close()
            assert (await d.store.get_many("orders", [pid]))[pid].state == "failed"

            # Search by name, fix the target, Retry: the item is delivered.
            await page.fill('input[name="q"]', "zq-order<script>")
            await page.select_option('select[name="state"]', "failed")
            await page.click("text=Search")
            await row.wait_for()
            target_broken = False
            await row.locator("text=Retry").click()
            await page.locator("p.note", has_text="will be delivered again").wait_for()
            await wait_for(lambda: d.status.flows["orders"].delivered == 1, 20)
            await page.select_option('select[name="state"]', "")
            await page.click("text=Search")
            await page.locator("tr.item.delivered", has_text="zq-order<script>").wait_for(timeout=20_000)
            assert sink.received[-1].body == b"BAD row 7"

            # Forget: the ledger no longer has it.
            await page.locator("tr.item", has_text="zq-order<script>").locator("text=Forget").click()
            await page.locator("p.note", has_text="was forgotten").wait_for()
            assert not await d.store.get_many("orders", [pid])
            assert await page.evaluate("window.pwned") is None

            # Signed out again: no item names.
            await page.click("text=Sign out")
            await page.locator('input[name="token"]').wait_for()
            assert "zq-order" not in await page.content()
            await context.close()

            # Without the browser: the live fragment and a sign-in with a wrong token.
            async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
                async with s.get(base + "/page/live") as r:
                    assert r.status == 200 and "zq-order" not in await r.text()
                    etag = r.headers["ETag"]
                    assert set(await r.json()) == {"head", "instances", "flows", "ledger"}
                # Given its ETag back, the refresh leaves out what the browser has: the signed-out
                # ledger section never changes (the others show times that tick).
                async with s.get(base + "/page/live", headers={"If-None-Match": etag}) as r:
                    assert r.status == 304 or (r.status == 200 and "ledger" not in await r.json()), r.status
                async with s.get(base + "/page/live", headers={"If-None-Match": '"stale"'}) as r:
                    assert r.status == 200 and "ledger" in await r.json()
                async with s.get(base + "/") as r:
                    csrf = r.cookies["conveyor_sign_in"].value
                async with s.post(base + "/page/sign-in", data={"token": "wrong", "csrf": csrf}) as r:
                    assert r.status == 401 and "Wrong token" in await r.text()
                async with s.post(base + "/page/forget", data={"flow": "orders", "id": pid, "csrf": csrf}) as r:
                    assert r.status == 403

    for name in ("status-page-light.png", "status-page-dark.png", "signed-out.png"):
        assert (out / name).stat().st_size > 10_000
    docs = os.environ.get("CONVEYOR_DOCS_SCREENSHOTS")
    if docs:  # scripts/docs-screenshots --status-page copies them into the docs
        for name in ("status-page-light.png", "status-page-dark.png"):
            shutil.copy(out / name, Path(docs) / name)


def test_item_names_are_escaped_in_the_ledger() -> None:
    item = Item(
        "f", "id1", "failed", 1, "<script>alert(1)</script>", False, "<script>alert(1)</script>", None, 1, 0.0,
        None, 0.0, 0.0,
    )  # fmt: skip
    html = render_ledger({"items": [item]}, Session("c", b"", 0.0), Query())
    assert "<script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
