"""The whole import path on real components: upload through `ondoki serve` on Redis, a real
`ondoki worker` process, progress on /ws, the guide and its frames over HTTP."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import pytest

from tests.e2e.conftest import Start
from tests.e2e.process import assert_clean_logs, clean_env
from tests.e2e.ws import WsClient, login
from tests.media.generate import Scene, has_espeak, write_video
from tests.redis_server import RedisServer

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

KEY = "e2e-api-key-0123456789abcdef"
FAST_WORKER = {
    "ONDOKI_WORKER_HEARTBEAT_TIMEOUT_SECONDS": "4",
    "ONDOKI_WORKER_REQUEUE_INTERVAL_SECONDS": "1",
    "ONDOKI_WORKER_POLL_INTERVAL_SECONDS": "0.2",
}


@pytest.fixture
def worker(tmp_path: Path, fresh_redis: RedisServer) -> Iterator[subprocess.Popen[bytes]]:
    log = tmp_path / "worker.log"
    env = clean_env(
        REDIS_URL=fresh_redis.url(0),
        ONDOKI_MEDIA_DIR=str(tmp_path / "media"),
        ONDOKI_API_KEY=KEY,
        **FAST_WORKER,
    )
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "ondoki", "worker", "--queues", "celery,media"],
            cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    yield process
    process.terminate()
    assert process.wait(30) == 0, log.read_text()
    assert_clean_logs(log.read_text(), "ondoki worker")


@pytest.mark.parametrize("worker_class", ["asyncio", "trio"])
def test_upload_to_guide_with_progress_on_the_websocket(
    start: Start,
    fresh_redis: RedisServer,
    worker: subprocess.Popen[bytes],
    tmp_path: Path,
    worker_class: str,
) -> None:
    if not has_espeak():
        pytest.fail(
            "espeak-ng is needed to make the narrated test video (apt-get install espeak-ng)"
        )
    video = tmp_path / "recording.mp4"
    write_video(
        video,
        [Scene(2.5, say="hello world", say_at=0.4), Scene(2.0), Scene(2.5, say="what time is it")],
        audio=True,
    )
    server = start(
        "--worker-class",
        worker_class,
        REDIS_URL=fresh_redis.url(0),
        ONDOKI_API_KEY=KEY,
        ONDOKI_MEDIA_DIR=str(tmp_path / "media"),
    ).wait_ready()
    token = login(server.url, KEY, "alice")
    client = WsClient(server.url, token)
    time.sleep(0.7)
    auth = {"Authorization": f"Bearer {token}"}
    response = httpx.post(
        f"{server.url}/imports",
        content=video.read_bytes(),
        headers={**auth, "Content-Type": "video/mp4", "Idempotency-Key": "rec-1"},
        timeout=30,
    )
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]

    stages: list[str | None] = []
    progress: list[float] = []
    while True:
        frame = client.recv(timeout=120)
        assert frame["type"] == "notification", frame
        event = frame["event"]
        assert event["data"]["job_id"] == job_id
        if event["type"] == "job.progress":
            stages.append(event["data"]["stage"])
            progress.append(event["data"]["progress"])
            continue
        assert event["type"] == "job.succeeded", event
        break
    # The first event says the job started (no stage yet); then each stage in order.
    assert stages[0] is None
    assert list(dict.fromkeys(stages[1:])) == [
        "extracting_frames",
        "transcribing",
        "generating_guide",
    ]
    assert progress == sorted(progress)

    record = httpx.get(f"{server.url}/jobs/{job_id}", headers=auth).json()
    assert record["state"] == "succeeded" and record["attempts"] == 1
    guide = httpx.get(f"{server.url}/imports/{job_id}/guide", headers=auth).json()
    assert len(guide["steps"]) == 3
    assert guide["narration"] != "none"
    spoken = " ".join(step["text"] for step in guide["steps"])
    assert guide["steps"][1]["text"] == ""  # the silent scene has no words
    assert spoken.strip()
    for step in guide["steps"]:
        image = httpx.get(f"{server.url}{step['frame_url']}", headers=auth)
        assert image.status_code == 200 and image.content[:3] == b"\xff\xd8\xff"
    # A retried upload with the same key is the same job, not a second import.
    again = httpx.post(
        f"{server.url}/imports",
        content=video.read_bytes(),
        headers={**auth, "Content-Type": "video/mp4", "Idempotency-Key": "rec-1"},
        timeout=30,
    )
    assert again.json()["job_id"] == job_id
    client.close()
