"""Jobs: `DramatiqJobQueue` + `run_worker` against bare dramatiq on the same redis-server.

Every worker is a process of its own (`python -m tests.bench.jobs ours|bare URL ...`), as in
production, started afresh (after a FLUSHALL of the section's server) for each measurement
and stopped after it. Both log at INFO, as `ondoki worker` does by default. Nothing is
asserted; goals are reported.

1. Throughput of no-op jobs, first enqueue to last completion. Ours: `DramatiqJobQueue.enqueue`
   from this process (sequentially), one `run_worker` process, `threads=1`, queues
   `celery,media`, production `WorkerOptions` but `poll_interval` 0.01 s, no `notify`.
   Bare: a `RedisBroker` (dramatiq's default middleware), a plain no-op actor, a
   `dramatiq.Worker(worker_threads=1, worker_timeout=10)` on the same queues, `actor.send()`
   from this process. Bare runs with the prefetch of 1 that ondoki's worker uses (so that
   an idle second worker can take what the first cannot start; issue 4), which isolates
   ondoki's bookkeeping (record, lease, transactions, notifications hand-off), and with
   dramatiq's default prefetch (2 per thread and queue), which is what dramatiq users get.
   Completion, for all three: once every job is enqueued this process polls `HLEN` of
   dramatiq's message hash (`<ns>:media.msgs`) every 2 ms; an entry leaves it when its
   message is acked, after the actor returned (ours returns once the final record is
   stored and the lease released). Nothing is added to either actor for it; afterwards,
   untimed, every record is checked to be `succeeded`. Three rounds, the order of the
   candidates reversed each round; medians.

   At one worker thread, bare dramatiq's throughput is bounded by its consumer: one that
   holds `prefetch` messages not yet acked sleeps 5-10 ms before it looks again, so
   prefetch 1 runs one job per sleep (~130/s) and 2 about two (~260/s). ondoki's worker
   prefetches one more message than it runs and its broker hands it over as soon as the
   running one is acked (`JobBroker.do_fetch`), so it is not bound by that sleep; its own
   cost is ~3-4 ms of bookkeeping per job (record, lease, notifications hand-off).
2. Enqueue-to-start latency on an idle worker: one job at a time, each after a random pause
   long enough for dramatiq's consumer to back off to its longest poll (as a worker idle
   for a while is); from just before `enqueue` to the `time.time()` the handler takes
   first thing (its result, read from the record). An idle consumer sleeps 0.5-1 times
   `poll_interval` between fetches, so this is mostly that wait: shown with the production
   default (`WorkerOptions().poll_interval`, 0.05 s) and with 0.1 s; bare dramatiq at 0.1 s for
   reference (its actor stores its start time in a key).
3. `DramatiqJobQueue.enqueue` alone (record + message; the API-side cost), p50, from (2).
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import anyio
import dramatiq
import redis
import redis.asyncio as aioredis
from dramatiq.brokers.redis import RedisBroker

from ondoki.domain.jobs import DEFAULT_QUEUES, JobKinds
from ondoki.models import FINAL_STATES, JobRecord
from ondoki.ports.jobs import JobContext
from ondoki_adapters.redis.jobs import DramatiqJobQueue, JobKeys, decode_record
from ondoki_adapters.redis.worker import WorkerOptions, run_worker
from tests.bench.report import Figure
from tests.redis_server import RedisServer

ROOT = Path(__file__).resolve().parents[2]
SECTION = "jobs"
QUEUE = "media"
NOOP = "bench.noop"
STAMP = "bench.stamp"
BARE_NAMESPACE = "bench-bare"
OURS_NAMESPACE = "ondoki"
#: The longest wait the goal allows between enqueue and the handler's start, p50.
GOAL_LATENCY = 0.050
#: What ondoki's bookkeeping may cost of bare dramatiq's throughput.
GOAL_COST = 0.25
#: The production default (`WorkerOptions`, and the `worker_poll_interval_seconds` setting).
DEFAULT_POLL = WorkerOptions().poll_interval
FAST_POLL = 0.1
#: Throughput runs: the workers poll this often (dramatiq's `worker_timeout`).
THROUGHPUT_POLL = 0.01
ROUNDS = 3
#: Jobs run before measuring latency, without a pause, to warm connections and scripts up.
WARM_UP = 2

Worker = Literal["ours", "bare"]


# -- the worker processes ---------------------------------------------------------------------


def noop(ctx: JobContext, payload: dict[str, Any]) -> None:
    return None


def stamp(ctx: JobContext, payload: dict[str, Any]) -> float:
    return time.time()


def bench_kinds() -> JobKinds:
    kinds = JobKinds()
    kinds.register(NOOP, noop, queue=QUEUE)
    kinds.register(STAMP, stamp, queue=QUEUE)
    return kinds


BareActor = dramatiq.Actor[..., None]


def bare_broker(client: redis.Redis) -> tuple[RedisBroker, BareActor, BareActor]:
    """Bare dramatiq as its docs show it: a RedisBroker with the default middleware, a no-op
    actor and one that stores when it started in the key it is given."""
    broker = RedisBroker(client=client, namespace=BARE_NAMESPACE)  # type: ignore[no-untyped-call]

    def bare_noop() -> None:
        return None

    def bare_stamp(key: str) -> None:
        started = time.time()
        client.set(key, repr(started), ex=600)

    noop_actor: BareActor = dramatiq.actor(broker=broker, actor_name="noop", queue_name=QUEUE)(
        bare_noop
    )
    stamp_actor: BareActor = dramatiq.actor(broker=broker, actor_name="stamp", queue_name=QUEUE)(
        bare_stamp
    )
    for queue in DEFAULT_QUEUES:
        broker.declare_queue(queue)
    return broker, noop_actor, stamp_actor


async def _ours_worker(url: str, poll: float, ready: Path) -> None:
    async with anyio.create_task_group() as tasks:
        await tasks.start(
            partial(
                run_worker,
                url,
                kinds=bench_kinds(),
                queues=DEFAULT_QUEUES,
                namespace=OURS_NAMESPACE,
                threads=1,
                options=WorkerOptions(poll_interval=poll),
                handle_signals=True,
            )
        )
        await anyio.Path(ready).write_text(str(os.getpid()))


def _bare_worker(url: str, poll: float, prefetch: int | None, ready: Path) -> None:
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    client = redis.Redis.from_url(url)
    broker, _, _ = bare_broker(client)
    worker = dramatiq.Worker(
        broker, queues=set(DEFAULT_QUEUES), worker_timeout=round(poll * 1000), worker_threads=1
    )
    if prefetch is not None:
        worker.queue_prefetch = prefetch
    worker.start()
    try:
        ready.write_text(str(os.getpid()))
        stop.wait()
    finally:
        worker.stop()
        broker.close()
        client.close()


def _stop_with_parent() -> None:
    """Stop this worker (SIGTERM: gracefully) once the benchmark that started it is gone,
    even if it was killed without a chance to clean up; exit hard if that does not work."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def worker_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.jobs")
    parser.add_argument("worker", choices=["ours", "bare"])
    parser.add_argument("url")
    parser.add_argument("--ready", type=Path, required=True)
    parser.add_argument("--poll", type=float, required=True)
    parser.add_argument("--prefetch", type=int)
    args = parser.parse_args(argv)
    # As `ondoki worker` runs by default (log_level info), for both.
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    _stop_with_parent()
    if args.worker == "ours":
        anyio.run(_ours_worker, args.url, args.poll, args.ready)
    else:
        _bare_worker(args.url, args.poll, args.prefetch, args.ready)
    return 0


