"""RedisPubSub against real servers whose connections are killed, that restart or freeze."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from hashlib import sha256
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis

from ondoki.errors import PubSubError
from ondoki.models import Delivery, Gap, Message
from ondoki_adapters.redis.connection import connect
from ondoki_adapters.redis.driver import open_driver
from ondoki_adapters.redis.pubsub import RedisPubSub
from tests.redis_server import RedisServer
from tests.waits import take, until

pytestmark = [pytest.mark.anyio, pytest.mark.redis]
# The test handing RedisPubSub a redis-py client (asyncio's) runs on asyncio only.

# Short enough that a frozen server is noticed within a second.
FAST = {"timeout": 0.5, "health_interval": 0.2, "health_timeout": 0.3, "reconnect_max": 0.2}


@asynccontextmanager
async def running(server: RedisServer, **options: Any) -> AsyncIterator[RedisPubSub]:
    pubsub = RedisPubSub(server.url(0), **{**FAST, **options})
    try:
        async with anyio.create_task_group() as tasks:
            await tasks.start(pubsub.run)
            yield pubsub
            tasks.cancel_scope.cancel()
    finally:
        await pubsub.aclose()


@asynccontextmanager
async def admin_of(server: RedisServer) -> AsyncIterator[Callable[..., Awaitable[Any]]]:
    """A command function on a client of the test's own, on the running event loop."""
    driver = open_driver(server.url(0))
    try:
        yield driver.execute
    finally:
        await driver.aclose()


def messages(deliveries: list[Delivery]) -> list[Message]:
    assert all(isinstance(d, Message) for d in deliveries), [
        d for d in deliveries if isinstance(d, Gap)
    ]
    return [d for d in deliveries if isinstance(d, Message)]


async def test_killed_pubsub_connections_lose_and_repeat_nothing(
    fresh_redis: RedisServer,
) -> None:
    total = 400
    async with (
        admin_of(fresh_redis) as admin,
        running(fresh_redis) as pubsub,
        pubsub.subscribe("steady") as subscription,
    ):
        kills = 0

        async def publisher() -> None:
            for n in range(1, total + 1):
                await pubsub.publish("steady", b"m%d" % n)
                await anyio.sleep(0.002)

        async def killer() -> None:
            nonlocal kills
            for _ in range(6):
                await anyio.sleep(0.1)
                kills += await admin("CLIENT", "KILL", "TYPE", "pubsub")

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(publisher)
            tasks.start_soon(killer)
            got = messages(await take(subscription, total, within=20))
    assert [m.payload for m in got] == [b"m%d" % n for n in range(1, total + 1)]
    assert [m.position.offset for m in got] == list(range(1, total + 1))
    assert kills >= 3
    assert pubsub.stats.reconnects >= kills


async def test_messages_published_while_disconnected_are_repaired_from_history(
    fresh_redis: RedisServer,
) -> None:
    async with (
        admin_of(fresh_redis) as admin,
        running(fresh_redis) as pubsub,
        pubsub.subscribe("outage") as subscription,
    ):
        await pubsub.publish("outage", b"m1")
        assert len(messages(await take(subscription, 1))) == 1
        # Refusing SUBSCRIBE keeps the reader from coming back until we allow it again, so
        # these messages are surely published while nobody listens.
        await admin("ACL", "SETUSER", "default", "-subscribe")
        assert await admin("CLIENT", "KILL", "TYPE", "pubsub") == 1
        await until(lambda: not pubsub.connected)
        missed = [await pubsub.publish("outage", b"m%d" % n) for n in (2, 3, 4)]
        with anyio.move_on_after(0.3):
            extra = await take(subscription, 1)
            pytest.fail(f"delivered while unsubscribed: {extra!r}")
        await admin("ACL", "SETUSER", "default", "+subscribe")
        got = messages(await take(subscription, 3))
        assert [m.position for m in got] == missed
        assert pubsub.stats.repaired >= len(missed)
        assert pubsub.stats.unrepaired_gaps == 0


