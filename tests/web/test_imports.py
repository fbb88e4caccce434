"""Imports and jobs over HTTP, in process on the memory adapters (jobs run in the app):
upload, progress, guide and frames; every bad upload refused with a reason, nothing kept."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import pytest
from starlette.testclient import TestClient

from ondoki.domain.signed_urls import UrlSigner
from ondoki.entrypoints.bootstrap import build_kinds, open_services
from ondoki.entrypoints.services import Services
from ondoki.errors import RetryableJobError
from ondoki.ports.jobs import JobContext
from ondoki.support.settings import Settings
from ondoki_adapters.web.app import create_app
from tests.media.generate import Scene, write_video
from tests.web.conftest import API_KEY, Api
from tests.web.test_api import error_of


def always_fails(ctx: JobContext, payload: dict[str, Any]) -> None:
    raise ValueError("this job always fails")


def flaky(ctx: JobContext, payload: dict[str, Any]) -> None:
    raise RetryableJobError("try again")


class App(Api):
    def __init__(self, client: TestClient, services: Services, media: Path) -> None:
        super().__init__(client)
        self.services = services
        self.media = media

    def enqueue(self, kind: str, owner: str) -> str:
        assert self.client.portal is not None
        job_id: str = self.client.portal.call(
            lambda: self.services.jobs.enqueue(kind, {}, owner=owner)
        )
        return job_id

    def wait(self, job_id: str, auth: dict[str, str], *states: str) -> dict[str, Any]:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            record: dict[str, Any] = self.client.get(f"/jobs/{job_id}", headers=auth).json()
            if record["state"] in states:
                return record
            time.sleep(0.05)
        raise AssertionError(f"job {job_id} never reached {states}: {record}")

    def uploads(self) -> list[Path]:
        root = self.media / "imports"
        return sorted(root.iterdir()) if root.exists() else []


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("videos") / "three-steps.mp4"
    write_video(path, [Scene(1.5), Scene(1.5), Scene(2.0)])
    return path.read_bytes()


@pytest.fixture
def app(tmp_path: Path, anyio_backend: Literal["asyncio", "trio"]) -> Iterator[App]:
    settings = Settings(media_dir=str(tmp_path / "media"), max_upload_bytes=5_000_000)
    kinds = build_kinds(settings)
    kinds.register("test.fails", always_fails, queue="celery", max_attempts=1)
    kinds.register("test.flaky", flaky, queue="celery", max_attempts=2)
    opened: list[Services] = []

    @asynccontextmanager
    async def services() -> AsyncIterator[Services]:
        async with open_services(settings, api_key=API_KEY, kinds=kinds) as found:
            opened.append(found)
            yield found

    with TestClient(create_app(services), backend=anyio_backend) as client:
        yield App(client, opened[0], tmp_path / "media")


def test_upload_runs_the_import_and_serves_the_guide(app: App, video: bytes) -> None:
    alice = app.login("alice")
    response = app.client.post(
        "/imports", content=video, headers={**alice, "Content-Type": "video/mp4"}
    )
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    assert response.headers["location"] == f"/jobs/{job_id}"
    record = app.wait(job_id, alice, "succeeded", "dead")
    assert record["state"] == "succeeded", record
    assert record["progress"] == 1.0 and record["owner"] == "alice"
    assert record["stage"] is None  # cleared on success
    # Times are RFC 3339 in UTC, like every other time in a response.
    for field in ("created_at", "updated_at", "started_at", "finished_at"):
        assert datetime.fromisoformat(record[field]).tzinfo is not None, field
    # The result names the guide by URL, never by the server's file path.
    assert record["result"]["guide"] == f"/imports/{job_id}/guide"

    guide = app.client.get(f"/imports/{job_id}/guide", headers=alice).json()
    assert len(guide["steps"]) == 3
    for step in guide["steps"]:
        # Signed: an <img> loads it with no Authorization header.
        frame = app.client.get(step["frame_url"])
        assert frame.status_code == 200
        assert frame.headers["content-type"] == "image/jpeg"
        assert frame.content[:3] == b"\xff\xd8\xff"
        # The owner's session works too, without the signature.
        unsigned = step["frame_url"].split("?", 1)[0]
        assert app.client.get(unsigned, headers=alice).status_code == 200
    markdown = app.client.get(f"/imports/{job_id}/guide?format=md", headers=alice)
    assert markdown.headers["content-type"].startswith("text/markdown")
    assert "step" in markdown.text.lower()

    # Another user can neither see the job nor its guide or frames.
    bob = app.login("bob")
    unsigned = guide["steps"][0]["frame_url"].split("?", 1)[0]
    for path in (f"/jobs/{job_id}", f"/imports/{job_id}/guide", unsigned):
        error_of(app.client.get(path, headers=bob), 404)
    # Only frames the guide lists are served: no path games.
    for name in ("..%2F..%2Fsource", "step-999.jpg", "source"):
        error_of(app.client.get(f"/imports/{job_id}/frames/{name}", headers=alice), 404)


def test_frame_urls_are_signed_and_expire(app: App, video: bytes) -> None:
    alice = app.login("alice")
    response = app.client.post(
        "/imports", content=video, headers={**alice, "Content-Type": "video/mp4"}
    )
    job_id = response.json()["job_id"]
    assert app.wait(job_id, alice, "succeeded", "dead")["state"] == "succeeded"
    steps = app.client.get(f"/imports/{job_id}/guide", headers=alice).json()["steps"]
    url = steps[0]["frame_url"]
    path, _, query = url.partition("?")
    params = dict(part.split("=", 1) for part in query.split("&"))
    assert set(params) == {"expires", "signature"}
    assert app.client.get(url).status_code == 200

    other = steps[1]["frame_url"].split("?", 1)[0]
    tampered = [
        f"{other}?{query}",  # another frame with this one's signature
        f"{path}?expires={int(params['expires']) + 300}&signature={params['signature']}",
        f"{path}?expires={params['expires']}&signature={params['signature'][:-2]}AA",
        f"{path}?expires={params['expires']}",
        f"{path}?expires=soon&signature={params['signature']}",
        # Digits that are not ASCII, a signature that is not: 403, never a 500.
        f"{path}?expires=%C2%B2&signature={params['signature']}",
        f"{path}?expires={params['expires']}&signature=%C3%A9{params['signature'][2:]}",
    ]
    for bad in tampered:
        assert error_of(app.client.get(bad), 403)["code"] == "forbidden", bad

    # Expired: a URL signed an hour and more ago (the same key, an earlier clock).
    urls = app.services.urls
    old = UrlSigner(urls.key, ttl=urls.ttl, clock=lambda: time.time() - urls.ttl - 600)
    expired = error_of(app.client.get(old.sign(path)), 403)
    assert "expired" in expired["message"]


def test_idempotency_key_gives_one_job(app: App, video: bytes) -> None:
    alice = app.login("alice")
    headers = {**alice, "Idempotency-Key": "upload-1", "Content-Type": "video/mp4"}
    first = app.client.post("/imports", content=video, headers=headers).json()["job_id"]
    again = app.client.post("/imports", content=video, headers=headers).json()["job_id"]
    assert first == again
    assert len(app.uploads()) == 1
    # The same key from another user is another import.
    bob = {**app.login("bob"), "Idempotency-Key": "upload-1", "Content-Type": "video/mp4"}
    assert app.client.post("/imports", content=video, headers=bob).json()["job_id"] != first


@pytest.mark.parametrize(
    ("body", "headers", "status", "says"),
    [
        (b"", {"Content-Type": "video/mp4"}, 415, "empty"),
        (b"\x00garbage" * 1000, {"Content-Type": "video/mp4"}, 415, "unsupported video"),
        (b"x" * 10, {"Content-Type": "application/json"}, 415, "video"),
        (b"x" * 10, {"Content-Type": "text/plain"}, 415, "video"),
        (b"x" * 5_000_001, {"Content-Type": "video/mp4"}, 413, "limit"),
        (b"x", {"Content-Type": "video/mp4", "Idempotency-Key": "has space"}, 422, "Idempotency"),
    ],
)
def test_bad_uploads_are_refused_and_nothing_is_kept(
    app: App, body: bytes, headers: dict[str, str], status: int, says: str
) -> None:
    alice = app.login("alice")
    response = app.client.post("/imports", content=body, headers={**alice, **headers})
    assert says.lower() in error_of(response, status)["message"].lower()
    assert app.uploads() == []


def test_truncated_video_is_refused_with_the_reason(app: App, video: bytes) -> None:
    alice = app.login("alice")
    response = app.client.post(
        "/imports", content=video[: len(video) // 3], headers={**alice, "Content-Type": "video/mp4"}
    )
    error = error_of(response, 415)
    assert error["code"] == "unsupported_media_type"
    assert app.uploads() == []


def test_uploads_need_a_session(app: App, video: bytes) -> None:
    error_of(app.client.post("/imports", content=video), 401)
    error_of(app.client.post("/imports", content=video, headers=app.internal), 401)


def test_guide_of_an_unfinished_or_failed_job(app: App) -> None:
    alice = app.login("alice")
    job_id = app.enqueue("test.fails", "alice")
    app.wait(job_id, alice, "dead")
    error_of(app.client.get(f"/imports/{job_id}/guide", headers=alice), 404)  # not an import
    error_of(app.client.get("/imports/no-such-job/guide", headers=alice), 404)


def test_dead_jobs_are_listed_and_replayed(app: App) -> None:
    alice = app.login("alice")
    job_id = app.enqueue("test.fails", "alice")
    dead = app.wait(job_id, alice, "dead")
    assert "always fails" in dead["error"]
    listed = app.client.get("/internal/jobs/dead", headers=app.internal).json()["jobs"]
    assert [job["id"] for job in listed] == [job_id]
    replay = app.client.post(f"/internal/jobs/{job_id}/retry", headers=app.internal)
    assert replay.status_code == 202 and replay.json()["state"] == "queued"
    assert app.wait(job_id, alice, "dead")["attempts"] == 1
    # Retrying a job that is not dead is a conflict, not a 500.
    flaky = app.enqueue("test.flaky", "alice")
    app.wait(flaky, alice, "failed", "queued", "dead")
    running_or_not = app.client.post(f"/internal/jobs/{job_id}x/retry", headers=app.internal)
    error_of(running_or_not, 404)


@pytest.mark.parametrize("query", ["?limit=0", "?limit=abc", "?limit=5000", "?limit=%C2%B2"])
def test_dead_list_limit_is_checked(app: App, query: str) -> None:
    error_of(app.client.get(f"/internal/jobs/dead{query}", headers=app.internal), 422)


def test_internal_job_endpoints_need_the_api_key(app: App) -> None:
    alice = app.login("alice")
    error_of(app.client.get("/internal/jobs/dead", headers=alice), 401)
    error_of(app.client.post("/internal/jobs/x/retry", headers=alice), 401)


def test_cancel_a_job(app: App) -> None:
    alice = app.login("alice")
    job_id = app.enqueue("test.flaky", "alice")
    response = app.client.delete(f"/jobs/{job_id}", headers=alice)
    assert response.status_code == 200
    assert response.json()["state"] in {"cancelled", "dead"}
    assert app.wait(job_id, alice, "cancelled", "dead")["state"] == "cancelled"
    error_of(app.client.delete(f"/jobs/{job_id}", headers=app.login("bob")), 404)


def test_old_imports_are_swept_and_recent_ones_kept(app: App, video: bytes) -> None:
    alice = app.login("alice")
    headers = {**alice, "Content-Type": "video/mp4"}
    old = app.client.post("/imports", content=video, headers=headers).json()["job_id"]
    app.wait(old, alice, "succeeded")
    [old_dir] = app.uploads()
    ancient = time.time() - app.services.imports.key_ttl - 60
    os.utime(old_dir, (ancient, ancient))
    fresh = app.client.post("/imports", content=video, headers=headers).json()["job_id"]
    app.wait(fresh, alice, "succeeded")
    assert app.client.portal is not None
    assert app.client.portal.call(app.services.imports.sweep) == 1
    assert old_dir not in app.uploads() and len(app.uploads()) == 1
    error_of(app.client.get(f"/imports/{old}/guide", headers=alice), 404)


def test_users_list_their_own_jobs_and_imports(app: App, video: bytes) -> None:
    alice, bob = app.login("alice"), app.login("bob")
    response = app.client.post(
        "/imports", content=video, headers={**alice, "Content-Type": "video/mp4"}
    )
    assert response.status_code == 202, response.text
    upload = response.json()["job_id"]
    failed = [app.enqueue("test.fails", "alice") for _ in range(3)]
    others = app.enqueue("test.fails", "bob")
    for job_id in failed:
        app.wait(job_id, alice, "dead")
    listed = app.client.get("/jobs", headers=alice).json()
    assert [job["id"] for job in listed["jobs"]] == [*failed[::-1], upload]
    assert listed["next_cursor"] is None
    imports = app.client.get("/imports", headers=alice).json()
    assert [job["id"] for job in imports["jobs"]] == [upload]
    dead = app.client.get("/jobs?state=dead&kind=test.fails&limit=2", headers=alice).json()
    assert [job["id"] for job in dead["jobs"]] == failed[:0:-1]
    rest = app.client.get(f"/jobs?state=dead&cursor={dead['next_cursor']}", headers=alice)
    assert [job["id"] for job in rest.json()["jobs"]] == [failed[0]]
    assert [job["id"] for job in app.client.get("/jobs", headers=bob).json()["jobs"]] == [others]
    for query in ("?state=sleeping", "?limit=0", "?limit=x", "?cursor=!!"):
        error_of(app.client.get(f"/jobs{query}", headers=alice), 422)
    error_of(app.client.get("/jobs"), 401)
    error_of(app.client.get("/imports", headers=app.internal), 401)
    app.wait(upload, alice, "succeeded")


def test_admin_routes_show_queues_workers_failures_and_replay_dead_jobs(app: App) -> None:
    alice = app.login("alice")
    job_id = app.enqueue("test.fails", "alice")
    app.wait(job_id, alice, "dead")
    for path in ("queues", "workers", "jobs/dead", "jobs/failures"):
        error_of(app.client.get(f"/internal/admin/{path}", headers=alice), 401)
    queues = app.client.get("/internal/admin/queues", headers=app.internal).json()
    assert set(queues["queues"]) == {"celery", "media"}
    assert queues["queues"]["celery"]["waiting"] == 0
    [worker] = app.client.get("/internal/admin/workers", headers=app.internal).json()["workers"]
    assert worker["alive"] and worker["pid"] == os.getpid()
    dead = app.client.get("/internal/admin/jobs/dead", headers=app.internal).json()["jobs"]
    assert [(job["id"], job["error"]) for job in dead] == [
        (job_id, "ValueError: this job always fails")
    ]
    failed = app.client.get("/internal/admin/jobs/failures", headers=app.internal).json()
    assert [job["id"] for job in failed["jobs"]] == [job_id]
    error_of(app.client.get("/internal/admin/jobs/dead?limit=0", headers=app.internal), 422)
    retried = app.client.post(f"/internal/admin/jobs/{job_id}/retry", headers=app.internal)
    assert retried.status_code == 202 and retried.json()["state"] == "queued"
    app.wait(job_id, alice, "dead")
    again = app.client.post("/internal/admin/jobs/nope/retry", headers=app.internal)
    error_of(again, 404)


def test_admin_page_and_assets_are_served_with_a_strict_policy(app: App) -> None:
    page = app.client.get("/admin")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert "sessionStorage" not in page.text  # the key handling is in admin.js, not inline
    script = app.client.get("/admin/static/admin.js")
    assert script.status_code == 200 and "sessionStorage" in script.text
    assert "localStorage" not in script.text and "document.cookie" not in script.text
    assert app.client.get("/admin/static/admin.css").status_code == 200
    for name in ("index.html", "..%2Fadmin.py", "nope.js"):
        error_of(app.client.get(f"/admin/static/{name}"), 404)


def test_admin_instances_and_doctor(app: App) -> None:
    for path in ("instances", "doctor"):
        error_of(app.client.get(f"/internal/admin/{path}", headers=app.login("x")), 401)
    [instance] = app.client.get("/internal/admin/instances", headers=app.internal).json()[
        "instances"
    ]
    assert instance["alive"] and instance["pubsub_ok"] and instance["pid"] == os.getpid()
    assert instance["websockets"] == 0
    findings = app.client.get("/internal/admin/doctor", headers=app.internal).json()["findings"]
    # What `ondoki doctor` says: the Redis part (nothing to check in memory) and the
    # database part (sessions stay in the process without DATABASE_URL).
    assert [(f["target"], f["severity"]) for f in findings] == [
        ("memory", "info"),
        ("database", "info"),
    ]
