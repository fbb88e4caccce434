"""Real worker processes that are killed, stopped and run side by side on a real Redis.

Workers are `python -m tests.integration.worker_main` subprocesses with short timings
(heartbeat timeout 2 s, janitor every 0.25 s, lease 1.5 s), so that dramatiq notices a dead
worker within seconds.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from ondoki.errors import JobQueueError
from ondoki.models import JobRecord
from ondoki.ports.jobs import JobQueue
from ondoki_adapters.redis.bridge import open_job_queue
from ondoki_adapters.redis.jobs import JobKeys, blocking_client, build_broker, job_message
from ondoki_adapters.redis.worker import EXIT_REPLACED
from tests import waits
from tests.integration.worker_main import build_kinds
from tests.redis_server import RedisServer

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

ROOT = Path(__file__).resolve().parents[2]


class Workers:
    """Starts worker processes and makes sure none outlives the test."""

    def __init__(self, url: str, where: Path) -> None:
        self.url = url
        self.where = where
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self) -> subprocess.Popen[bytes]:
        n = len(self.processes)
        ready = self.where / f"worker-{n}.ready"
        with open(self.where / f"worker-{n}.log", "wb") as log:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.integration.worker_main",
                    self.url,
                    "--ready",
                    str(ready),
                ],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.processes.append(process)
        deadline = time.monotonic() + 20
        while not ready.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker {n} did not start: {self.log(n)}")
            time.sleep(0.02)
        return process

    def log(self, n: int) -> str:
        return (self.where / f"worker-{n}.log").read_text()

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait(10)


@pytest.fixture
def workers(fresh_redis: RedisServer, tmp_path: Path) -> Iterator[Workers]:
    running = Workers(fresh_redis.url(1), tmp_path)
    yield running
    running.close()


@pytest.fixture
async def queue(fresh_redis: RedisServer, anyio_backend: str) -> AsyncIterator[JobQueue]:
    # The API side on the test's event loop (on trio through a private asyncio loop); the
    # workers are processes of their own either way. The workers' heartbeat timeout (see
    # worker_main), for telling dead workers.
    jobs = open_job_queue(fresh_redis.url(1), kinds=build_kinds(), worker_timeout=2.0)
    yield jobs
    await jobs.aclose()


def send_raw(url: str, message: Any) -> None:
    """Hand `message` to dramatiq directly, as a duplicate delivery would (blocking)."""
    client = blocking_client(url)
    try:
        build_broker(client, JobKeys("ondoki")).enqueue(message)
    finally:
        client.close()


async def finished(jobs: JobQueue, job_id: str, *, within: float = 30.0) -> JobRecord:
    """`tests.waits.finished` with room for real worker processes to start and crash."""
    return await waits.finished(jobs, job_id, within=within)


async def appears(pattern: str, where: Path, *, within: float = 15.0) -> list[Path]:
    with anyio.fail_after(within):
        while True:
            found = sorted([Path(path) async for path in anyio.Path(where).glob(pattern)])
            if found:
                return found
            await anyio.sleep(0.02)


async def exits(process: subprocess.Popen[bytes], *, within: float = 15.0) -> int:
    with anyio.fail_after(within):
        while True:
            code = process.poll()
            if code is not None:
                return code
            await anyio.sleep(0.02)


def intervals(where: Path, job_id: str) -> list[tuple[float, float, int]]:
    """(start, last alive, pid) of every attempt of `job_id`, in start order."""
    found = []
    for path in (where / "intervals").glob(f"{job_id}.*"):
        start, end = (float(value) for value in path.read_text().split())
        found.append((start, end, int(path.name.rsplit(".", 1)[1])))
    return sorted(found)


async def test_a_killed_workers_job_is_finished_by_the_next_worker(
    workers: Workers, queue: JobQueue, tmp_path: Path
) -> None:
    first = workers.start()
    job_id = await queue.enqueue("test.slow", {"dir": str(tmp_path), "seconds": 1.5})
    await appears(f"intervals/{job_id}.1.*", tmp_path)
    await anyio.sleep(0.2)
    # Registered, with the job, as of its next heartbeat (every 0.25 s).
    with anyio.fail_after(10):
        while True:
            [registered] = await queue.workers()
            if registered.jobs:
                break
            await anyio.sleep(0.05)
    assert (registered.pid, registered.alive) == (first.pid, True)
    assert [job.job_id for job in registered.jobs] == [job_id]
    first.kill()
    first.wait(10)
    assert (await queue.get(job_id)).state == "running"
    # Listed as dead once its heartbeat is past the timeout, with the job it died on.
    with anyio.fail_after(10):
        while True:
            [dead] = await queue.workers()
            if not dead.alive:
                break
            await anyio.sleep(0.1)
    assert dead.pid == first.pid and [job.job_id for job in dead.jobs] == [job_id]

    workers.start()
    record = await finished(queue, job_id)
    assert record.state == "succeeded"
    assert record.attempts == 2
    assert record.result == {"pid": workers.processes[1].pid}
    (_, end1, pid1), (start2, _, pid2) = intervals(tmp_path, job_id)
    assert (pid1, pid2) == (first.pid, workers.processes[1].pid)
    assert end1 < start2


async def test_a_job_that_kills_its_worker_ends_dead_and_never_loops(
    workers: Workers, queue: JobQueue, tmp_path: Path
) -> None:
    job_id = await queue.enqueue("test.poison", {"dir": str(tmp_path)})
    # max_attempts=2: two workers die running it; the third finds no attempt left.
    for attempt in (1, 2):
        process = workers.start()
        assert await exits(process) == -signal.SIGKILL
        assert (tmp_path / f"poison.{attempt}.{process.pid}").exists()
        record = await queue.get(job_id)
        assert (record.state, record.attempts) == ("running", attempt)
    survivor = workers.start()
    record = await finished(queue, job_id)
    assert record.state == "dead"
    assert record.attempts == 2
    assert record.error is not None and "worker died during attempt 2" in record.error
    assert [record.id for record in await queue.dead()] == [job_id]
    # The survivor keeps working, and nobody runs the poison again.
    checked = await queue.enqueue("demo.checksum", {"size": 1000})
    assert (await finished(queue, checked)).state == "succeeded"
    await anyio.sleep(2.5)  # longer than the heartbeat timeout: any redelivery would be done
    assert survivor.poll() is None
    assert len(await appears("poison.*", tmp_path)) == 2


async def test_two_workers_share_the_queue_and_never_run_a_job_at_once(
    workers: Workers, queue: JobQueue, tmp_path: Path
) -> None:
    workers.start()
    workers.start()
    job_ids = [
        await queue.enqueue("test.slow", {"dir": str(tmp_path), "seconds": 0.4}) for _ in range(8)
    ]
    # A duplicate message for each job, as dramatiq produces when it takes a live (but
    # silent) worker for dead: both workers may now hold a message for the same job.
    for job_id in job_ids:
        message = job_message(job_id, "media", 0)
        await anyio.to_thread.run_sync(send_raw, workers.url, message)
    records = [await finished(queue, job_id) for job_id in job_ids]
    assert [(r.state, r.attempts) for r in records] == [("succeeded", 1)] * 8
    pids = set()
    for job_id in job_ids:
        runs = intervals(tmp_path, job_id)
        assert len(runs) == 1, runs
        pids.add(runs[0][2])
    assert pids == {process.pid for process in workers.processes}
    # Let the duplicates come and go: none may start another attempt.
    await anyio.sleep(1.0)
    assert [(await queue.get(job_id)).attempts for job_id in job_ids] == [1] * 8
    assert all(len(intervals(tmp_path, job_id)) == 1 for job_id in job_ids)


async def test_a_redelivered_message_waits_while_the_lease_is_held(
    workers: Workers, queue: JobQueue, tmp_path: Path
) -> None:
    first = workers.start()
    second = workers.start()
    job_id = await queue.enqueue("test.slow", {"dir": str(tmp_path), "seconds": 2.5})
    await appears(f"intervals/{job_id}.1.*", tmp_path)
    # The same job's message again while it runs: the idle worker must not start it.
    await anyio.to_thread.run_sync(send_raw, workers.url, job_message(job_id, "media", 0))
    await anyio.sleep(0.5)
    (runner_pid,) = {pid for _, _, pid in intervals(tmp_path, job_id)}
    # Now kill the worker running it: the job must still finish, on the other one.
    victim = first if runner_pid == first.pid else second
    victim.kill()
    record = await finished(queue, job_id)
    assert (record.state, record.attempts) == ("succeeded", 2)
    runs = intervals(tmp_path, job_id)
    assert len(runs) == 2
    assert runs[0][1] < runs[1][0], "two attempts overlapped"


async def test_sigterm_stops_gracefully_and_gives_the_job_back(
    workers: Workers, queue: JobQueue, tmp_path: Path
) -> None:
    first = workers.start()
    running = await queue.enqueue("test.slow", {"dir": str(tmp_path), "seconds": 3.0})
    waiting = await queue.enqueue("test.slow", {"dir": str(tmp_path), "seconds": 0.1})
    await appears(f"intervals/{running}.1.*", tmp_path)
    first.send_signal(signal.SIGTERM)
    assert await exits(first, within=10) == 0
    assert await queue.workers() == []  # it left the registry
    interrupted = await queue.get(running)
    assert (interrupted.state, interrupted.attempts) == ("queued", 0)
    assert (await queue.get(waiting)).state == "queued"

    workers.start()
    for job_id in (running, waiting):
        record = await finished(queue, job_id)
        assert (record.state, record.attempts) == ("succeeded", 1)


async def test_a_busy_worker_leaves_other_queues_to_idle_workers(
    workers: Workers, queue: JobQueue, tmp_path: Path
) -> None:
    workers.start()
    busy = await queue.enqueue("test.block", {"dir": str(tmp_path), "name": "long"})
    await appears("long.started", tmp_path)
    short = await queue.enqueue("test.slow", {"dir": str(tmp_path), "seconds": 0.1}, queue="celery")
    # Time for the busy worker's idle `celery` consumer to (wrongly) take the message.
    await anyio.sleep(0.5)
    idle = workers.start()
    record = await finished(queue, short, within=10)
    assert record.result == {"pid": idle.pid}
    assert (await queue.get(busy)).state == "running"
    await queue.cancel(busy)
    await appears("long.stopped", tmp_path)


async def test_an_unreachable_broker_raises_job_queue_errors(fresh_redis: RedisServer) -> None:
    queue = open_job_queue(fresh_redis.url(1), kinds=build_kinds())
    job_id = await queue.enqueue("demo.checksum", {"size": 10})
    fresh_redis.kill()
    for operation in (
        lambda: queue.enqueue("demo.checksum", {}),
        lambda: queue.get(job_id),
        lambda: queue.cancel(job_id),
        lambda: queue.dead(),
        lambda: queue.retry(job_id),
        queue.ping,
    ):
        with pytest.raises(JobQueueError) as caught:
            await operation()
        assert "Redis" in str(caught.value)
    await queue.aclose()


async def test_a_job_stuck_past_its_time_limit_and_grace_has_its_worker_replaced(
    workers: Workers, queue: JobQueue, tmp_path: Path
) -> None:
    stuck_worker = workers.start()
    job_id = await queue.enqueue("test.stuck", {"dir": str(tmp_path), "seconds": 60})
    await appears("stuck.*", tmp_path)
    # Limit 0.3 s, grace 0.5 s, watchdog every 0.25 s (worker_main).
    assert await exits(stuck_worker, within=15) == EXIT_REPLACED
    record = await queue.get(job_id)
    assert (record.state, record.attempts) == ("dead", 1)
    assert record.error is not None and "its worker was replaced" in record.error
    assert "no checkpoint" in workers.log(0)
    # The message it held comes back to a new worker, which leaves the dead job alone.
    workers.start()
    fresh = await queue.enqueue("demo.checksum", {"size": 10})
    assert (await finished(queue, fresh)).state == "succeeded"
    await anyio.sleep(2.5)  # past the heartbeat timeout: the held message is redelivered
    assert (await queue.get(job_id)).state == "dead"
    assert len(await appears("stuck.*", tmp_path)) == 1
