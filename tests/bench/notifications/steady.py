"""Steady load: 1,000 events/s spread over 1,000 users (one socket each), with latency.

Open loop: event n is due at `start + n / RATE` and goes to user `n % 1,000`; it carries its
due time, and the client takes `time.time()` when the frame is handed to it. Latency is
measured from the due time, so a publisher or server that falls behind shows in it (and in
`sustained_per_s`, the rate the frames arrived at) rather than being hidden by a queue.

ondoki's clients are on instance B; it is published to one event at a time, over HTTP on
instance A (16 keep-alive connections) and through the publisher library. The peer's
clients are on `/ws/{user}`, published to with one PUBLISH per event. Every way runs in each
of ROUNDS rounds, in alternating order, so that drift in the machine's load falls on all;
each way's round with the median p99 is reported.

One more way, `ondoki, delivery only` (`WirePublisher`), tells the two halves of ondoki's
latency apart: the bench PUBLISHes ondoki's pub/sub messages itself, as the publish script
would send them but without storing history, with the peer's one PUBLISH per event. Its
ratio to the peer is the delivery path's (Redis to instance B to the socket) on equal terms;
the library's ratio adds the durable publish, which the peer does not do. It is reported,
not held to the goal: no user publishes so.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Coroutine
from typing import Any

import anyio
import httpx2 as httpx
import msgspec
import redis.asyncio as aioredis

from ondoki.domain.notifications.publishing import EventEncoder, UserEvent
from ondoki_adapters.redis.connection import connect
from ondoki_adapters.redis.publisher import RedisPublisher
from tests.bench.notifications.clients import STEADY_ONDOKI, STEADY_PEER, ClientProcess
from tests.bench.notifications.common import (
    ROUNDS,
    SECTION,
    HttpPublisher,
    PeerProcess,
    cpu_seconds,
    frame_text,
    login,
    percentile,
    ws_url,
)
from tests.bench.report import Figure
from tests.e2e.process import ServeProcess
from tests.redis_server import RedisServer

RATE = 1000.0  # events/s
USERS = 1000
WARMUP = 1.0  # seconds not measured
DELIVERY = "ondoki, delivery only"


class WirePublisher:
    """PUBLISH ondoki's pub/sub messages (msgpack `(epoch, offset, payload)`) straight to
    the users' channels, as the publish script sends them, without its history write.

    `begin` reads each user's epoch and latest offset, which the messages go on from (a
    gap or a repeated offset would send B's clients to history); `end` stores the offsets
    reached, so that the library's next publishes follow on.
    """

    def __init__(self, redis: aioredis.Redis, library: RedisPublisher, users: list[str]) -> None:
        self.redis = redis
        self.library = library
        self.users = users
        self.calls = library.channels.calls
        self.encoder = EventEncoder()  # the library's, with its default limits
        self.positions: dict[str, tuple[str, int]] = {}

    async def begin(self) -> None:
        # One event each first, so that every user has an epoch.
        await self.library.publish_many(
            [UserEvent(user, "bench", {"n": -1, "t": 0.0}) for user in self.users]
        )
        pipe = self.redis.pipeline(transaction=False)
        for user in self.users:
            pipe.hmget(self.calls.key("meta", user), "epoch", "offset")
        for user, (epoch, offset) in zip(self.users, await pipe.execute(), strict=True):
            self.positions[user] = (epoch.decode(), int(offset))

    async def publish(self, n: int, due: float) -> None:
        user = self.users[n % USERS]
        channel, payload, _ = self.encoder.one(user, "bench", {"n": n, "t": due})
        epoch, offset = self.positions[user]
        self.positions[user] = (epoch, offset + 1)
        message = msgspec.msgpack.encode((epoch, offset + 1, payload))
        await self.redis.publish(self.calls.key("notify", channel), message)

    async def end(self) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for user, (_, offset) in self.positions.items():
            pipe.hset(self.calls.key("meta", user), "offset", offset)
        await pipe.execute()


async def run_steady(
    publish: Callable[[int, float], Coroutine[Any, Any, None]],
    group: int,
    clients: ClientProcess,
    seconds: float,
    pids: tuple[int, int],
) -> dict[str, float]:
    count = int(RATE * (WARMUP + seconds))
    base = clients.totals[group]
    await clients.call("clear", group=group)
    warmup = int(RATE * WARMUP)
    failed: list[str] = []
    calls: list[float] = []  # seconds each publish call took: where a tail comes from

    async def publish_one(n: int, due: float) -> None:
        began = time.perf_counter()
        try:
            await publish(n, due)
        except Exception as exc:  # counted and reported: a publisher that cannot keep up
            failed.append(f"{type(exc).__name__}: {exc}")
        calls.append(time.perf_counter() - began)

    # This process's own garbage (the runs before kept their samples) collected now, so that
    # no full collection of it lands in the run, on whichever way runs (measured: 117 ms).
    gc.collect()
    before = [cpu_seconds(pid) for pid in pids]
    started = time.time()
    start = time.perf_counter()
    async with anyio.create_task_group() as tasks:
        for n in range(count):
            delay = start + n / RATE - time.perf_counter()
            if delay > 0:
                await anyio.sleep(delay)
            tasks.start_soon(publish_one, n, started + n / RATE)
    elapsed = time.perf_counter() - start
    cpu = [(cpu_seconds(pid) - c) / elapsed for pid, c in zip(pids, before, strict=True)]
    for _ in range(1000):  # up to 10 s for the last frames (shared memory: no event to wait on)
        if clients.totals[group] - base >= count:
            break
        await anyio.sleep(0.01)
    samples: list[tuple[int, float]] = await clients.call("samples", group=group)
    measured = [(n, seconds) for n, seconds in samples if n >= warmup]
    if not measured:
        raise RuntimeError(f"the steady clients received nothing after the warm-up: {failed[:3]}")
    latencies = [seconds * 1000 for _, seconds in measured]
    last_arrival = max(n / RATE + seconds for n, seconds in measured)
    return {
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "max_ms": max(latencies),
        "sustained_per_s": len(measured) / (last_arrival - WARMUP),
        "missing": float(count - warmup - len(measured)),
        "failed_publishes": float(len(failed)),
        "publish_call_p99_ms": percentile(calls, 99) * 1000,
        "server_cpu": cpu[0],
        "client_cpu": cpu[1],
    }


async def steady(
    server: RedisServer,
    a: ServeProcess,
    b: ServeProcess,
    peer: PeerProcess | None,
    clients: ClientProcess,
    scale: float,
) -> list[Figure]:
    seconds = max(2.0, 10.0 * scale)
    users = [f"bench-steady-{n}" for n in range(USERS)]
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=16), timeout=30) as http:
        tokens = await login(http, a.url, users)
    # A pool that waits for a free connection (redis-py's refuses past its size), and no
    # timeout on each reply, as redis-py's default client and the library's own.
    bare = connect(server.url(0), reply_timeout=False)
    results: dict[str, list[dict[str, float]]] = {}
    try:
        async with (
            HttpPublisher(a.port, connections=16) as poster,
            RedisPublisher(server.url(0)) as library,
        ):

            async def over_http(n: int, due: float) -> None:
                body = {"user_id": users[n % USERS], "type": "bench", "data": {"n": n, "t": due}}
                await poster.post(lambda: body)

            async def through_library(n: int, due: float) -> None:
                await library.publish(users[n % USERS], "bench", {"n": n, "t": due})

            async def to_peer(n: int, due: float) -> None:
                await bare.publish(users[n % USERS], frame_text(n, due))

            wire = WirePublisher(bare, library, users)

            ways: dict[str, tuple[Callable[[int, float], Coroutine[Any, Any, None]], int, int]]
            ways = {
                "ondoki, HTTP": (over_http, STEADY_ONDOKI, b.process.pid),
                "ondoki, library": (through_library, STEADY_ONDOKI, b.process.pid),
                DELIVERY: (wire.publish, STEADY_ONDOKI, b.process.pid),
            }
            await clients.connect(
                STEADY_ONDOKI, [ws_url(b.url, "/ws")], tokens, USERS, latency=True
            )
            if peer is not None:
                ways["broadcaster peer"] = (to_peer, STEADY_PEER, peer.process.pid)
                urls = [ws_url(peer.url, f"/ws/{user}") for user in users]
                await clients.connect(STEADY_PEER, urls, [], USERS, latency=True)
                # Warm: a PUBLISH before a subscription is live is lost.
                with anyio.fail_after(60):
                    while clients.anys[STEADY_PEER] < 1:
                        pipe = bare.pipeline(transaction=False)
                        for user in users:
                            pipe.publish(user, '{"type":"warmup"}')
                        await pipe.execute()
                        await anyio.sleep(0.05)
            names = list(ways)
            for round_ in range(ROUNDS if scale >= 1 else ROUNDS - 1):
                for name in names if round_ % 2 == 0 else reversed(names):
                    publish, group, pid = ways[name]
                    if name == DELIVERY:
                        primed = clients.totals[group] + USERS
                        await wire.begin()
                        # Its priming frames all in before the run counts frames.
                        with anyio.fail_after(30):
                            while clients.totals[group] < primed:  # noqa: ASYNC110
                                await anyio.sleep(0.01)
                    results.setdefault(name, []).append(
                        await run_steady(publish, group, clients, seconds, (pid, clients.pid))
                    )
                    if name == DELIVERY:
                        await wire.end()
            await clients.call("close", group=STEADY_ONDOKI)
            if peer is not None:
                await clients.call("close", group=STEADY_PEER)
    finally:
        await bare.aclose()
    what = f"steady {RATE:,.0f} events/s over {USERS:,} users"
    figures: list[Figure] = []
    median = {
        name: sorted(runs, key=lambda run: run["p99_ms"])[(len(runs) - 1) // 2]
        for name, runs in results.items()
    }
    for name, detail in median.items():
        figures.append(
            Figure(SECTION, f"{what}: {name}: p99", detail["p99_ms"], "ms", detail=detail)
        )
        figures.append(
            Figure(SECTION, f"{what}: {name}: sustained", detail["sustained_per_s"], "events/s",
                   goal=f">= {RATE * 0.98:,.0f}", met=detail["sustained_per_s"] >= RATE * 0.98)
        )  # fmt: skip
    if "broadcaster peer" in median:
        theirs = median["broadcaster peer"]["p99_ms"]
        for name in ("ondoki, HTTP", "ondoki, library"):
            ratio = median[name]["p99_ms"] / theirs
            figures.append(
                Figure(SECTION, f"{what}: p99 {name} / peer", ratio, "x", goal="<= 1x",
                       met=ratio <= 1.0)
            )  # fmt: skip
        # Reported beside them, with no goal: see the module's docstring.
        for percent in ("p50", "p99"):
            ratio = median[DELIVERY][f"{percent}_ms"] / median["broadcaster peer"][f"{percent}_ms"]
            figures.append(Figure(SECTION, f"{what}: {percent} {DELIVERY} / peer", ratio, "x"))
    return figures