# -- this side ----------------------------------------------------------------------------------


@asynccontextmanager
async def worker_process(
    worker: Worker, url: str, *, poll: float, prefetch: int | None = None
) -> AsyncIterator[None]:
    """A worker process, ready to take jobs; terminated (killed if need be) on exit."""
    with tempfile.TemporaryDirectory(prefix="ondoki-bench-jobs-") as tmp:
        ready, log_path = Path(tmp) / "ready", Path(tmp) / "worker.log"
        command = [sys.executable, "-m", "tests.bench.jobs", worker, url]
        command += ["--ready", str(ready), "--poll", str(poll)]
        if prefetch is not None:
            command += ["--prefetch", str(prefetch)]
        with log_path.open("wb") as log_file:
            process = await anyio.open_process(
                command, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file, cwd=ROOT
            )
        try:
            with anyio.fail_after(60):
                while not await anyio.Path(ready).exists():
                    if process.returncode is not None:
                        raise RuntimeError(f"{worker} worker exited: {log_path.read_text()}")
                    await anyio.sleep(0.02)
            yield
        finally:
            with anyio.CancelScope(shield=True):
                if process.returncode is None:
                    process.terminate()
                    with anyio.move_on_after(30):
                        await process.wait()
                    if process.returncode is None:
                        process.kill()
                        await process.wait()
                await process.aclose()


