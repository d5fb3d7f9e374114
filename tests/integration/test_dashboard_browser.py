"""The dashboard in a real headless Chromium (Playwright), over real HTTP (uvicorn), with a real
worker running jobs: what the pages show, and retry and cancel clicked as an operator would.

Screenshots land in the test's tmp dir. Playwright cannot download its own browsers here: the
tests drive Debian's chromium and skip, saying so, where it is missing (.ci/run installs it).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import shutil
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from arq.connections import ArqRedis
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support.etl_process import drop_queue
from tests.support.import_files import CUSTOMER_HEADER, count, customer_line, write
from tests.support.live_worker import running_worker, stall_on_progress
from worker.client import EtlClient
from worker.dashboard.app import create_app
from worker.keys import failed_key, workers_key
from worker.settings import Settings

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
TOKEN = "browser-test-token"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(),
        reason="no chromium: apt-get install chromium (Playwright cannot fetch browsers here)",
    ),
    pytest.mark.timeout(180),
]
async_api = pytest.importorskip(
    "playwright.async_api", reason="playwright is not installed: pip install -e '.[dev]'"
)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "dashboard_token": SecretStr(TOKEN),
            "keep_result_s": 600,
            "worker_name": "browser-host",
        }
    )


@pytest.fixture(autouse=True)
async def _cleaned_after(settings: Settings, redis: ArqRedis) -> AsyncIterator[None]:
    yield
    await drop_queue(redis, settings.queue_name)
    await redis.delete(workers_key(settings.queue_name))


@contextlib.asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[str]:
    """The dashboard on a free loopback port, in this event loop; its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), log_config=None, access_log=False, lifespan="on")
    )
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(20):
            while not server.started:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    async with async_api.async_playwright() as playwright:
        chromium = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox"], headless=True
        )
        try:
            yield chromium
        finally:
            await chromium.close()


async def _page(browser: Any, base: str) -> Any:
    context = await browser.new_context(
        base_url=base, viewport={"width": 1360, "height": 1000}, accept_downloads=True
    )
    page = await context.new_page()
    page.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    return page


async def _sign_in(page: Any, then: str) -> None:
    await page.goto(f"/login?next={then}")
    await page.fill("input[name=token]", TOKEN)
    await page.click("button[type=submit]")
    await page.wait_for_url(f"**{then}")
    assert await page.locator("header .who").inner_text() == "signed in · sign out"


