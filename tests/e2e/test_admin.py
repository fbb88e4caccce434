"""The /admin dashboard in a real headless Chromium (Debian's `chromium`, driven by
Playwright) against a real `ondoki serve` on Redis: log in, see a dead job, retry it, see it
queued again. The screenshots are kept under `.artifacts/` (git-ignored)."""

from __future__ import annotations

import functools
import shutil
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from anyio.from_thread import start_blocking_portal
from playwright.sync_api import Browser, Page, expect, sync_playwright

from ondoki_adapters.redis.jobs import DramatiqJobQueue
from ondoki_adapters.redis.worker import run_worker
from tests.e2e.conftest import Start
from tests.integration.worker_main import build_kinds, fast_worker_options
from tests.redis_server import RedisServer
from tests.waits import finished

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

KEY = "admin-e2e-api-key-0123456789"
CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / ".artifacts"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"{CHROMIUM} is needed for the dashboard test (apt-get install chromium)")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        found = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield found
        found.close()


@asynccontextmanager
async def running_worker(broker: str) -> AsyncIterator[DramatiqJobQueue]:
    """An in-process worker on `broker` for the block, and a queue to enqueue with."""
    kinds = build_kinds()
    queue = DramatiqJobQueue(broker, kinds=kinds)
    try:
        async with anyio.create_task_group() as tasks:
            worker = functools.partial(
                run_worker, broker, kinds=kinds, options=fast_worker_options()
            )
            await tasks.start(worker)
            yield queue
            tasks.cancel_scope.cancel()
    finally:
        await queue.aclose()


async def dead_job(broker: str) -> str:
    """A `demo.checksum` with a payload it refuses, run to `dead` by a worker that is then
    stopped, so that a retried job stays queued."""
    async with running_worker(broker) as queue:
        job_id = await queue.enqueue("demo.checksum", {"size": -1}, owner="alice")
        assert (await finished(queue, job_id)).state == "dead"
    return job_id


async def instances(broker: str) -> list[str]:
    queue = DramatiqJobQueue(broker, kinds=build_kinds())
    try:
        return [instance.id for instance in await queue.instances()]
    finally:
        await queue.aclose()


def log_in(page: Page, url: str, key: str) -> None:
    page.goto(f"{url}/admin")
    expect(page.locator("#login")).to_be_visible()
    page.fill("#key", key)
    page.click("#login button[type=submit]")


def test_log_in_see_a_dead_job_retry_it_and_see_it_queued(
    start: Start, fresh_redis: RedisServer, browser: Browser
) -> None:
    serve = start(REDIS_URL=fresh_redis.url(0), ONDOKI_API_KEY=KEY).wait_ready()
    # In a thread of its own: Playwright's sync API keeps an event loop in this one.
    with ThreadPoolExecutor(1) as thread:
        job_id = thread.submit(anyio.run, dead_job, fresh_redis.url(1)).result(60)
    context = browser.new_context()
    page = context.new_page()
    # A wrong key is refused, and the form says so.
    log_in(page, serve.url, "not-the-key-0123456789")
    expect(page.locator("#login-error")).to_contain_text("refused")
    expect(page.locator("#dashboard")).to_be_hidden()

    log_in(page, serve.url, KEY)
    row = page.locator(f'#dead tr[data-job="{job_id}"]')
    expect(row).to_be_visible(timeout=15_000)
    expect(row).to_contain_text("size must be an integer")
    expect(page.locator("#instances tbody")).to_contain_text("alive")
    expect(page.locator("#doctor tbody")).not_to_contain_text("no findings")
    page.screenshot(path=ARTIFACTS / "admin-dead-job.png", full_page=True)

    row.get_by_role("button", name="Retry").click()
    expect(page.locator("#retried")).to_have_attribute("data-state", "queued")
    expect(page.locator("#retried")).to_contain_text(f"Job {job_id} is queued again")
    expect(row).to_have_count(0)
    celery = page.locator('#queues tr[data-queue="celery"] td').nth(1)
    expect(celery).to_have_text("1", timeout=10_000)
    page.screenshot(path=ARTIFACTS / "admin-dashboard.png", full_page=True)

    # The key is in this tab's sessionStorage only: not in the URL, not in a cookie.
    assert KEY not in page.url
    assert context.cookies() == []
    assert page.evaluate("sessionStorage.getItem('ondoki.admin.key')") == KEY
    other = browser.new_context().new_page()
    other.goto(f"{serve.url}/admin")
    expect(other.locator("#login")).to_be_visible()
    assert other.evaluate("sessionStorage.length") == 0
    page.click("#logout")
    expect(page.locator("#login")).to_be_visible()
    assert page.evaluate("sessionStorage.length") == 0
    context.close()

    # An instance that stops cleanly leaves the registry.
    assert serve.stop() == 0
    with ThreadPoolExecutor(1) as thread:
        assert thread.submit(anyio.run, instances, fresh_redis.url(1)).result(60) == []


def test_running_jobs_show_their_progress_live(
    start: Start, fresh_redis: RedisServer, browser: Browser, tmp_path: Path
) -> None:
    serve = start(REDIS_URL=fresh_redis.url(0), ONDOKI_API_KEY=KEY).wait_ready()
    with (
        start_blocking_portal() as portal,
        portal.wrap_async_context_manager(running_worker(fresh_redis.url(1))) as queue,
    ):
        job_id = portal.call(
            functools.partial(queue.enqueue, "test.slow", {"dir": str(tmp_path), "seconds": 8})
        )
        page = browser.new_page()
        log_in(page, serve.url, KEY)
        row = page.locator(f'#running tr[data-job="{job_id}"]')
        expect(row).to_contain_text("test.slow", timeout=15_000)
        expect(row).to_contain_text("work")
        first = float(row.locator("progress").get_attribute("value") or 0)
        # The next polls show it further along, without reloading the page.
        page.wait_for_function(
            f"""() => {{
                const bar = document.querySelector('#running tr[data-job="{job_id}"] progress');
                return bar !== null && bar.value > {first};
            }}""",
            timeout=15_000,
        )
        expect(page.locator("#workers tbody")).to_contain_text("alive")
        page.screenshot(path=ARTIFACTS / "admin-running-job.png", full_page=True)
        portal.call(queue.cancel, job_id)
        page.close()
