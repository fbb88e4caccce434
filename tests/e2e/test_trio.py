"""An asyncio and a trio `ondoki serve` on one Redis: one service, whatever loop serves it."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx2 as httpx
import pytest

from tests.e2e.conftest import Start
from tests.e2e.process import ServeProcess
from tests.e2e.ws import WsClient, login, publish, publish_retrying
from tests.media.generate import Scene, write_video
from tests.redis_server import RedisServer

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

KEY = "e2e-api-key-0123456789abcdef"


def mixed(start: Start, redis: RedisServer, **env: str) -> tuple[ServeProcess, ServeProcess]:
    """(asyncio instance, trio instance), both ready."""
    options = {"REDIS_URL": redis.url(0), "ONDOKI_API_KEY": KEY, **env}
    on_asyncio = start("--worker-class", "asyncio", **options)
    on_trio = start("--worker-class", "trio", **options)
    return on_asyncio.wait_ready(), on_trio.wait_ready()


def test_sessions_and_state_are_shared_and_logout_holds_everywhere(
    start: Start, redis_server: RedisServer
) -> None:
    redis_server.flushall()
    a, t = mixed(start, redis_server)
    assert httpx.get(f"{t.url}/readyz").json()["status"] == "ready"
    alice = {"Authorization": f"Bearer {login(a.url, KEY, 'alice')}"}
    assert httpx.put(f"{t.url}/state/draft", json={"n": 1}, headers=alice).status_code == 200
    assert httpx.get(f"{a.url}/state/draft", headers=alice).json() == {"n": 1}
    assert httpx.put(f"{a.url}/state/draft", json={"n": 2}, headers=alice).status_code == 200
    assert httpx.get(f"{t.url}/state/draft", headers=alice).json() == {"n": 2}
    assert httpx.delete(f"{t.url}/sessions/me", headers=alice).status_code == 204
    assert httpx.get(f"{a.url}/sessions/me", headers=alice).status_code == 401
    assert httpx.get(f"{t.url}/sessions/me", headers=alice).status_code == 401


def test_notifications_cross_between_asyncio_and_trio_instances(
    start: Start, redis_server: RedisServer
) -> None:
    redis_server.flushall()
    a, t = mixed(start, redis_server)
    token = login(t.url, KEY, "alice")
    on_trio, on_asyncio = WsClient(t.url, token), WsClient(a.url, token)
    time.sleep(0.7)  # past the resume window
    sent = [publish(a.url, KEY, "alice", "from-asyncio", {"n": n}) for n in range(20)]
    sent += [publish(t.url, KEY, "alice", "from-trio", {"n": n}) for n in range(20)]
    for client in (on_trio, on_asyncio):
        frames = client.notifications(40)
        assert [(f["epoch"], f["offset"]) for f in frames] == sent
        assert [f["event"]["type"] for f in frames] == ["from-asyncio"] * 20 + ["from-trio"] * 20
        client.close()


def test_jobs_enqueued_on_trio_are_read_and_cancelled_from_either(
    start: Start, redis_server: RedisServer, tmp_path: Path
) -> None:
    redis_server.flushall()
    video = tmp_path / "clip.mp4"
    write_video(video, [Scene(1.0), Scene(1.0)])
    a, t = mixed(start, redis_server, ONDOKI_MEDIA_DIR=str(tmp_path / "media"))
    token = login(t.url, KEY, "alice")
    client = WsClient(a.url, token)
    time.sleep(0.7)
    alice = {"Authorization": f"Bearer {token}"}
    response = httpx.post(
        f"{t.url}/imports",
        content=video.read_bytes(),
        headers={**alice, "Content-Type": "video/mp4"},
        timeout=30,
    )
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    # No worker runs: the job waits in its queue until cancelled.
    assert httpx.get(f"{a.url}/jobs/{job_id}", headers=alice).json()["state"] == "queued"
    cancelled = httpx.delete(f"{t.url}/jobs/{job_id}", headers=alice)
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["state"] == "cancelled"
    assert httpx.get(f"{a.url}/jobs/{job_id}", headers=alice).json()["state"] == "cancelled"
    # The owner hears of the cancel on the asyncio instance, from the trio one (the
    # enqueue itself is not announced: the client got the job id in the reply).
    (frame,) = client.notifications(1)
    assert frame["event"]["type"] == "job.cancelled"
    assert frame["event"]["data"]["job_id"] == job_id
    client.close()


def test_killed_connections_on_trio_lose_and_repeat_nothing(
    start: Start, fresh_redis: RedisServer
) -> None:
    a, t = mixed(start, fresh_redis)
    token = login(t.url, KEY, "alice")
    clients = [WsClient(t.url, token), WsClient(a.url, token)]
    time.sleep(0.7)
    total = 200
    errors: list[str] = []

    def publisher() -> None:
        for n in range(total):
            # Alternately on each instance: both publish paths see the kills.
            publish_retrying((t if n % 2 else a).url, KEY, n, errors)
            time.sleep(0.005)

    thread = threading.Thread(target=publisher)
    thread.start()
    with fresh_redis.client() as admin:
        for _ in range(4):
            time.sleep(0.3)
            admin.client_kill_filter(_type="pubsub")
            admin.client_kill_filter(_type="normal", skipme=True)
    thread.join(60)
    for client in clients:
        data = [f["event"]["data"] for f in client.notifications(total, timeout=20)]
        assert data == list(range(total))
        client.close()


def test_resume_and_resync_on_trio(start: Start, fresh_redis: RedisServer) -> None:
    # The restart ends alice's session too (no persistence, no PostgreSQL here): the session
    # check before a ping would close the socket with 4001 if a loaded run reached one.
    a, t = mixed(start, fresh_redis, ONDOKI_WS_PING_INTERVAL_SECONDS="3600")
    token = login(a.url, KEY, "alice")
    first = WsClient(t.url, token)
    time.sleep(0.7)
    for n in range(3):
        publish(a.url, KEY, "alice", "seen", n)
    first.notifications(3)
    assert first.last is not None
    first.close()
    missed = [publish(a.url, KEY, "alice", "missed", n) for n in range(5)]
    again = WsClient(t.url, token, resume=first.last)
    assert [(f["epoch"], f["offset"]) for f in again.notifications(5)] == missed
    fresh_redis.restart()  # no persistence: history and sessions are gone
    deadline = time.monotonic() + 20
    while True:
        response = httpx.post(
            f"{a.url}/internal/notifications",
            json={"user_id": "alice", "type": "after", "data": 1},
            headers={"Authorization": f"Bearer {KEY}"},
            timeout=10,
        )
        if response.status_code == 202:
            break
        assert time.monotonic() < deadline, response.text
        time.sleep(0.1)
    assert again.recv()["type"] == "resync"
    publish(t.url, KEY, "alice", "after", 2)
    assert [f["event"]["data"] for f in again.notifications(2)] == [1, 2]
    again.close()