async def test_restart_loses_history_and_the_subscriber_is_told(
    fresh_redis: RedisServer,
) -> None:
    async with running(fresh_redis) as pubsub, pubsub.subscribe("restart") as subscription:
        before = [await pubsub.publish("restart", b"m%d" % n) for n in (1, 2, 3)]
        assert len(messages(await take(subscription, 3))) == 3
        fresh_redis.restart()
        [gap] = await take(subscription, 1)
        assert isinstance(gap, Gap)
        assert gap.position.epoch != before[0].epoch
        assert "epoch" in gap.reason
        after = [await pubsub.publish("restart", b"n%d" % n) for n in (1, 2)]
        assert [p.offset for p in after] == [gap.position.offset + 1, gap.position.offset + 2]
        assert messages(await take(subscription, 2)) == [
            Message("restart", after[0], b"n1"),
            Message("restart", after[1], b"n2"),
        ]
        assert pubsub.stats.reconnects >= 1
        assert pubsub.stats.unrepaired_gaps >= 1


async def test_the_first_publish_after_a_restart_succeeds(fresh_redis: RedisServer) -> None:
    # A publish without an id is never retried, so a pooled connection the old server
    # closed must be replaced before it is used (redis-py 8 skipped that check while its
    # maintenance notifications were "auto").
    async with running(fresh_redis) as pubsub:
        await pubsub.publish("stale", b"before")
        fresh_redis.restart()
        await anyio.sleep(0.2)  # the closed socket's end-of-file reaches the pool
        position = await pubsub.publish("stale", b"after")
        assert position.offset == 1


async def test_a_frozen_server_is_detected_and_the_reader_recovers(
    fresh_redis: RedisServer,
) -> None:
    async with running(fresh_redis) as pubsub, pubsub.subscribe("frozen") as subscription:
        first = await pubsub.publish("frozen", b"m1")
        assert messages(await take(subscription, 1))[0].position == first
        await until(lambda: pubsub.connected)
        with fresh_redis.frozen():
            # No socket error ever comes from a stopped peer: only the PING deadline tells.
            await until(lambda: not pubsub.connected, within=3)
            assert pubsub.stats.reconnects == 1
        await until(lambda: pubsub.connected, within=5)
        later = [await pubsub.publish("frozen", b"m%d" % n) for n in (2, 3)]
        got = messages(await take(subscription, 2))
        assert [m.position for m in got] == later
        with anyio.move_on_after(0.3):
            extra = await take(subscription, 1)
            pytest.fail(f"unexpected delivery {extra!r}")


async def test_backend_failures_raise_pubsub_error(fresh_redis: RedisServer) -> None:
    async with running(fresh_redis) as pubsub:
        await pubsub.publish("down", b"m1")
        fresh_redis.kill()
        attempts: list[tuple[str, Callable[[], Awaitable[object]]]] = [
            ("pubsub publish 'down'", lambda: pubsub.publish("down", b"m2")),
            # Retried (safe with a key), then given up on.
            ("pubsub publish 'down'", lambda: pubsub.publish("down", b"m", idempotency_key="k")),
            ("pubsub read 'down'", lambda: pubsub.position("down")),
            ("pubsub ping", pubsub.ping),
        ]
        for what, attempt in attempts:
            with pytest.raises(PubSubError, match=what) as caught:
                await attempt()
            assert "cannot reach Redis" in str(caught.value)
            # Translated, not chained: no redis-py exception leaks to the caller.
            assert caught.value.__cause__ is None and caught.value.__suppress_context__
        with pytest.raises(PubSubError, match="subscribe to 'down'"):
            async with pubsub.subscribe("down"):
                pass
        assert pubsub.local_subscribers("down") == 0


