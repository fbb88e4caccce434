"""Publishing through the library on each loop: `RedisPublisher.publish`, one event of a
200-byte payload at a time (sequential: each waits for the one before), on asyncio (redis-py)
and on trio (coredis), to a user nobody listens to.

Rounds alternate the loops: an asyncio round in the bench's own loop, then a trio round in a
`trio.run` of its own (on a worker thread while the bench's loop waits, as in the cache
section), and so on, each after a few unmeasured publishes. The figure is trio's time per
publish over asyncio's, the median of the paired rounds, beside both latencies.
"""

from __future__ import annotations

import statistics

import anyio.to_thread
import trio

from ondoki_adapters.redis.publisher import RedisPublisher
from tests.bench.notifications.common import SECTION
from tests.bench.report import Figure, paired_ratio, timed
from tests.redis_server import RedisServer

DATA = {"pad": "x" * 180}  # with the event's envelope, about 200 bytes
USER = "bench-publish"
WARMUP = 20
ROUNDS = 11


async def publishing(server: RedisServer, scale: float) -> list[Figure]:
    count = max(100, int(1_000 * scale))
    on_asyncio: list[float] = []
    on_trio: list[float] = []
    async with RedisPublisher(server.url(0)) as publisher:
        for round_ in range(ROUNDS):
            for loop in ("asyncio", "trio") if round_ % 2 == 0 else ("trio", "asyncio"):
                if loop == "asyncio":
                    on_asyncio.append(await _round(publisher, count))
                else:
                    on_trio.append(
                        await anyio.to_thread.run_sync(trio.run, _trio_round, server.url(0), count)
                    )
    asyncio_us = statistics.median(on_asyncio) * 1e6
    trio_us = statistics.median(on_trio) * 1e6
    return [
        Figure(SECTION, "RedisPublisher.publish latency (sequential)", asyncio_us, "us"),
        Figure(SECTION, "trio: RedisPublisher.publish latency (sequential)", trio_us, "us"),
        Figure(
            SECTION,
            "trio: RedisPublisher.publish time / asyncio's",
            paired_ratio(on_trio, on_asyncio),
            "x",
            detail={"trio_us": trio_us, "asyncio_us": asyncio_us},
        ),
    ]


async def _round(publisher: RedisPublisher, count: int) -> float:
    """Seconds per publish over `count`, after `WARMUP` unmeasured ones."""
    for _ in range(WARMUP):
        await publisher.publish(USER, "bench", DATA)
    return await timed(lambda: publisher.publish(USER, "bench", DATA), count)


async def _trio_round(url: str, count: int) -> float:
    async with RedisPublisher(url) as publisher:
        return await _round(publisher, count)
