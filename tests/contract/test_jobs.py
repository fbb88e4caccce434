"""The JobQueue port's contract, run against every adapter (see conftest.py).

Each adapter runs its jobs for real: the memory adapter in its own task group, the Redis
adapter in an in-process dramatiq worker. Handlers are the kinds of
`tests.integration.worker_main`; they leave marker files in `tmp_path`.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from ondoki.errors import InvalidInput, JobStateError, NotFound
from ondoki.models import InstanceInfo
from ondoki.ports.jobs import JobQueue
from tests.contract.conftest import JobEvents
from tests.waits import finished

pytestmark = pytest.mark.anyio


async def appears(path: Path, *, within: float = 10.0) -> None:
    with anyio.fail_after(within):
        while True:
            if await anyio.Path(path).exists():
                return
            await anyio.sleep(0.01)


def payload(tmp_path: Path, **values: Any) -> dict[str, Any]:
    return {"dir": str(tmp_path), **values}


def expected_checksum(size: int, chunk: int, seed: str) -> str:
    digest = hashlib.sha256()
    for index, offset in enumerate(range(0, size, chunk)):
        digest.update(
            hashlib.shake_256(f"{seed}:{index}".encode()).digest(min(chunk, size - offset))
        )
    return digest.hexdigest()


async def test_job_runs_to_success_with_result_and_progress(
    jobs: JobQueue, job_events: JobEvents
) -> None:
    size, chunk = 1 << 20, 128 << 10
    job_id = await jobs.enqueue("demo.checksum", {"size": size, "chunk": chunk, "seed": "s"})
    record = await finished(jobs, job_id)
    assert record.state == "succeeded"
    assert record.result["sha256"] == expected_checksum(size, chunk, "s")
    assert record.result["bytes"] == size and record.result["chunks"] == 8
    assert record.progress == 1.0
    assert record.attempts == 1
    assert record.error is None
    await job_events.wait_for(job_id, "succeeded")
    assert job_events.states(job_id) == ["queued", "running", "succeeded"]
    stages = [r.stage for r in job_events.of(job_id) if r.state == "running" and r.stage]
    assert stages[0] == "prepare" and stages[-1] == "finalize"
    assert stages.count("hash") == 8
    progress = [r.progress for r in job_events.of(job_id)]
    assert progress == sorted(progress) and progress[-1] == 1.0


async def test_record_carries_owner_key_and_timestamps(jobs: JobQueue) -> None:
    before = time.time()
    job_id = await jobs.enqueue(
        "demo.checksum", {"size": 1000}, owner="user-1", idempotency_key="import-1"
    )
    queued = await jobs.get(job_id)
    assert queued.id == job_id
    assert (queued.kind, queued.queue, queued.owner) == ("demo.checksum", "celery", "user-1")
    assert queued.idempotency_key == "import-1"
    assert queued.max_attempts == 3
    assert before <= queued.created_at <= time.time()
    record = await finished(jobs, job_id)
    assert record.started_at is not None and record.finished_at is not None
    assert record.created_at <= record.started_at <= record.finished_at
    assert record.updated_at == record.finished_at <= time.time()
    assert record.owner == "user-1"


async def test_enqueue_validates_kind_queue_and_payload(jobs: JobQueue) -> None:
    with pytest.raises(InvalidInput):
        await jobs.enqueue("no.such.kind", {})
    with pytest.raises(InvalidInput):
        await jobs.enqueue("demo.checksum", {}, queue="no-such-queue")
    with pytest.raises(InvalidInput):
        await jobs.enqueue("demo.checksum", {"not json": object()})
    job_id = await jobs.enqueue("demo.checksum", {"size": 10}, queue="media")
    assert (await jobs.get(job_id)).queue == "media"
    assert (await finished(jobs, job_id)).state == "succeeded"


async def test_retryable_failure_is_retried_after_a_backoff(
    jobs: JobQueue, job_events: JobEvents, tmp_path: Path
) -> None:
    job_id = await jobs.enqueue("test.flaky", payload(tmp_path, succeed_on=2))
    record = await finished(jobs, job_id)
    assert record.state == "succeeded"
    assert record.attempts == 2
    assert record.result == {"attempt": 2}
    await job_events.wait_for(job_id, "succeeded")
    assert job_events.states(job_id) == [
        "queued", "running", "failed", "queued", "running", "succeeded"
    ]  # fmt: skip
    failed = next(r for r in job_events.of(job_id) if r.state == "failed")
    assert failed.error == "RetryableJobError: not yet (attempt 1)"


async def test_non_retryable_error_makes_the_job_dead(jobs: JobQueue, tmp_path: Path) -> None:
    job_id = await jobs.enqueue("test.broken", payload(tmp_path))
    record = await finished(jobs, job_id)
    assert record.state == "dead"
    assert record.attempts == 1
    assert record.error == "ValueError: boom: broken on purpose"
    assert record.finished_at is not None


async def test_exhausted_attempts_make_the_job_dead(
    jobs: JobQueue, job_events: JobEvents, tmp_path: Path
) -> None:
    job_id = await jobs.enqueue("test.flaky", payload(tmp_path, succeed_on=99))
    record = await finished(jobs, job_id)
    assert record.state == "dead"
    assert record.attempts == record.max_attempts == 3
    assert record.error is not None and "gave up after 3 attempts" in record.error
    await job_events.wait_for(job_id, "dead")
    assert job_events.states(job_id).count("running") == 3


async def test_dead_jobs_are_listed_newest_first_and_can_be_replayed(
    jobs: JobQueue, job_events: JobEvents, tmp_path: Path
) -> None:
    first = await jobs.enqueue("test.broken", payload(tmp_path))
    await finished(jobs, first)
    second = await jobs.enqueue("test.broken", payload(tmp_path))
    await finished(jobs, second)
    assert [record.id for record in await jobs.dead()] == [second, first]
    assert [record.id for record in await jobs.dead(limit=1)] == [second]

    (tmp_path / "fixed").touch()
    replayed = await jobs.retry(first)
    assert replayed.state == "queued"
    assert (replayed.attempts, replayed.error, replayed.finished_at) == (0, None, None)
    record = await finished(jobs, first)
    assert record.state == "succeeded"
    assert record.attempts == 1
    assert [record.id for record in await jobs.dead()] == [second]
    await job_events.wait_for(first, "succeeded")
    assert job_events.states(first)[-3:] == ["queued", "running", "succeeded"]


async def test_only_dead_jobs_can_be_retried(jobs: JobQueue) -> None:
    job_id = await jobs.enqueue("demo.checksum", {"size": 10})
    await finished(jobs, job_id)
    with pytest.raises(JobStateError):
        await jobs.retry(job_id)
    assert (await jobs.get(job_id)).state == "succeeded"


async def test_unknown_ids_are_not_found(jobs: JobQueue) -> None:
    for operation in (jobs.get, jobs.cancel, jobs.retry):
        with pytest.raises(NotFound):
            await operation("no-such-job")


async def test_cancelled_queued_job_never_starts(jobs: JobQueue, tmp_path: Path) -> None:
    # The worker runs one job at a time: `busy` keeps it occupied while `waiting` is queued.
    busy = await jobs.enqueue("test.block", payload(tmp_path, name="busy"))
    await appears(tmp_path / "busy.started")
    waiting = await jobs.enqueue("test.block", payload(tmp_path, name="waiting"))
    cancelled = await jobs.cancel(waiting)
    assert cancelled.state == "cancelled"
    assert cancelled.finished_at is not None
    await jobs.cancel(busy)
    assert (await finished(jobs, busy)).state == "cancelled"
    # Give the worker the time to (wrongly) pick the cancelled job up.
    await anyio.sleep(0.3)
    record = await jobs.get(waiting)
    assert (record.state, record.attempts, record.started_at) == ("cancelled", 0, None)
    assert not (tmp_path / "waiting.started").exists()


async def test_cancelled_running_job_stops_at_its_next_checkpoint(
    jobs: JobQueue, job_events: JobEvents, tmp_path: Path
) -> None:
    job_id = await jobs.enqueue("test.block", payload(tmp_path, name="victim"), owner="u")
    await appears(tmp_path / "victim.started")
    record = await jobs.cancel(job_id)
    assert record.state == "cancelled"
    await appears(tmp_path / "victim.stopped")
    assert (tmp_path / "victim.stopped").read_text() == "JobCancelled"
    # The handler's exit does not overwrite the cancellation.
    await anyio.sleep(0.2)
    final = await jobs.get(job_id)
    assert (final.state, final.attempts) == ("cancelled", 1)
    await job_events.wait_for(job_id, "cancelled")
    assert job_events.states(job_id)[-1] == "cancelled"
    # The worker is free again.
    after = await jobs.enqueue("demo.checksum", {"size": 10})
    assert (await finished(jobs, after)).state == "succeeded"


async def test_cancelling_a_finished_job_changes_nothing(jobs: JobQueue) -> None:
    job_id = await jobs.enqueue("demo.checksum", {"size": 10})
    record = await finished(jobs, job_id)
    assert await jobs.cancel(job_id) == record
    assert await jobs.get(job_id) == record


async def test_idempotency_key_returns_the_existing_job(jobs: JobQueue) -> None:
    first = await jobs.enqueue("demo.checksum", {"size": 10}, owner="a", idempotency_key="k")
    again = await jobs.enqueue("demo.checksum", {"size": 99}, owner="a", idempotency_key="k")
    assert again == first
    await finished(jobs, first)
    # Still the same job once it has finished, for as long as its record lives.
    assert await jobs.enqueue("demo.checksum", {}, owner="a", idempotency_key="k") == first
    # The key is scoped by owner and kind.
    other_owner = await jobs.enqueue("demo.checksum", {}, owner="b", idempotency_key="k")
    other_kind = await jobs.enqueue("test.flaky", {"dir": "."}, owner="a", idempotency_key="k")
    assert len({first, other_owner, other_kind}) == 3
    assert (await jobs.get(first)).result["bytes"] == 10


async def test_concurrent_enqueues_with_one_key_make_one_job(
    jobs: JobQueue, job_events: JobEvents
) -> None:
    ids: list[str] = []

    async def submit() -> None:
        ids.append(await jobs.enqueue("demo.checksum", {"size": 10}, idempotency_key="race"))

    async with anyio.create_task_group() as tasks:
        for _ in range(20):
            tasks.start_soon(submit)
    assert len(ids) == 20 and len(set(ids)) == 1
    await finished(jobs, ids[0])
    await job_events.wait_for(ids[0], "succeeded")
    assert {record.id for record in job_events.records} == {ids[0]}
    assert job_events.states(ids[0]).count("queued") == 1


@pytest.mark.parametrize("record_ttl", [1.0])
async def test_finished_records_expire_after_the_record_ttl(jobs: JobQueue) -> None:
    job_id = await jobs.enqueue("demo.checksum", {"size": 10}, idempotency_key="once")
    await finished(jobs, job_id)
    await anyio.sleep(1.3)
    with pytest.raises(NotFound):
        await jobs.get(job_id)
    # The idempotency key went with it.
    assert await jobs.enqueue("demo.checksum", {"size": 10}, idempotency_key="once") != job_id


async def test_ping_answers(jobs: JobQueue) -> None:
    await jobs.ping()


async def test_stats_count_the_backlog_and_its_age(jobs: JobQueue, tmp_path: Path) -> None:
    busy = await jobs.enqueue("test.block", payload(tmp_path, name="busy"))
    await appears(tmp_path / "busy.started")
    backlog = [
        await jobs.enqueue("test.block", payload(tmp_path, name=f"wait{n}")) for n in range(3)
    ]
    await anyio.sleep(0.2)
    stats = await jobs.stats()
    queue = stats.queues["media"]
    assert queue.waiting == 3
    assert queue.oldest_age is not None and queue.oldest_age >= 0.15
    assert stats.states["queued"] == 3
    assert set(stats.queues) == {"celery", "media"}
    for job_id in [*backlog, busy]:
        await jobs.cancel(job_id)
    await finished(jobs, busy)


async def test_list_jobs_shows_the_owners_jobs_newest_first_in_pages(jobs: JobQueue) -> None:
    mine = [await jobs.enqueue("demo.checksum", {"size": 10}, owner="alice") for _ in range(5)]
    theirs = await jobs.enqueue("demo.checksum", {"size": 10}, owner="bob")
    await jobs.enqueue("demo.checksum", {"size": 10})  # no owner: in no one's listing
    for job_id in mine:
        await finished(jobs, job_id)
    whole = await jobs.list_jobs("alice")
    assert [record.id for record in whole.jobs] == mine[::-1]
    assert whole.next_cursor is None
    pages: list[str] = []
    cursor: str | None = None
    while True:
        page = await jobs.list_jobs("alice", limit=2, cursor=cursor)
        assert len(page.jobs) <= 2
        pages.extend(record.id for record in page.jobs)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert pages == mine[::-1]
    assert [r.id for r in (await jobs.list_jobs("bob")).jobs] == [theirs]
    assert (await jobs.list_jobs("carol")).jobs == []


async def test_list_jobs_filters_on_state_and_kind(jobs: JobQueue, tmp_path: Path) -> None:
    good = await jobs.enqueue("demo.checksum", {"size": 10}, owner="alice")
    bad = await jobs.enqueue("test.broken", payload(tmp_path), owner="alice")
    await finished(jobs, good)
    await finished(jobs, bad)
    dead = await jobs.list_jobs("alice", state="dead")
    assert [record.id for record in dead.jobs] == [bad]
    checksums = await jobs.list_jobs("alice", kind="demo.checksum")
    assert [record.id for record in checksums.jobs] == [good]
    assert (await jobs.list_jobs("alice", kind="demo.checksum", state="dead")).jobs == []
    # A filtered listing pages as well: the filter is applied before the page is cut.
    more = [await jobs.enqueue("test.broken", payload(tmp_path), owner="alice") for _ in range(3)]
    for job_id in more:
        await finished(jobs, job_id)
    first = await jobs.list_jobs("alice", state="dead", limit=3)
    assert [record.id for record in first.jobs] == [*more[::-1]]
    assert first.next_cursor is not None
    rest = await jobs.list_jobs("alice", state="dead", limit=3, cursor=first.next_cursor)
    assert ([record.id for record in rest.jobs], rest.next_cursor) == ([bad], None)


async def test_list_jobs_refuses_bad_arguments(jobs: JobQueue) -> None:
    for bad in ({"limit": 0}, {"limit": 1001}, {"state": "sleeping"}, {"cursor": "%%%"}):
        with pytest.raises(InvalidInput):
            await jobs.list_jobs("alice", **bad)


async def test_workers_register_with_what_they_run(
    jobs: JobQueue, job_events: JobEvents, tmp_path: Path
) -> None:
    job_id = await jobs.enqueue("test.block", payload(tmp_path, name="seen"))
    await appears(tmp_path / "seen.started")
    with anyio.fail_after(10):
        while True:
            workers = await jobs.workers()
            if workers and workers[0].jobs:
                break
            await anyio.sleep(0.05)
    [worker] = workers
    assert worker.alive
    assert worker.pid > 0 and worker.host
    assert set(worker.queues) == {"celery", "media"}
    assert worker.started_at <= worker.heartbeat_at <= time.time() + 1
    [running] = worker.jobs
    assert (running.job_id, running.kind, running.attempt) == (job_id, "test.block", 1)
    await jobs.cancel(job_id)
    await finished(jobs, job_id)
    with anyio.fail_after(10):
        while True:
            [worker] = await jobs.workers()
            if not worker.jobs:
                break
            await anyio.sleep(0.05)


async def test_failures_lists_recent_failed_attempts_newest_first(
    jobs: JobQueue, tmp_path: Path
) -> None:
    assert await jobs.failures() == []
    flaky = await jobs.enqueue("test.flaky", payload(tmp_path, succeed_on=2))
    await finished(jobs, flaky)
    broken = await jobs.enqueue("test.broken", payload(tmp_path))
    await finished(jobs, broken)
    failures = await jobs.failures()
    assert [(r.id, r.state) for r in failures] == [(broken, "dead"), (flaky, "failed")]
    assert failures[1].error == "RetryableJobError: not yet (attempt 1)"
    assert [r.id for r in await jobs.failures(limit=1)] == [broken]


async def test_a_job_past_its_time_limit_fails_for_good_at_its_next_checkpoint(
    jobs: JobQueue, tmp_path: Path
) -> None:
    job_id = await jobs.enqueue("test.timeboxed", payload(tmp_path, name="boxed", limit=30))
    record = await finished(jobs, job_id)
    assert (record.state, record.attempts) == ("dead", 1)
    assert record.error == "JobTimedOut: the job ran past its time limit of 0.3s"
    assert (tmp_path / "boxed.stopped").read_text() == "JobTimedOut"
    assert record.finished_at is not None and record.started_at is not None
    assert record.finished_at - record.started_at < 10


async def test_instances_are_announced_and_refreshed(jobs: JobQueue) -> None:
    assert await jobs.instances() == []
    now = time.time()
    first = InstanceInfo(id="api-1", host="h", pid=1, started_at=now, heartbeat_at=now)
    await jobs.announce(first)
    await jobs.announce(msgspec.structs.replace(first, websockets=3, heartbeat_at=now + 1))
    [seen] = await jobs.instances()
    assert (seen.id, seen.websockets, seen.alive) == ("api-1", 3, True)
    await jobs.withdraw("api-1")
    assert await jobs.instances() == []