async def until(check: Callable[[], Awaitable[bool]], *, within: float, every: float) -> None:
    with anyio.fail_after(within):
        while not await check():  # noqa: ASYNC110  (the state is in another process)
            await anyio.sleep(every)


def messages_key(namespace: str) -> str:
    """dramatiq's hash of the messages of QUEUE not yet acked."""
    return f"{namespace}:{QUEUE}.msgs"


async def drained(client: aioredis.Redis, namespace: str, *, within: float) -> None:
    async def empty() -> bool:
        return int(await client.hlen(messages_key(namespace))) == 0

    await until(empty, within=within, every=0.002)


@dataclass
class Throughput:
    jobs_per_second: float
    enqueue_seconds: float


async def ours_throughput(server: RedisServer, count: int) -> Throughput:
    server.flushall()
    url = server.url(1)
    monitor = aioredis.Redis.from_url(url)
    async with worker_process("ours", url, poll=THROUGHPUT_POLL):
        queue = DramatiqJobQueue(url, kinds=bench_kinds(), namespace=OURS_NAMESPACE)
        try:
            warm = [await queue.enqueue(NOOP, {}) for _ in range(10)]
            await drained(monitor, JobKeys(OURS_NAMESPACE).broker_namespace, within=30)
            start = time.perf_counter()
            ids = [await queue.enqueue(NOOP, {}) for _ in range(count)]
            enqueued = time.perf_counter()
            await drained(monitor, JobKeys(OURS_NAMESPACE).broker_namespace, within=600)
            end = time.perf_counter()
            states = await record_states(monitor, queue.keys, warm + ids)
        finally:
            await queue.aclose()
            await monitor.aclose()
    if states != {"succeeded": len(warm) + count}:
        raise RuntimeError(f"ours: not every job succeeded: {states}")
    return Throughput(count / (end - start), enqueued - start)


async def record_states(
    client: aioredis.Redis, keys: JobKeys, job_ids: list[str]
) -> dict[str, int]:
    async with client.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.hget(keys.job(job_id), "record")
        raws: list[bytes | None] = await pipe.execute()
    states: dict[str, int] = {}
    for raw in raws:
        state = "missing" if raw is None else decode_record(raw).state
        states[state] = states.get(state, 0) + 1
    return states


async def bare_throughput(server: RedisServer, count: int, prefetch: int | None) -> Throughput:
    server.flushall()
    url = server.url(1)
    monitor = aioredis.Redis.from_url(url)
    client = redis.Redis.from_url(url)
    broker, actor, _ = bare_broker(client)
    try:
        async with worker_process("bare", url, poll=THROUGHPUT_POLL, prefetch=prefetch):
            for _ in range(10):
                actor.send()
            await drained(monitor, BARE_NAMESPACE, within=30)
            start = time.perf_counter()
            for _ in range(count):
                actor.send()
            enqueued = time.perf_counter()
            await drained(monitor, BARE_NAMESPACE, within=600)
            end = time.perf_counter()
            dead = await monitor.zcard(f"{BARE_NAMESPACE}:{QUEUE}.XQ")
    finally:
        broker.close()
        client.close()
        await monitor.aclose()
    if dead:
        raise RuntimeError(f"bare: {dead} messages were dead-lettered")
    return Throughput(count / (end - start), enqueued - start)


