"""Fan-out: 1,000 WebSockets on instance B in three shapes, published to through instance A.

Shapes (users x sockets per user): 1 x 1,000, 100 x 10 and 1,000 x 1. A step is one event
to every user of the shape (users x sockets frames). ondoki is published to in three ways:

- `http`: one `POST /internal/notifications` per event, to instance A (raw HTTP/1.1
  keep-alive, 16 connections: a publisher cheap enough not to be what is measured);
- `http batch`: one POST of a JSON list carrying the step's events (and, with few users,
  several steps: BATCH_EVENTS events a call);
- `library`: the same batches through `RedisPublisher.publish_many`, straight to Redis.

The broadcaster peer (`tests/bench/peer_broadcaster.py`, its clients on `/ws/{user}`) is
published to straight to Redis, as `broadcast.publish` does, one PUBLISH per event, in the
same batches pipelined (one round trip): what the peer's server sustains, not its publisher.

Publishing is closed-loop: at most WINDOW steps ahead of the slowest client, from up to
CONCURRENCY calls at once, so the figure is the rate a server sustains, not how much it can
buffer nor one publisher's round trips. Rounds alternate the ways so that
drift in the machine falls on all; the median round is reported, with the CPU share of the
server, the client process and Redis. The ratio holds only while the servers, not the client
process, are the limit: the busiest client round is reported against 90% of a core.

The floor is redis-py pub/sub with no WebSocket: one subscriber connection (in the client
process) receiving raw RESP batches of PUBLISH; it is in messages/s into one process.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio
import httpx2 as httpx
import redis.asyncio as aioredis

from ondoki.domain.notifications import UserEvent
from ondoki_adapters.redis.connection import connect
from ondoki_adapters.redis.publisher import RedisPublisher
from tests.bench.notifications.clients import FLOOR, ONDOKI, PEER, ClientProcess
from tests.bench.notifications.common import (
    GOAL,
    ROUNDS,
    SECTION,
    WINDOW,
    HttpPublisher,
    PeerProcess,
    cpu_seconds,
    frame_text,
    login,
    resp,
    ws_url,
)
from tests.bench.report import Figure
from tests.e2e.process import ServeProcess
from tests.redis_server import RedisServer

SHAPES = [(1, 1000), (100, 10), (1000, 1)]  # users x sockets per user
#: Events a batch carries when a shape has fewer users than this (else one step a batch).
BATCH_EVENTS = 100
FLOOR_BATCH, FLOOR_WINDOW = 500, 20_000
#: Publish calls in flight at once (one caller's calls in turn would measure its round trips,
#: not what the server sustains).
CONCURRENCY = 4
WAYS = ("http", "http batch", "library", "peer")


@dataclass
class Round:
    delivered_per_s: float
    server_cpu: float
    client_cpu: float
    redis_cpu: float
    published: int
    undelivered: int


async def drive(
    publish: Callable[[int], Awaitable[int]],
    group: int,
    clients: ClientProcess,
    *,
    seconds: float,
    ramp: float,
    window: int,
    pids: tuple[int, int, int],
    concurrency: int = CONCURRENCY,
) -> Round:
    """Publish closed-loop (at most `window` steps ahead of the slowest receiver, from up to
    `concurrency` calls at once) for `ramp` + `seconds`; the delivery rate and CPU shares
    over the last `seconds`. `publish(n)` publishes from step `n` on and answers how many
    steps it published."""
    base = clients.lows[group]
    issued = 0  # steps asked for, published or on their way
    start = time.perf_counter()
    first: tuple[float, int, list[float]] | None = None

    async def worker() -> None:
        nonlocal issued, first
        while True:
            now = time.perf_counter()
            if first is None and now - start >= ramp:
                first = (now, clients.totals[group], [cpu_seconds(p) for p in pids])
            if now - start >= ramp + seconds:
                return
            if issued - (clients.lows[group] - base) < window:
                n = issued
                issued += 1  # claimed now: other workers start after it
                issued += await publish(n) - 1
            else:
                await anyio.sleep(0.0005)

    async with anyio.create_task_group() as tasks:
        for _ in range(concurrency):
            tasks.start_soon(worker)
    end, total, cpus = time.perf_counter(), clients.totals[group], [cpu_seconds(p) for p in pids]
    assert first is not None
    elapsed = end - first[0]
    shares = [(c - c0) / elapsed for c, c0 in zip(cpus, first[2], strict=True)]
    with contextlib.suppress(TimeoutError):  # drain: what never arrives is reported
        await clients.wait_low(group, base + issued)
    return Round(
        delivered_per_s=(total - first[1]) / elapsed,
        server_cpu=shares[0],
        client_cpu=shares[1],
        redis_cpu=shares[2],
        published=issued,
        undelivered=base + issued - clients.lows[group],
    )


class Publishers:
    """The four ways of publishing a step to a shape's users."""

    def __init__(
        self,
        users: list[str],
        http: HttpPublisher,
        library: RedisPublisher,
        bare: aioredis.Redis,
    ) -> None:
        self.users = users
        self.http = http
        self.library = library
        self.bare = bare
        self.steps = max(1, min(WINDOW // 2, BATCH_EVENTS // len(users)))

    def events(self, first: int) -> list[UserEvent]:
        now = time.time()
        return [
            UserEvent(user, "bench", {"n": n, "t": now})
            for n in range(first, first + self.steps)
            for user in self.users
        ]

    async def single(self, n: int) -> int:
        async with anyio.create_task_group() as tasks:
            for user in self.users:
                body = {"user_id": user, "type": "bench", "data": {"n": n, "t": time.time()}}
                tasks.start_soon(self.http.post, lambda body=body: body)
        return 1

    async def batch(self, n: int) -> int:
        events = [{"user_id": e.user_id, "type": e.type, "data": e.data} for e in self.events(n)]
        await self.http.post(lambda: events)
        return self.steps

    async def through_library(self, n: int) -> int:
        await self.library.publish_many(self.events(n))
        return self.steps

    async def peer(self, n: int) -> int:
        pipe = self.bare.pipeline(transaction=False)
        for step in range(n, n + self.steps):
            text = frame_text(step)
            for user in self.users:
                pipe.publish(user, text)
        await pipe.execute()
        return self.steps

    def way(self, name: str) -> Callable[[int], Awaitable[int]]:
        return {
            "http": self.single,
            "http batch": self.batch,
            "library": self.through_library,
            "peer": self.peer,
        }[name]


async def shape(
    server: RedisServer,
    a: ServeProcess,
    b: ServeProcess,
    peer: PeerProcess | None,
    clients: ClientProcess,
    users_count: int,
    per_user: int,
    scale: float,
) -> tuple[dict[str, list[Round]], dict[str, int]]:
    seconds, ramp = max(1.0, 3.0 * scale), 0.5
    redis_pid = server.process.pid if server.process else os.getpid()
    users = [f"bench-fan-{users_count}-{n}" for n in range(users_count)]
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=16), timeout=30) as http:
        tokens = await login(http, a.url, users)
    count = users_count * per_user
    reopened = {"ondoki": await clients.connect(ONDOKI, [ws_url(b.url, "/ws")], tokens, count)}
    # A pool that waits for a free connection (redis-py's refuses past its size).
    bare = connect(server.url(0))
    rounds: dict[str, list[Round]] = {way: [] for way in WAYS}
    try:
        async with (
            HttpPublisher(a.port, connections=16) as poster,
            RedisPublisher(server.url(0)) as library,
        ):
            publishers = Publishers(users, poster, library, bare)
            # Every client subscribed and delivering before anything is measured.
            await publishers.through_library(0)
            await clients.wait_low(ONDOKI, publishers.steps)
            ways = [w for w in WAYS if w != "peer"]
            if peer is not None:
                ways.append("peer")
                reopened["peer"] = await connect_peer(peer, clients, users, per_user, bare)
            for round_ in range(ROUNDS if scale >= 1 else ROUNDS - 1):
                for way in ways if round_ % 2 == 0 else reversed(ways):
                    group, server_pid = (
                        (PEER, peer.process.pid) if way == "peer" and peer else
                        (ONDOKI, b.process.pid)
                    )  # fmt: skip
                    rounds[way].append(
                        await drive(
                            publishers.way(way), group, clients, seconds=seconds, ramp=ramp,
                            window=WINDOW, pids=(server_pid, clients.pid, redis_pid),
                        )
                    )  # fmt: skip
    finally:
        await bare.aclose()
        with contextlib.suppress(KeyError):
            await clients.call("close", group=ONDOKI)
        if peer is not None:
            with contextlib.suppress(KeyError, RuntimeError):
                await clients.call("close", group=PEER)
    return rounds, reopened


