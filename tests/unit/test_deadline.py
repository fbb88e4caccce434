"""One deadline for a Redis operation's retries and pool waits, one budget per request,
and one set of options for every Redis client (the pub/sub one included)."""

from __future__ import annotations

import sys
import threading

import anyio
import pytest
import redis.exceptions as rex

from ondoki.entrypoints.bootstrap import build_cache, build_jobs, build_kinds, build_pubsub
from ondoki.errors import CacheError
from ondoki.support.deadline import Budget, budget, carried, current
from ondoki.support.settings import Settings
from ondoki_adapters.redis.cache import RedisCache
from ondoki_adapters.redis.connection import call
from ondoki_adapters.redis.driver import RedisPyDriver
from ondoki_adapters.redis.jobs import DramatiqJobQueue
from ondoki_adapters.redis.pubsub import RedisPubSub

pytestmark = pytest.mark.anyio


async def hang() -> None:
    await anyio.sleep(60)


async def time_out() -> None:
    await anyio.sleep(0.2)
    raise rex.TimeoutError("Timeout reading from socket")


async def test_retries_share_one_deadline() -> None:
    started = anyio.current_time()
    with pytest.raises(CacheError, match=r"within 0\.5 s"):
        # Three attempts of 0.2 s each and their pauses would pass 0.5 s.
        await call(time_out, error=CacheError, what="get", idempotent=True, deadline=0.5)
    assert anyio.current_time() - started < 1.5


async def test_calls_in_one_budget_share_its_time() -> None:
    with budget():
        with pytest.raises(CacheError):
            await call(hang, error=CacheError, what="get", idempotent=True, deadline=0.3)
        started = anyio.current_time()
        with pytest.raises(CacheError, match="within 0 s"):
            await call(hang, error=CacheError, what="set", idempotent=True, deadline=0.3)
        assert anyio.current_time() - started < 0.2
    # Outside the budget, each operation has its own deadline again.
    with pytest.raises(CacheError, match=r"within 0\.3 s"):
        await call(hang, error=CacheError, what="get", idempotent=True, deadline=0.3)


async def test_a_carried_budget_is_spent_where_it_is_carried() -> None:
    with budget() as request:
        over = current()
    assert over is request
    with carried(over), pytest.raises(CacheError, match=r"within 0\.3 s"):
        await call(hang, error=CacheError, what="get", idempotent=True, deadline=0.3)
    assert request.left == 0
    # Carrying None: no budget, even inside one.
    with budget(), carried(None):
        with pytest.raises(CacheError, match=r"within 0\.3 s"):
            await call(hang, error=CacheError, what="get", idempotent=True, deadline=0.3)
        with pytest.raises(CacheError, match=r"within 0\.3 s"):
            await call(hang, error=CacheError, what="get", idempotent=True, deadline=0.3)


def test_a_budget_spent_from_several_threads_loses_no_spending() -> None:
    # A trio request's job calls spend its budget on the bridge's asyncio thread while its
    # other calls spend it on trio. Threads switched as often as the interpreter allows
    # lost about 130,000 of these 200,000 spends before the budget took a lock.
    spent = Budget()
    spent.begin(1e9)
    threads, each = 4, 50_000

    def spend() -> None:
        for _ in range(each):
            spent.spend(1.0)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        workers = [threading.Thread(target=spend) for _ in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    finally:
        sys.setswitchinterval(interval)
    assert spent.left == 1e9 - threads * each
    assert spent.begin(5.0) == spent.left  # started once: a later timeout changes nothing


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # redis-py has no trio support
async def test_every_redis_client_gets_the_timeout_setting() -> None:
    settings = Settings(redis_url="redis://127.0.0.1:1/0", redis_timeout_seconds=1.5)
    cache = build_cache(settings)
    pubsub = build_pubsub(settings)
    jobs = build_jobs(settings, build_kinds(settings), notify=None)  # type: ignore[arg-type]
    try:
        assert isinstance(cache, RedisCache)
        assert isinstance(pubsub, RedisPubSub)
        assert isinstance(jobs, DramatiqJobQueue)
        assert isinstance(cache.driver, RedisPyDriver)
        assert isinstance(pubsub.driver, RedisPyDriver)
        for client in (cache.driver.client, pubsub.driver.client, jobs.client):
            options = client.connection_pool.connection_kwargs
            assert options["socket_connect_timeout"] == 1.5
        # The drivers' commands all run under `call`'s deadline (the adapters' timeout,
        # below): their clients time no reply of their own; the jobs' client does.
        for client in (cache.driver.client, pubsub.driver.client):
            assert client.connection_pool.connection_kwargs["socket_timeout"] is None
        assert jobs.client.connection_pool.connection_kwargs["socket_timeout"] == 1.5
        assert jobs.sync_client.connection_pool.connection_kwargs["socket_timeout"] == 1.5
        assert pubsub.timeout == cache.timeout == jobs.timeout == 1.5
    finally:
        await cache.aclose()
        await pubsub.aclose()
        await jobs.aclose()