def idle_pause(poll: float) -> float:
    """Long enough for dramatiq's consumer to back off to its longest sleep (its sleeps
    double from 5-10 ms up to 0.5-1 times `worker_timeout`; for 1 s, the sleeps before the
    longest add up to 0.6-1.3 s), plus a random part so enqueues fall anywhere in it."""
    return 1.3 * poll + random.uniform(0, poll)


@dataclass
class Latency:
    start: list[float]  # enqueue call to handler start, seconds
    enqueue: list[float]  # the enqueue call alone, seconds


async def ours_latency(server: RedisServer, count: int, poll: float) -> Latency:
    server.flushall()
    url = server.url(1)
    result = Latency([], [])
    async with worker_process("ours", url, poll=poll):
        queue = DramatiqJobQueue(url, kinds=bench_kinds(), namespace=OURS_NAMESPACE)
        try:
            for n in range(-WARM_UP, count):  # warm-ups: connections, scripts, imports
                if n >= 0:
                    await anyio.sleep(idle_pause(poll))
                before = time.time()
                job_id = await queue.enqueue(STAMP, {})
                after = time.time()
                record = await finished(queue, job_id)
                if record.state != "succeeded" or not isinstance(record.result, float):
                    raise RuntimeError(f"ours: stamp job ended {record.state}: {record.error}")
                if n >= 0:
                    result.start.append(record.result - before)
                    result.enqueue.append(after - before)
        finally:
            await queue.aclose()
    return result


async def finished(queue: DramatiqJobQueue, job_id: str) -> JobRecord:
    records: list[JobRecord] = []

    async def final() -> bool:
        records[:] = [await queue.get(job_id)]
        return records[0].state in FINAL_STATES

    await until(final, within=30, every=0.002)
    return records[0]


async def bare_latency(server: RedisServer, count: int, poll: float) -> Latency:
    server.flushall()
    url = server.url(1)
    monitor = aioredis.Redis.from_url(url)
    client = redis.Redis.from_url(url)
    broker, _, actor = bare_broker(client)
    result = Latency([], [])
    try:
        async with worker_process("bare", url, poll=poll):
            for n in range(-WARM_UP, count):
                if n >= 0:
                    await anyio.sleep(idle_pause(poll))
                key = f"bench:stamp:{n + WARM_UP}"
                before = time.time()
                actor.send(key)
                after = time.time()
                stamped: list[bytes | str | None] = [None]

                async def done(key: str = key, stamped: list[bytes | str | None] = stamped) -> bool:
                    stamped[0] = await monitor.get(key)
                    return stamped[0] is not None

                await until(done, within=30, every=0.002)
                if n >= 0 and stamped[0] is not None:
                    result.start.append(float(stamped[0]) - before)
                    result.enqueue.append(after - before)
    finally:
        broker.close()
        client.close()
        await monitor.aclose()
    return result


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