async def connect_peer(
    peer: PeerProcess, clients: ClientProcess, users: list[str], per_user: int, bare: aioredis.Redis
) -> int:
    """The peer's clients, warmed: every one has had a frame.

    broadcaster loses a subscriber that joins a channel while the channel's first subscriber
    is still subscribing (`Broadcast.subscribe` awaits, then replaces the set of queues): one
    client per channel first, then the rest, as long-lived channels have it. A PUBLISH before
    a subscription is live is lost: warm-up frames are sent until every client had one (they
    are not counted as notifications).
    """
    urls = [ws_url(peer.url, f"/ws/{user}") for user in users]

    async def warm() -> None:
        with anyio.fail_after(60):
            while clients.anys[PEER] < 1:
                pipe = bare.pipeline(transaction=False)
                for user in users:
                    pipe.publish(user, '{"type":"warmup"}')
                await pipe.execute()
                await anyio.sleep(0.05)

    reopened = await clients.connect(PEER, urls, [], len(users), settle=0.2)
    await warm()
    if per_user > 1:
        reopened += await clients.connect(PEER, urls, [], len(users) * (per_user - 1))
        await warm()
    return reopened


async def floor(server: RedisServer, clients: ClientProcess, scale: float) -> Figure:
    """redis-py pub/sub into one process: the most any Python subscriber takes in."""
    seconds, ramp = max(1.0, 3.0 * scale), 0.5
    redis_pid = server.process.pid if server.process else os.getpid()
    # The floor's publisher must outrun one redis-py subscriber: a batch of PUBLISH commands
    # encoded once, written as raw RESP on its own connection; the replies are only counted.
    batch = b"".join(
        resp(b"PUBLISH", b"bench-floor", frame_text(k).encode()) for k in range(FLOOR_BATCH)
    )
    raw = await anyio.connect_tcp("127.0.0.1", server.port)
    try:
        if server.password:
            await raw.send(resp(b"AUTH", server.password.encode()))
            await raw.receive()

        async def publish_floor(n: int) -> int:
            await raw.send(batch)
            replies = 0
            while replies < FLOOR_BATCH:
                replies += (await raw.receive()).count(b"\n")  # one ":<receivers>\r\n" each
            return FLOOR_BATCH

        await clients.call("floor", group=FLOOR, url=server.url(0), channel="bench-floor")
        result = await drive(
            publish_floor, FLOOR, clients, seconds=seconds, ramp=ramp, window=FLOOR_WINDOW,
            pids=(clients.pid, os.getpid(), redis_pid), concurrency=1,
        )  # fmt: skip
        await clients.call("close", group=FLOOR)
    finally:
        await raw.aclose()
    return Figure(
        SECTION,
        "floor: redis-py pub/sub into one process (no WebSocket)",
        result.delivered_per_s,
        "msg/s",
        detail={
            "subscriber_cpu": result.server_cpu,
            "publisher_cpu": result.client_cpu,
            "redis_cpu": result.redis_cpu,
        },
    )


