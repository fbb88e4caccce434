"""Adapters under contract test: each port's suite runs against every adapter here."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from adapters.memory.cache import MemoryCache
from adapters.redis.cache import RedisCache
from ondoki.ports.cache import Cache
from tests.redis_server import RedisServer

REDIS = pytest.mark.redis


@pytest.fixture(
    params=[
        "memory",
        pytest.param("redis", marks=REDIS),
        pytest.param("redis-password", marks=REDIS),
    ]
)
async def cache(request: pytest.FixtureRequest, anyio_backend: str) -> AsyncIterator[Cache]:
    if request.param == "memory":
        yield MemoryCache()
        return
    fixture = "redis_server" if request.param == "redis" else "redis_server_password"
    server: RedisServer = request.getfixturevalue(fixture)
    server.flushall()
    adapter = RedisCache(server.url(0))
    yield adapter
    await adapter.aclose()
