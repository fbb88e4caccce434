"""The job queue as each loop runs it (directly on asyncio, through `ThreadedJobQueue` on
trio): one Redis budget per request whatever the loop, threads of its own for the bridge's
waits, and nothing left unclosed by a cancelled first call."""

from __future__ import annotations

import threading

import anyio
import anyio.to_thread
import pytest

from ondoki.domain.jobs import JobKinds
from ondoki.errors import JobQueueError
from ondoki.models import JobRecord
from ondoki.ports.jobs import JobNotify
from ondoki.support.deadline import Budget, budget, current
from ondoki_adapters.redis.bridge import ThreadedJobQueue, open_job_queue
from ondoki_adapters.redis.jobs import DramatiqJobQueue
from tests.integration.worker_main import build_kinds
from tests.redis_server import RedisServer

pytestmark = pytest.mark.anyio

TIMEOUT = 1.0


@pytest.mark.redis
async def test_job_calls_spend_the_requests_redis_budget(fresh_redis: RedisServer) -> None:
    told: list[Budget | None] = []

    async def notify(record: JobRecord) -> None:
        told.append(current())

    queue = open_job_queue(fresh_redis.url(1), kinds=build_kinds(), notify=notify, timeout=TIMEOUT)
    try:
        with budget() as enqueuing:
            job_id = await queue.enqueue("demo.checksum", {"size": 10})
        # The notification (`queued`), a Redis publish, spends the enqueue's budget too.
        assert len(told) == 1
        assert told[0] is enqueuing
        with fresh_redis.frozen(), budget() as spent:
            with pytest.raises(JobQueueError, match=rf"within {TIMEOUT:g} s"):
                await queue.get(job_id)
            # The caller's budget paid for it (on trio the call ran on another loop, in
            # another thread: before, the budget there was not the request's).
            assert spent.left == 0
            with pytest.raises(JobQueueError, match="within 0 s"):
                await queue.cancel(job_id)
        assert (await queue.get(job_id)).id == job_id
    finally:
        await queue.aclose()


class ClosingQueue(DramatiqJobQueue):
    """Says whether it was closed."""

    closed = False

    async def aclose(self) -> None:
        await super().aclose()
        self.closed = True


@pytest.mark.redis
async def test_bridge_calls_wait_in_threads_of_their_own(redis_server: RedisServer) -> None:
    kinds = build_kinds()

    def build(relay: JobNotify | None) -> DramatiqJobQueue:
        return DramatiqJobQueue(redis_server.url(1), kinds=kinds, notify=relay)

    queue = ThreadedJobQueue(build)
    shared = anyio.to_thread.current_default_thread_limiter()
    tokens, shared.total_tokens = shared.total_tokens, 1
    try:
        async with anyio.create_task_group() as tasks:
            held, release = anyio.Event(), anyio.Event()

            async def hold_the_only_shared_thread() -> None:
                async with shared:
                    held.set()
                    await release.wait()

            tasks.start_soon(hold_the_only_shared_thread)
            await held.wait()
            # Before, the bridge waited for the shared limiter's token: for ever here.
            with anyio.fail_after(10):
                await queue.ping()
                assert await queue.dead() == []
            release.set()
    finally:
        shared.total_tokens = tokens
        await queue.aclose()


async def test_a_cancelled_first_call_leaves_no_queue_unclosed() -> None:
    building, proceed = threading.Event(), threading.Event()
    built: list[ClosingQueue] = []

    def build(relay: JobNotify | None) -> DramatiqJobQueue:
        # On the bridge's asyncio loop: hold the build until the caller has been cancelled.
        building.set()
        proceed.wait(10)
        # Port 1: nothing is ever sent (the call that builds it is cancelled).
        built.append(ClosingQueue("redis://127.0.0.1:1/1", kinds=JobKinds(), notify=relay))
        return built[-1]

    queue = ThreadedJobQueue(build)
    try:
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(queue.ping)
                await anyio.to_thread.run_sync(building.wait, 10)
                scope.cancel()
                proceed.set()
        assert scope.cancelled_caught
    finally:
        await queue.aclose()
    # Built once, and closed with the bridge (before, the cancelled call dropped it).
    assert len(built) == 1
    assert built[0].closed