async def test_subscribe_returns_only_once_the_server_confirmed(
    fresh_redis: RedisServer,
) -> None:
    async with admin_of(fresh_redis) as admin, running(fresh_redis) as pubsub:
        await admin("ACL", "SETUSER", "default", "-subscribe")
        # Reading history before SUBSCRIBE is in force could miss what is published between.
        with pytest.raises(PubSubError, match="subscribe to 'refused'") as caught:
            async with pubsub.subscribe("refused"):
                pass
        assert "permission denied" in str(caught.value)
        await admin("ACL", "SETUSER", "default", "+subscribe")
        async with pubsub.subscribe("refused") as subscription:
            position = await pubsub.publish("refused", b"now")
            assert messages(await take(subscription, 1))[0].position == position


async def test_one_connection_serves_every_subscription(redis_server: RedisServer) -> None:
    redis_server.flushall()
    async with admin_of(redis_server) as admin, running(redis_server, namespace="one") as pubsub:
        async with (
            pubsub.subscribe("a") as a1,
            pubsub.subscribe("a"),
            pubsub.subscribe("b"),
        ):
            counts = await admin("PUBSUB", "NUMSUB", "one:notify:a", "one:notify:b")
            assert counts == [b"one:notify:a", 1, b"one:notify:b", 1]
            clients = await admin("CLIENT", "LIST", "TYPE", "pubsub")
            assert len(clients.splitlines()) == 1
            await pubsub.publish("a", b"x")
            assert messages(await take(a1, 1))[0].payload == b"x"

        # UNSUBSCRIBE is sent in the background: poll the server until it took effect.
        with anyio.fail_after(2):
            while (await admin("PUBSUB", "NUMSUB", "one:notify:a"))[1]:  # noqa: ASYNC110
                await anyio.sleep(0.01)
        assert pubsub.local_subscribers("a") == 0


async def test_instances_share_channels_through_the_server(redis_server: RedisServer) -> None:
    redis_server.flushall()
    async with running(redis_server) as api_1, running(redis_server) as api_2:
        async with api_2.subscribe("user-9") as live:
            first = await api_1.publish("user-9", b"from 1")
            assert messages(await take(live, 1)) == [Message("user-9", first, b"from 1")]
        second = await api_1.publish("user-9", b"again")
        # A client that moves to the other instance resumes from the shared history.
        async with api_2.subscribe("user-9", since=first) as resumed:
            assert messages(await take(resumed, 1)) == [Message("user-9", second, b"again")]


async def test_every_key_is_namespaced_and_expires(redis_server: RedisServer) -> None:
    redis_server.flushall()
    options = {"namespace": "ns", "history_size": 3, "history_ttl": 60}
    async with admin_of(redis_server) as admin, running(redis_server, **options) as pubsub:
        for n in range(5):
            await pubsub.publish("u1", b"m%d" % n, idempotency_key=f"k{n}")
        await pubsub.position("never-published")
        keys = sorted(await admin("KEYS", "*"))
        assert keys == sorted(
            [
                b"ns:history:u1",
                *(b"ns:idem:" + sha256(b"u1\0k%d" % n).hexdigest().encode() for n in range(5)),
                b"ns:meta:never-published",
                b"ns:meta:u1",
            ]
        )
        for key in keys:
            assert 0 < await admin("PTTL", key) <= 60_000, key
        entries = await admin("XRANGE", "ns:history:u1", "-", "+")
        assert [entry_id for entry_id, _ in entries] == [b"0-3", b"0-4", b"0-5"]
        assert await admin("HGET", "ns:meta:u1", "offset") == b"5"


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_given_client_is_used_and_left_open(redis_server: RedisServer) -> None:
    redis_server.flushall()
    client = connect(redis_server.url(0))
    pubsub = RedisPubSub(client=client)
    await pubsub.publish("c", b"x")
    await pubsub.aclose()
    assert await client.hget("ondoki:meta:c", "offset") == b"1"
    await client.aclose()
    decoding = aioredis.Redis.from_url(redis_server.url(0), decode_responses=True)
    with pytest.raises(ValueError, match="decode_responses"):
        RedisPubSub(client=decoding)
    await decoding.aclose()