def summary(these: list[Round], reopened: int, sockets: int) -> tuple[float, dict[str, float]]:
    rates = [r.delivered_per_s for r in these]
    middle = sorted(these, key=lambda r: r.delivered_per_s)[len(these) // 2]
    return middle.delivered_per_s, {
        "min_per_s": min(rates),
        "max_per_s": max(rates),
        "events_per_s": middle.delivered_per_s / sockets,
        "server_cpu": middle.server_cpu,
        "server_cpu_us_per_frame": middle.server_cpu / max(middle.delivered_per_s, 1) * 1e6,
        "client_cpu": middle.client_cpu,
        "redis_cpu": middle.redis_cpu,
        "undelivered": float(sum(r.undelivered for r in these)),
        "reopened_at_connect": float(reopened),
    }


async def fanout(
    server: RedisServer,
    a: ServeProcess,
    b: ServeProcess,
    peer: PeerProcess | None,
    clients: ClientProcess,
    scale: float,
) -> list[Figure]:
    figures: list[Figure] = []
    busiest = 0.0
    for users, per_user in SHAPES:
        rounds, reopened = await shape(server, a, b, peer, clients, users, per_user, scale)
        what = f"fan-out, {users:,} users x {per_user:,} sockets"
        rates: dict[str, float] = {}
        for way, these in rounds.items():
            if not these:
                continue
            rate, detail = summary(
                these, reopened["peer" if way == "peer" else "ondoki"], users * per_user
            )
            rates[way] = rate
            name = "broadcaster peer" if way == "peer" else f"ondoki, {way}"
            figures.append(Figure(SECTION, f"{what}: {name}", rate, "frames/s", detail=detail))
            busiest = max([busiest, *(r.client_cpu for r in these)])
        if "peer" in rates:
            best = max(rates["http batch"], rates["library"])
            figures.append(
                Figure(
                    SECTION, f"{what}: ondoki (batch or library) / peer", best / rates["peer"],
                    "x", goal=f">= {GOAL}x", met=best / rates["peer"] >= GOAL,
                    detail={way: rates[way] / rates["peer"] for way in rates if way != "peer"},
                )
            )  # fmt: skip
            figures.append(
                Figure(SECTION, f"{what}: ondoki single-event HTTP / peer",
                       rates["http"] / rates["peer"], "x")
            )  # fmt: skip
    figures.append(await floor(server, clients, scale))
    figures.append(
        Figure(SECTION, "fan-out CPU: client process, busiest round", busiest * 100, "%",
               goal="< 90% (else the client, not a server, was the limit)", met=busiest < 0.9)
    )  # fmt: skip
    if busiest >= 0.9:
        print(
            f"notifications: the client process used {busiest:.0%} of a core in a fan-out "
            "round: it may have been the limit there, not the server",
            file=sys.stderr,
        )
    return figures
