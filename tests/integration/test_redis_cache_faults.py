"""RedisCache against real servers that go away, restart, and refuse credentials."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ondoki.errors import CacheError
from ondoki_adapters.redis.cache import RedisCache
from tests.redis_server import RedisServer

pytestmark = [pytest.mark.anyio, pytest.mark.redis]
# Tests handing RedisCache a redis-py client (asyncio's) run on asyncio only; the pool's
# waiting on trio is tested in tests/integration/test_redis_driver.py.

SECRET = "fault-test-password-9c1"


@pytest.fixture
def locked_redis() -> Iterator[RedisServer]:
    server = RedisServer(password=SECRET).start()
    yield server
    server.close()


async def test_server_down_raises_cache_error_without_the_password(
    locked_redis: RedisServer,
) -> None:
    cache = RedisCache(locked_redis.url(0))
    await cache.set("k", b"v")
    locked_redis.kill()
    with pytest.raises(CacheError) as caught:
        await cache.get("k")
    assert "cache get" in str(caught.value)
    assert SECRET not in str(caught.value)
    await cache.aclose()


async def test_service_resumes_after_a_restart(fresh_redis: RedisServer) -> None:
    cache = RedisCache(fresh_redis.url(0))
    await cache.set("before", b"1")
    fresh_redis.restart()
    # The restart lost the data (no persistence) but the adapter reconnects on its own.
    assert await cache.get("before") is None
    await cache.set("after", b"2")
    assert await cache.get("after") == b"2"
    await cache.aclose()


async def test_killed_connections_are_retried_for_safe_operations(
    fresh_redis: RedisServer,
) -> None:
    cache = RedisCache(fresh_redis.url(0))
    await cache.set("k", b"v")
    with fresh_redis.client() as admin:
        killed = admin.client_kill_filter(_type="normal", skipme=True)
    assert killed >= 1
    assert await cache.get("k") == b"v"
    await cache.aclose()


async def test_wrong_password_is_named_and_not_shown(locked_redis: RedisServer) -> None:
    url = locked_redis.url(0).replace(SECRET, "not-the-password")
    cache = RedisCache(url)
    with pytest.raises(CacheError, match="authentication failed") as caught:
        await cache.ping()
    assert "not-the-password" not in str(caught.value)
    await cache.aclose()


async def test_missing_password_is_named(locked_redis: RedisServer) -> None:
    cache = RedisCache(f"redis://127.0.0.1:{locked_redis.port}/0")
    with pytest.raises(CacheError, match="authentication"):
        await cache.set("k", b"v")
    await cache.aclose()


async def test_unix_socket_url(tmp_path_factory: pytest.TempPathFactory) -> None:
    socket = tmp_path_factory.mktemp("sock") / "redis.sock"
    server = RedisServer(args=("--unixsocket", str(socket))).start()
    try:
        cache = RedisCache(f"unix://{socket}?db=0")
        await cache.set("k", b"v", ttl=10)
        assert await cache.get("k") == b"v"
        await cache.aclose()
    finally:
        server.close()


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_given_client_is_used_and_left_open(redis_server: RedisServer) -> None:
    from ondoki_adapters.redis.connection import connect

    client = connect(redis_server.url(3))
    cache = RedisCache(client=client)
    await cache.set("on-db-3", b"x")
    await cache.aclose()
    assert await client.get("on-db-3") == b"x"
    await client.aclose()


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_burst_waits_for_pool_connections_instead_of_failing(
    redis_server: RedisServer,
) -> None:
    import anyio

    from ondoki_adapters.redis.connection import connect

    client = connect(redis_server.url(0), max_connections=2)
    cache = RedisCache(client=client)
    await cache.set("k", b"v")
    results: list[bytes | None] = []

    async def read() -> None:
        results.append(await cache.get("k"))

    # 100 concurrent reads over 2 connections: 98 must wait their turn (they failed with
    # "Too many connections" before the pool blocked).
    async with anyio.create_task_group() as tasks:
        for _ in range(100):
            tasks.start_soon(read)
    assert results == [b"v"] * 100
    await client.aclose()
