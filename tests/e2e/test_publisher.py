"""The publisher library against a running `ondoki serve`: what a backend publishes straight
to Redis reaches the service's WebSockets, with positions that resume understands."""

from __future__ import annotations

import time

import anyio
import pytest

from ondoki.domain.notifications import UserEvent
from ondoki_adapters.redis.publisher import RedisPublisher, SyncRedisPublisher
from tests.e2e.conftest import Start
from tests.e2e.ws import WsClient, login, publish
from tests.redis_server import RedisServer

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

KEY = "e2e-api-key-0123456789abcdef"


def test_library_events_reach_websockets_and_resume(
    start: Start, redis_server: RedisServer
) -> None:
    redis_server.flushall()
    server = start(REDIS_URL=redis_server.url(0), ONDOKI_API_KEY=KEY).wait_ready()
    token = login(server.url, KEY, "alice")
    client = WsClient(server.url, token)
    time.sleep(0.7)  # past the resume window
    with SyncRedisPublisher(redis_server.url(0)) as publisher:
        sent = [publisher.publish("alice", "step", {"n": 0})]
        sent += publisher.publish_many([UserEvent("alice", "step", {"n": n}) for n in (1, 2)])
        sent += publisher.broadcast(["alice", "bob"], "announce", {"n": 3})[:1]
        frames = client.notifications(4)
        assert [(f["epoch"], f["offset"]) for f in frames] == [(p.epoch, p.offset) for p in sent]
        assert [f["event"]["data"]["n"] for f in frames] == [0, 1, 2, 3]
        client.close()

        async def missed() -> list[tuple[str, int]]:
            async with RedisPublisher(redis_server.url(0)) as library:
                got = await library.publish_many(
                    [UserEvent("alice", "missed", n) for n in range(3)]
                )
            return [(p.epoch, p.offset) for p in got]

        missed_positions = anyio.run(missed)
        # HTTP and the library share one sequence per user.
        missed_positions.append(publish(server.url, KEY, "alice", "missed", 3))
    again = WsClient(server.url, token, resume=(sent[0].epoch, sent[-1].offset))
    frames = again.notifications(4)
    assert [(f["epoch"], f["offset"]) for f in frames] == missed_positions
    assert [f["event"]["data"] for f in frames] == [0, 1, 2, 3]
    again.close()
