"""`DramatiqJobQueue.list_jobs` where the contract tests cannot reach: many jobs created at
the same instant (ties in the owner's index) and index entries whose records expired."""

from __future__ import annotations

import pytest

from ondoki.models import JobRecord
from ondoki_adapters.redis.jobs import DramatiqJobQueue, encode_record
from tests.integration.worker_main import build_kinds
from tests.redis_server import RedisServer

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # redis-py


async def test_pages_walk_through_ties_and_skip_expired_records(
    redis_server: RedisServer,
) -> None:
    redis_server.flushall()
    queue = DramatiqJobQueue(redis_server.url(1), kinds=build_kinds())
    keys, index = queue.keys, queue.keys.owned("alice")
    ids = [f"job-{n:03d}" for n in range(130)]
    with redis_server.client(1) as client:
        for job_id in ids:
            record = JobRecord(
                id=job_id, kind="demo.checksum", queue="celery", owner="alice",
                created_at=1000.0, updated_at=1000.0,
            )  # fmt: skip
            client.hset(keys.job(job_id), "record", encode_record(record))
        client.zadd(index, dict.fromkeys([*ids, "expired-1", "expired-2"], 1000.0))
    try:
        seen: list[str] = []
        cursor: str | None = None
        while True:
            page = await queue.list_jobs("alice", limit=40, cursor=cursor)
            seen += [record.id for record in page.jobs]
            cursor = page.next_cursor
            if cursor is None:
                break
        # Same creation time: newest first means by id, descending, as Redis orders ties.
        assert seen == sorted(ids, reverse=True)
        with redis_server.client(1) as client:
            assert client.zscore(index, "expired-1") is None  # pruned as the listing met it
    finally:
        await queue.aclose()