async def run(server: RedisServer, *, scale: float = 1.0) -> list[Figure]:
    # At 1 thread the workers run ~130-260 no-op jobs/s (see the module docstring), so a
    # few hundred jobs give a steady rate; an idle-worker sample takes about 1.3-2.3 times
    # the poll interval. Full: ~2 minutes; quick: ~30 s.
    count = max(100, int(500 * scale))
    samples = max(20, int(200 * scale))
    bare_samples = max(10, samples // 5)
    slow_samples = max(3, int(10 * scale))

    # 1. Throughput, in alternating order.
    candidates: dict[str, Callable[[], Awaitable[Throughput]]] = {
        "ours": partial(ours_throughput, server, count),
        "bare": partial(bare_throughput, server, count, 1),
        "bare-default-prefetch": partial(bare_throughput, server, count, None),
    }
    runs: dict[str, list[Throughput]] = {name: [] for name in candidates}
    order = list(candidates)
    for _ in range(ROUNDS):
        for name in order:
            runs[name].append(await candidates[name]())
        order.reverse()
    rate = {name: statistics.median(t.jobs_per_second for t in r) for name, r in runs.items()}

    # 2, 3. Latency on an idle worker.
    fast = await ours_latency(server, samples, FAST_POLL)
    bare_fast = await bare_latency(server, bare_samples, FAST_POLL)
    slow = await ours_latency(server, slow_samples, DEFAULT_POLL)
    server.flushall()

    return figures_of(rate, runs, count, fast=fast, bare_fast=bare_fast, slow=slow)


def figures_of(
    rate: dict[str, float],
    runs: dict[str, list[Throughput]],
    count: int,
    *,
    fast: Latency,
    bare_fast: Latency,
    slow: Latency,
) -> list[Figure]:
    figures: list[Figure] = []
    labels = {
        "ours": "DramatiqJobQueue + run_worker",
        "bare": "bare dramatiq, prefetch 1",
        "bare-default-prefetch": "bare dramatiq, default prefetch (2)",
    }
    for name, label in labels.items():
        detail = {f"round{n}": t.jobs_per_second for n, t in enumerate(runs[name])}
        detail["jobs"] = count
        detail["enqueue_us_per_job"] = (
            statistics.median(t.enqueue_seconds for t in runs[name]) / count * 1e6
        )
        figures.append(
            Figure(SECTION, f"no-op jobs/s, {label}", rate[name], "jobs/s", detail=detail)
        )
    for name in ("bare", "bare-default-prefetch"):
        ratio = rate["ours"] / rate[name]
        figures.append(Figure(SECTION, f"throughput ours / {labels[name]}", ratio, "x"))
    # The goal is against what a dramatiq user gets: its default prefetch.
    cost = 1 - rate["ours"] / rate["bare-default-prefetch"]
    figures.append(
        Figure(
            SECTION,
            "bookkeeping cost, 1 - ours/bare dramatiq (default prefetch)",
            cost * 100,
            "%",
            goal=f"<= {GOAL_COST:.0%}",
            met=cost <= GOAL_COST,
        )
    )
    for name, latency, poll in (
        ("ours", fast, FAST_POLL),
        ("bare dramatiq", bare_fast, FAST_POLL),
        ("ours", slow, DEFAULT_POLL),
    ):
        p50 = statistics.median(latency.start)
        label = f"{name} enqueue-to-start, idle worker, poll {poll:g}s"
        detail = {"samples": len(latency.start), "max_ms": max(latency.start) * 1e3}
        if name == "ours":
            goal, met = f"< {GOAL_LATENCY * 1e3:.0f} ms", p50 < GOAL_LATENCY
            figures.append(Figure(SECTION, f"{label}, p50", p50 * 1e3, "ms", goal, met, detail))
        else:
            figures.append(Figure(SECTION, f"{label}, p50", p50 * 1e3, "ms", detail=detail))
        p99 = percentile(latency.start, 0.99)
        figures.append(Figure(SECTION, f"{label}, p99", p99 * 1e3, "ms"))
    enqueues = fast.enqueue + slow.enqueue
    detail = {
        "p99_ms": percentile(enqueues, 0.99) * 1e3,
        "bare_send_p50_ms": statistics.median(bare_fast.enqueue) * 1e3,
    }
    p50 = statistics.median(enqueues) * 1e3
    figures.append(
        Figure(SECTION, "DramatiqJobQueue.enqueue latency, p50", p50, "ms", detail=detail)
    )
    return figures


if __name__ == "__main__":
    sys.exit(worker_main())
