"""Cache: RedisCache against bare redis-py on the same server, and on trio against bare
coredis (the trio driver's client); MemoryCache throughput."""

from __future__ import annotations

import statistics

import anyio.to_thread
import coredis
import redis.asyncio as aioredis
import trio

from ondoki_adapters.memory.cache import MemoryCache
from ondoki_adapters.redis.cache import RedisCache
from tests.bench.report import Figure, interleaved, paired_ratio, rounds_of
from tests.redis_server import RedisServer

GOAL = 1.15


async def run(server: RedisServer, *, scale: float = 1.0) -> list[Figure]:
    count, rounds = max(100, int(1_000 * scale)), 41
    value = b"x" * 512
    ours = RedisCache(server.url(0))
    bare = aioredis.Redis.from_url(server.url(0))
    await ours.set("bench:ours", value, ttl=600)
    await bare.set("bench:bare", value, px=600_000)
    try:
        samples = await rounds_of(
            {
                "ours get": lambda: ours.get("bench:ours"),
                "bare get": lambda: bare.get("bench:bare"),
                "ours set": lambda: ours.set("bench:ours", value, ttl=600),
                "bare set": lambda: bare.set("bench:bare", value, px=600_000),
            },
            count=count,
            rounds=rounds,
        )
    finally:
        await ours.aclose()
        await bare.aclose()

    t = {name: statistics.median(values) for name, values in samples.items()}
    figures = []
    for op in ("get", "set"):
        ratio = paired_ratio(samples[f"ours {op}"], samples[f"bare {op}"])
        figures.append(
            Figure(
                "cache",
                f"RedisCache.{op} time / bare redis-py {op}",
                ratio,
                "x",
                goal=f"<= {GOAL}x",
                met=ratio <= GOAL,
                detail={"ours_us": t[f"ours {op}"] * 1e6, "bare_us": t[f"bare {op}"] * 1e6},
            )
        )
        figures.append(Figure("cache", f"RedisCache.{op} latency", t[f"ours {op}"] * 1e6, "us"))

    # The same on trio (its own trio.run, on a worker thread while this loop waits).
    on_trio = await anyio.to_thread.run_sync(trio.run, _trio_rounds, server.url(0), count, rounds)
    for op in ("get", "set"):
        ours_us = statistics.median(on_trio[f"ours {op}"]) * 1e6
        ratio = paired_ratio(on_trio[f"ours {op}"], on_trio[f"bare {op}"])
        figures.append(
            Figure(
                "cache",
                f"trio: RedisCache.{op} time / bare coredis {op}",
                ratio,
                "x",
                detail={
                    "ours_us": ours_us,
                    "bare_us": statistics.median(on_trio[f"bare {op}"]) * 1e6,
                },
            )
        )
        figures.append(Figure("cache", f"trio: RedisCache.{op} latency", ours_us, "us"))
        figures.append(
            Figure(
                "cache",
                f"trio: RedisCache.{op} time / asyncio bare redis-py {op}",
                ours_us / (t[f"bare {op}"] * 1e6),
                "x",
            )
        )

    memory = MemoryCache(max_entries=10_000)
    keys = [f"k{n}" for n in range(20_000)]  # twice the bound: every set evicts
    mem_count = max(2_000, int(100_000 * scale))

    async def mem_set() -> None:
        for key in keys[: mem_count // 10]:
            await memory.set(key, value)

    async def mem_get() -> None:
        for key in keys[: mem_count // 10]:
            await memory.get(key)

    m = await interleaved({"set": mem_set, "get": mem_get}, count=10, rounds=3)
    per_call = mem_count // 10
    figures.append(Figure("cache", "MemoryCache.set (evicting)", per_call / m["set"], "ops/s"))
    figures.append(Figure("cache", "MemoryCache.get", per_call / m["get"], "ops/s"))
    return figures


async def _trio_rounds(url: str, count: int, rounds: int) -> dict[str, list[float]]:
    value = b"x" * 512
    ours = RedisCache(url)
    bare: coredis.Redis[bytes] = coredis.Redis.from_url(url)
    async with bare:
        await ours.set("bench:ours", value, ttl=600)
        await bare.set("bench:bare", value, px=600_000)
        try:
            return await rounds_of(
                {
                    "ours get": lambda: ours.get("bench:ours"),
                    "bare get": lambda: bare.get("bench:bare"),
                    "ours set": lambda: ours.set("bench:ours", value, ttl=600),
                    "bare set": lambda: bare.set("bench:bare", value, px=600_000),
                },
                count=count,
                rounds=rounds,
            )
        finally:
            await ours.aclose()
