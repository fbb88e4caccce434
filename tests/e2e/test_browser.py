"""The JavaScript client in headless Chromium (Debian's, driven by Playwright): loaded as an
ES module from a page on another origin, it keeps every notification, in order and once,
while the instance it is connected to is stopped (SIGTERM) and started again and events are
published through a second instance on the same Redis meanwhile."""

from __future__ import annotations

import functools
import shutil
import threading
import time
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from playwright.sync_api import Page, sync_playwright

from tests.e2e.conftest import Start
from tests.e2e.ws import login, publish
from tests.redis_server import RedisServer, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

KEY = "e2e-api-key-0123456789abcdef"
CLIENT = Path(__file__).parents[2] / "clients" / "js"
CHROMIUM = "/usr/bin/chromium"

PAGE = b"""<!doctype html>
<meta charset="utf-8">
<title>ondoki client</title>
<script type="module">
import { OndokiClient } from "/index.js";

const params = new URLSearchParams(location.hash.slice(1));
const api = params.get("api");
const token = params.get("token");
const auth = { headers: { Authorization: `Bearer ${token}` } };
window.received = [];
window.states = [];

async function crossOrigin(url) {
  try {
    const response = await fetch(url, auth);  // with a preflight: Authorization is not simple
    return { status: response.status, body: await response.json() };
  } catch (error) {
    return { failed: String(error) };
  }
}
window.listed = await crossOrigin(`${api}/sessions/me`);
window.unlisted = await crossOrigin(`${params.get("other")}/sessions/me`);

const client = new OndokiClient({ url: api, token, backoff: { initial: 100, max: 1000 } });
client.on("notification", (n) => window.received.push(n.data.n));
client.on("state", (s) => window.states.push(s));
client.start();
window.client = client;
</script>
"""


class _Files(SimpleHTTPRequestHandler):
    """clients/js as it is on disk, and the test page."""

    def do_GET(self) -> None:
        if self.path == "/page.html":
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(PAGE)))
            self.end_headers()
            self.wfile.write(PAGE)
            return
        super().do_GET()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def page_origin() -> Iterator[str]:
    server = ThreadingHTTPServer(
        ("127.0.0.1", free_port()), functools.partial(_Files, directory=str(CLIENT))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def page() -> Iterator[Page]:
    assert shutil.which(CHROMIUM), "install Debian's chromium (apt-get install chromium)"
    with sync_playwright() as playwright:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser.new_page()
        browser.close()


def wait_for(page: Page, expression: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = page.evaluate(expression)
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"not true within {timeout}s: {expression}")


def test_a_browser_keeps_every_notification_across_a_restart(
    start: Start, fresh_redis: RedisServer, page_origin: str, page: Page
) -> None:
    env = {"REDIS_URL": fresh_redis.url(0), "ONDOKI_API_KEY": KEY}
    a = start(ONDOKI_CORS_ORIGINS=page_origin, **env)
    b = start(**env).wait_ready()  # no CORS: a browser may not call it from another origin
    a.wait_ready()
    token = login(a.url, KEY, "browser-user")
    page.goto(f"{page_origin}/page.html#api={a.url}&other={b.url}&token={token}")

    # A real cross-origin fetch: allowed where the origin is listed, blocked where not.
    listed = wait_for(page, "window.listed")
    assert listed == {"status": 200, "body": listed["body"]}
    assert listed["body"]["user_id"] == "browser-user"
    assert "failed" in wait_for(page, "window.unlisted")

    wait_for(page, "window.client && window.client.state === 'open'")
    sent = 0

    def send(count: int) -> None:
        nonlocal sent
        for _ in range(count):
            publish(b.url, KEY, "browser-user", "step", {"n": sent})
            sent += 1

    send(10)
    wait_for(page, "window.received.length >= 10")

    assert a.stop() == 0  # SIGTERM: the client is closed with 1012 and starts reconnecting
    send(10)  # through B while A is down
    a = start(port=a.port, ONDOKI_CORS_ORIGINS=page_origin, **env).wait_ready()
    wait_for(page, "window.client.state === 'open' && window.states.length > 3")
    send(10)

    wait_for(page, f"window.received.length >= {sent}")
    time.sleep(0.5)  # a duplicate would arrive right behind the last one
    assert page.evaluate("window.received") == list(range(sent))
    codes = page.evaluate("window.states.filter(s => s.code).map(s => s.code)")
    assert 1012 in codes, codes
    page.evaluate("window.client.stop()")


def test_the_readable_guide_shows_its_pictures_in_a_browser(
    start: Start, page: Page, tmp_path: Path
) -> None:
    """The HTML guide, shown from another origin (here: about:blank): its <img> tags load
    the signed frame URLs without any Authorization header."""
    from tests.media.generate import Scene, write_video

    server = start(ONDOKI_API_KEY=KEY).wait_ready()  # memory adapters: jobs run in process
    video = tmp_path / "tour.mp4"
    write_video(video, [Scene(1.5), Scene(1.5)])
    auth = {"Authorization": f"Bearer {login(server.url, KEY, 'reader')}"}
    captions = b"1\n00:00:00,000 --> 00:00:01,400\nOpen the menu.\n"
    uploaded = httpx.post(
        f"{server.url}/imports",
        headers=auth,
        files={"video": ("Menu tour.mp4", video.read_bytes()), "captions": ("t.srt", captions)},
        timeout=60,
    )
    assert uploaded.status_code == 202, uploaded.text
    job = uploaded.json()["job_id"]
    deadline = time.monotonic() + 120
    while httpx.get(f"{server.url}/jobs/{job}", headers=auth).json()["state"] != "succeeded":
        assert time.monotonic() < deadline, "the import did not finish"
        time.sleep(0.1)
    html = httpx.get(f"{server.url}/imports/{job}/guide?format=html", headers=auth).text

    page.set_content(html)
    assert page.title() == "Menu tour"
    loaded = wait_for(
        page,
        "[...document.images].length === 2 && "
        "[...document.images].every(i => i.complete && i.naturalWidth > 0)",
    )
    assert loaded
    assert "Open the menu." in page.inner_text("body")
