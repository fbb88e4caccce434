"""A worker whose Redis refuses writes for a while (full under `noeviction`, or a read-only
replica during a failover) finishes its job once Redis takes writes again, and goes on."""

from __future__ import annotations

import functools
from pathlib import Path

import anyio
import pytest

from ondoki_adapters.redis.jobs import DramatiqJobQueue
from ondoki_adapters.redis.worker import run_worker
from tests.integration.worker_main import build_kinds, fast_worker_options
from tests.redis_server import RedisServer
from tests.waits import finished

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # the worker runs on asyncio
async def test_a_job_ending_while_redis_is_full_is_recorded_once_it_has_room(
    fresh_redis: RedisServer, tmp_path: Path
) -> None:
    # Before: the end of the attempt was refused (OOM), the record stayed `running`, the
    # ack was refused too and dramatiq gave up on it, and the worker's one slot was never
    # freed: it fetched no job again until restarted.
    kinds = build_kinds()
    queue = DramatiqJobQueue(fresh_redis.url(1), kinds=kinds)
    worker = functools.partial(
        run_worker, fresh_redis.url(1), kinds=kinds, options=fast_worker_options()
    )
    with fresh_redis.client(1) as admin:
        async with anyio.create_task_group() as tasks:
            await tasks.start(worker)
            job = await queue.enqueue("test.block", {"dir": str(tmp_path), "limit": 0.5})
            with anyio.fail_after(15):
                while (await queue.get(job)).state != "running":  # noqa: ASYNC110
                    await anyio.sleep(0.02)
            admin.config_set("maxmemory", 1)  # every write refused: OOM under noeviction
            try:
                await anyio.sleep(1.5)  # the job's half second ends meanwhile
                assert (await queue.get(job)).state == "running"
            finally:
                admin.config_set("maxmemory", 0)
            record = await finished(queue, job)
            assert record.state == "succeeded" and record.attempts == 1
            # The worker's slot came back: it takes the next job.
            following = await queue.enqueue("demo.checksum", {"size": 1024})
            assert (await finished(queue, following)).state == "succeeded"
            tasks.cancel_scope.cancel()
    await queue.aclose()
