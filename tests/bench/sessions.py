"""Sessions: `GET /sessions/me` with DATABASE_URL set against unset, in the same run.

Two `ondoki serve` processes on the section's Redis, one of them with a throwaway PostgreSQL
database (on 127.0.0.1:5432) behind its cache. The hit path (the session is in Redis) must
not change with a database: the goal is a throughput ratio of at least 0.95, rounds
alternating between the two servers. The miss path (the session dropped from Redis before
each request, so it is read from PostgreSQL and cached again) is reported as p50/p99 latency.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import httpx2 as httpx

from ondoki.domain.sessions import session_id
from tests.bench.report import Figure, paired_ratio, rounds_of
from tests.e2e.process import ServeProcess, clean_env
from tests.postgres_server import migrated, throwaway_database
from tests.redis_server import RedisServer

GOAL = 0.95
KEY = "bench-api-key-0123456789abcdef"


async def _login(client: httpx.AsyncClient, url: str) -> dict[str, str]:
    response = await client.post(
        f"{url}/internal/sessions",
        json={"user_id": "bench-user"},
        headers={"Authorization": f"Bearer {KEY}"},
    )
    response.raise_for_status()
    return {"Authorization": f"Bearer {response.json()['token']}"}


async def run(server: RedisServer, *, scale: float = 1.0) -> list[Figure]:
    count, rounds = max(50, int(500 * scale)), 21
    misses = max(200, int(2_000 * scale))
    server.flushall()
    with throwaway_database() as database, tempfile.TemporaryDirectory() as workdir:
        migrated(database)
        env = {"REDIS_URL": server.url(0), "ONDOKI_API_KEY": KEY, "ONDOKI_LOG_LEVEL": "warning"}
        plain = ServeProcess(Path(workdir), clean_env(**env))
        durable = ServeProcess(Path(workdir), clean_env(DATABASE_URL=database, **env))
        try:
            plain.wait_ready()
            durable.wait_ready()
            async with httpx.AsyncClient(timeout=10) as client:
                plain_auth = await _login(client, plain.url)
                durable_auth = await _login(client, durable.url)

                async def me(url: str, headers: dict[str, str]) -> None:
                    response = await client.get(f"{url}/sessions/me", headers=headers)
                    if response.status_code != 200:
                        raise RuntimeError(f"GET /sessions/me: {response.status_code}")

                samples = await rounds_of(
                    {
                        "without": lambda: me(plain.url, plain_auth),
                        "with": lambda: me(durable.url, durable_auth),
                    },
                    count=count,
                    rounds=rounds,
                )
                key = "ondoki:session:" + session_id(
                    durable_auth["Authorization"].removeprefix("Bearer ")
                )
                latencies = []
                with server.client() as redis:
                    for _ in range(misses):
                        redis.delete(key)
                        start = time.perf_counter()
                        await me(durable.url, durable_auth)
                        latencies.append(time.perf_counter() - start)
                    assert redis.exists(key), "the miss did not refill the cache"
                hits = []
                for _ in range(misses):
                    start = time.perf_counter()
                    await me(durable.url, durable_auth)
                    hits.append(time.perf_counter() - start)
        finally:
            plain.stop()
            durable.stop()

    # Throughput ratio: requests per second with the database / without.
    ratio = 1 / paired_ratio(samples["with"], samples["without"])
    t = {name: statistics.median(values) for name, values in samples.items()}
    latencies.sort()
    hits.sort()

    def pct(values: list[float], q: float) -> float:
        return values[min(len(values) - 1, int(q * len(values)))] * 1e3

    return [
        Figure(
            "sessions",
            "GET /sessions/me throughput, DATABASE_URL set / unset (hit path)",
            ratio,
            "x",
            goal=f">= {GOAL}x",
            met=ratio >= GOAL,
            detail={"with_us": t["with"] * 1e6, "without_us": t["without"] * 1e6},
        ),
        Figure("sessions", "GET /sessions/me hit p50", pct(hits, 0.5), "ms"),
        Figure("sessions", "GET /sessions/me hit p99", pct(hits, 0.99), "ms"),
        Figure(
            "sessions",
            "GET /sessions/me miss (read from PostgreSQL) p50",
            pct(latencies, 0.5),
            "ms",
        ),
        Figure(
            "sessions",
            "GET /sessions/me miss (read from PostgreSQL) p99",
            pct(latencies, 0.99),
            "ms",
        ),
    ]