async def test_an_operator_watches_a_running_import_and_cancels_it(
    settings: Settings,
    redis: ArqRedis,
    engine: AsyncEngine,
    clean_db: None,
    browser: Any,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    write(settings, "big.csv", CUSTOMER_HEADER, *(customer_line(i) for i in range(1, 5001)))
    from jobs.imports import copying

    monkeypatch.setattr(copying, "BATCH_BYTES", 16 * 1024)
    stalled = stall_on_progress(monkeypatch, when=lambda c: c.get("rows", 0) >= 500)
    async with (
        EtlClient.from_redis(redis, settings) as client,
        running_worker(settings, redis),
        serving(settings) as base,
    ):
        ping = await client.ping({"touch_db": True})
        await ping.result(timeout=15)
        job = await client.import_file({"dataset": "customers", "path": "big.csv"})
        await asyncio.wait_for(stalled.wait(), 30)
        page = await _page(browser, base)

        await page.goto("/")
        row = page.locator("#running tr", has_text=job.job_id[:12])
        await row.wait_for()
        assert "import_file" in await row.inner_text()
        assert "browser-host" in await row.inner_text()
        assert "rows" in await row.inner_text()
        assert await row.locator("progress").count() == 1
        assert "1" in await page.locator(".count", has_text="in progress").inner_text()
        assert await page.locator("#running button", has_text="cancel").count() == 0  # read-only
        await page.screenshot(path=str(tmp_path / "overview-running.png"), full_page=True)

        await _sign_in(page, "/")
        await row.locator("button", has_text="cancel").click()
        await page.wait_for_url(f"**/jobs/{job.job_id}")
        assert await page.locator(".badge.cancelled").first.inner_text() == "cancelled"
        assert "transaction rolled back" in await page.locator("dl.facts").inner_text()
        await page.screenshot(path=str(tmp_path / "job-cancelled.png"), full_page=True)

        assert (await job.status()).state == "cancelled"
        assert await count(engine, "customers") == 0
        await redis.hset(workers_key(settings.queue_name), "gone", _stale_record())
        await page.goto("/workers")
        live = page.locator("tr", has_text="browser-host")
        assert "live" in await live.inner_text()
        assert "0/8" in await live.inner_text()
        stale = page.locator("tr.stale", has_text="crashed-host")
        assert "stale" in await stale.inner_text()
        colour = await stale.locator("td").first.evaluate("td => getComputedStyle(td).color")
        assert colour == "rgb(138, 148, 166)"  # greyed
        await page.screenshot(path=str(tmp_path / "workers.png"), full_page=True)


def _stale_record() -> bytes:
    now_ms = int(time.time() * 1000)
    return json.dumps(
        {
            "host": "crashed-host",
            "pid": 99,
            "queue": "q",
            "started_ms": now_ms - 7_200_000,
            "heartbeat_ms": now_ms - 95_000,
            "running": {},
            "max_jobs": 8,
        }
    ).encode()


async def test_an_operator_retries_a_failed_import_and_reads_its_rejects_and_export(
    settings: Settings,
    redis: ArqRedis,
    engine: AsyncEngine,
    clean_db: None,
    browser: Any,
    tmp_path: Path,
) -> None:
    async with (
        EtlClient.from_redis(redis, settings) as client,
        running_worker(settings, redis),
        serving(settings) as base,
    ):
        failed = await client.import_file({"dataset": "customers", "path": "late.csv"})
        assert (await _finished(failed)).state == "failed"
        for _ in range(100):  # the worker indexes what it finished within a second
            if await redis.zscore(failed_key(settings.queue_name), failed.job_id):
                break
            await asyncio.sleep(0.05)
        page = await _page(browser, base)
        await page.goto("/failed?function=import_file")
        row = page.locator("tr", has_text=failed.job_id[:12])
        assert "late.csv: no such file" in await row.inner_text()
        await page.screenshot(path=str(tmp_path / "failed.png"), full_page=True)

        good = [customer_line(i) for i in range(3, 33)]
        write(settings, "late.csv", CUSTOMER_HEADER, customer_line(2, email="broken"), *good)
        await _sign_in(page, "/failed")
        await row.locator("button", has_text="retry").click()
        await page.wait_for_url("**/jobs/*")
        new_id = page.url.rsplit("/", 1)[-1]
        assert new_id != failed.job_id
        # The page follows the job live until it completes; the rejects need a reload.
        await page.locator(".badge.complete").first.wait_for(timeout=20_000)
        await page.reload()
        rejects = page.locator("section", has_text="Rejected lines")
        assert "email: must hold exactly one @" in await rejects.inner_text()
        assert "broken" in await rejects.inner_text()
        await page.screenshot(path=str(tmp_path / "job-import.png"), full_page=True)
        assert await count(engine, "customers") == 30

        export = await client.export_dataset({"dataset": "customers"})
        result = await export.result(timeout=20)
        await page.goto(f"/jobs/{export.job_id}")
        assert result.sha256 in await page.locator("section", has_text="Files").inner_text()
        async with page.expect_download() as downloading:
            await page.locator("a", has_text="download").first.click()
        download = await downloading.value
        saved = tmp_path / download.suggested_filename
        await download.save_as(saved)
        assert hashlib.sha256(saved.read_bytes()).hexdigest() == result.sha256
        await page.screenshot(path=str(tmp_path / "job-export.png"), full_page=True)


async def _finished(handle: Any) -> Any:
    for _ in range(200):
        state = await handle.status()
        if state.finished:
            return state
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {handle.job_id} did not finish")
