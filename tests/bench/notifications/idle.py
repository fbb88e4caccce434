"""Idle capacity: memory per WebSocket at 5,000 connections, ondoki and the peer.

5,000 clients of 5,000 users on a fresh instance (one session each, so each connection also
costs its user's channel subscription); memory per connection is (VmRSS with the clients -
VmRSS before) / 5,000, once Redis shows every channel subscribed. The same on a fresh peer
process (one broadcaster channel per connection).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import anyio
import anyio.to_thread
import httpx2 as httpx

from tests.bench.notifications.clients import IDLE_ONDOKI, IDLE_PEER, ClientProcess
from tests.bench.notifications.common import (
    SECTION,
    PeerProcess,
    login,
    rss_kib,
    stop,
    ws_url,
)
from tests.bench.report import Figure
from tests.e2e.process import ServeProcess
from tests.redis_server import RedisServer

IDLE_CLIENTS = 5000


async def idle_memory(
    server: RedisServer,
    clients: ClientProcess,
    group: int,
    pid: int,
    urls: Sequence[str],
    tokens: Sequence[str],
    count: int,
    channels: str,
) -> dict[str, float]:
    """KiB per connection once `count` clients are connected and subscribed."""
    # Warm up: the code paths of a connection are loaded before the baseline is read.
    await clients.connect(group, urls[:10], tokens[:10], 10, settle=0.6)
    await clients.call("close", group=group)
    await anyio.sleep(0.5)
    before = rss_kib(pid)
    started = time.perf_counter()
    reopened = await clients.connect(group, urls, tokens, count)
    redis = server.client()
    try:
        with anyio.fail_after(60):
            while True:
                subscribed = await anyio.to_thread.run_sync(redis.pubsub_channels, channels)
                if len(subscribed) >= count:
                    break
                await anyio.sleep(0.1)
    finally:
        redis.close()
    connected = time.perf_counter() - started
    await anyio.sleep(1.0)
    after = rss_kib(pid)
    stats = await clients.call("stats", group=group)
    await clients.call("close", group=group)
    if stats["open"] != count:
        raise RuntimeError(f"only {stats['open']} of {count} idle clients stayed open: {stats}")
    return {
        "kib_per_connection": (after - before) / count,
        "rss_before_mib": before / 1024,
        "rss_after_mib": after / 1024,
        "clients": float(count),
        "connect_seconds": connected,
        "reopened_at_connect": float(reopened),
    }


async def idle(
    server: RedisServer,
    c: ServeProcess,
    peer: PeerProcess | None,
    clients: ClientProcess,
    scale: float,
) -> list[Figure]:
    count = max(200, int(IDLE_CLIENTS * scale))
    users = [f"bench-idle-{n}" for n in range(count)]
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=16), timeout=30) as http:
        tokens = await login(http, c.url, users)
    ours = await idle_memory(
        server, clients, IDLE_ONDOKI, c.process.pid, [ws_url(c.url, "/ws")] * count,
        tokens, count, "ondoki:notify:bench-idle-*",
    )  # fmt: skip
    stop(c.process)
    what = f"idle, {count:,} clients of {count:,} users"
    figures = [
        Figure(SECTION, f"{what}: ondoki memory per connection", ours["kib_per_connection"],
               "KiB", detail=ours),
    ]  # fmt: skip
    if peer is not None:
        theirs = await idle_memory(
            server, clients, IDLE_PEER, peer.process.pid,
            [ws_url(peer.url, f"/ws/{user}") for user in users], [], count, "bench-idle-*",
        )  # fmt: skip
        figures.append(
            Figure(SECTION, f"{what}: broadcaster peer memory per connection",
                   theirs["kib_per_connection"], "KiB", detail=theirs)
        )  # fmt: skip
        figures.append(
            Figure(
                SECTION,
                "idle memory per connection, ondoki / broadcaster peer",
                ours["kib_per_connection"] / theirs["kib_per_connection"],
                "x",
            )
        )
    return figures
