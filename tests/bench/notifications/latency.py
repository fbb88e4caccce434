"""Latency across instances: a client of instance B, events POSTed to instance A.

The bench POSTs `/internal/notifications` to A at a steady 200 msg/s (open loop, raw
HTTP/1.1 keep-alive so that the publisher costs little), each event carrying `time.time()`
at sending. The client takes `time.time()` when the frame is handed to it: p50 and p99,
after a 1 s warm-up.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time

import anyio
import httpx2 as httpx

from tests.bench.notifications.clients import LATENCY, ClientProcess
from tests.bench.notifications.common import (
    SECTION,
    HttpPublisher,
    cpu_seconds,
    login,
    percentile,
    ws_url,
)
from tests.bench.report import Figure
from tests.e2e.process import ServeProcess

LATENCY_RATE = 200.0  # msg/s


async def latency(
    a: ServeProcess, b: ServeProcess, clients: ClientProcess, scale: float
) -> list[Figure]:
    warmup = int(LATENCY_RATE)  # one second
    count = warmup + int(LATENCY_RATE * max(2.0, 10.0 * scale))
    async with httpx.AsyncClient(timeout=10) as http:
        (token,) = await login(http, a.url, ["bench-latency"])
    # (`connect` waits a second: past the server's wait for a `resume`.)
    await clients.connect(LATENCY, [ws_url(b.url, "/ws")], [token], 1, latency=True)
    posts: list[float] = []
    pids = (a.process.pid, b.process.pid, os.getpid(), clients.pid)
    async with HttpPublisher(a.port, connections=16) as publisher:

        async def post(n: int) -> None:
            posts.append(
                await publisher.post(
                    lambda: {"user_id": "bench-latency", "type": "bench",
                             "data": {"n": n, "t": time.time()}}
                )
            )  # fmt: skip

        start = time.perf_counter()
        cpu_before = [cpu_seconds(pid) for pid in pids]
        async with anyio.create_task_group() as tasks:
            for n in range(count):
                delay = start + n / LATENCY_RATE - time.perf_counter()
                if delay > 0:
                    await anyio.sleep(delay)
                tasks.start_soon(post, n)
        elapsed = time.perf_counter() - start
        cpu = [(cpu_seconds(pid) - c) / elapsed for pid, c in zip(pids, cpu_before, strict=True)]
        with contextlib.suppress(TimeoutError):
            await clients.wait_low(LATENCY, count)
    samples: list[tuple[int, float]] = await clients.call("samples", group=LATENCY)
    stats = await clients.call("stats", group=LATENCY)
    await clients.call("close", group=LATENCY)
    measured = [seconds * 1000 for n, seconds in samples if n >= warmup]
    if not measured:
        raise RuntimeError(f"the latency client received nothing: {stats}")
    detail = {
        "rate_per_s": LATENCY_RATE,
        "samples": float(len(measured)),
        "missing": float(count - len(samples)),
        "max_ms": max(measured),
        "post_p50_ms": statistics.median(posts) * 1000,
        "cpu_a": cpu[0],
        "cpu_b": cpu[1],
        "cpu_publisher": cpu[2],
        "cpu_client": cpu[3],
    }
    name = f"latency, POST on A to a client on B at {LATENCY_RATE:.0f} msg/s"
    return [
        Figure(SECTION, f"{name}: p50", percentile(measured, 50), "ms", detail=detail),
        Figure(SECTION, f"{name}: p99", percentile(measured, 99), "ms", detail=detail),
    ]
