"""The Redis driver's contract, on both event loops (redis-py on asyncio, coredis on trio)."""

from __future__ import annotations

import anyio
import pytest
import redis.exceptions as rex

from ondoki_adapters.redis.driver import open_driver
from tests.redis_server import RedisServer

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


async def test_replies_are_bytes_integers_none_and_lists(redis_server: RedisServer) -> None:
    redis_server.flushall()
    driver = open_driver(redis_server.url(0))
    try:
        assert await driver.execute("SET", "k", b"v", "PX", 60_000) in (b"OK", "OK", True)
        assert await driver.execute("GET", "k") == b"v"
        assert await driver.execute("GET", "missing") is None
        assert await driver.execute("MGET", "k", "missing") == [b"v", None]
        assert await driver.execute("INCRBY", "n", 5) == 5
        assert 0 < await driver.execute("PTTL", "k") <= 60_000
    finally:
        await driver.aclose()


async def test_a_transaction_returns_errors_in_place(redis_server: RedisServer) -> None:
    redis_server.flushall()
    driver = open_driver(redis_server.url(0))
    try:
        await driver.execute("SET", "text", b"abc")
        replies = await driver.transaction([("INCRBY", "text", 1), ("INCRBY", "n", 2)])
        assert isinstance(replies[0], rex.ResponseError)
        assert replies[1] == 2
    finally:
        await driver.aclose()


async def test_scripts_survive_a_flushed_script_cache(redis_server: RedisServer) -> None:
    driver = open_driver(redis_server.url(0))
    try:
        script = driver.script("return {KEYS[1], tonumber(ARGV[1]) + 1}")
        assert await script(keys=["a"], args=[41]) == [b"a", 42]
        await driver.execute("SCRIPT", "FLUSH")
        assert await script(keys=["b"], args=[1]) == [b"b", 2]
    finally:
        await driver.aclose()


async def test_a_burst_waits_for_pool_connections(redis_server: RedisServer) -> None:
    redis_server.flushall()
    driver = open_driver(redis_server.url(0), max_connections=2)
    results: list[bytes | None] = []

    async def read() -> None:
        results.append(await driver.execute("GET", "k"))

    try:
        await driver.execute("SET", "k", b"v")
        async with anyio.create_task_group() as tasks:
            for _ in range(100):
                tasks.start_soon(read)
        assert results == [b"v"] * 100
    finally:
        await driver.aclose()


async def test_errors_are_redis_py_errors(fresh_redis: RedisServer) -> None:
    driver = open_driver(fresh_redis.url(0), timeout=1.0)
    try:
        with pytest.raises(rex.ResponseError):
            await driver.execute("NOSUCHCOMMAND")
        fresh_redis.kill()
        with pytest.raises((rex.ConnectionError, rex.TimeoutError)):
            await driver.execute("GET", "k")
    finally:
        await driver.aclose()


async def test_a_pubsub_connection_delivers_and_reports_its_loss(
    redis_server: RedisServer,
) -> None:
    driver = open_driver(redis_server.url(0))
    try:
        connection = await driver.open_pubsub(2.0)
        try:
            await connection.send("SUBSCRIBE", "room")
            ack = await connection.receive()
            assert isinstance(ack, list) and ack[:2] == [b"subscribe", b"room"]
            await driver.execute("PUBLISH", "room", b"hello")
            assert await connection.receive() == [b"message", b"room", b"hello"]
            await connection.send("PING")
            pong = await connection.receive()
            assert pong == b"PONG" or (isinstance(pong, list) and pong[0] == b"pong")
            assert await driver.execute("CLIENT", "KILL", "TYPE", "pubsub") == 1
            with anyio.fail_after(5), pytest.raises(rex.ConnectionError):
                await connection.receive()
        finally:
            await connection.aclose()
    finally:
        await driver.aclose()
