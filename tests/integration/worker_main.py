"""Job kinds for the job tests, and a worker process to run them.

`python -m tests.integration.worker_main BROKER_URL [--ready FILE]` runs `run_worker` with
short timings and `TEST_TIME_LIMITS`, the demo kind and the test kinds below, until SIGTERM or SIGINT. The kinds
leave marker files in the `dir` their payload names, so tests (and other processes) can
see what handlers did.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import anyio

from ondoki.domain.jobs import Backoff, JobKinds, register_demo_kinds
from ondoki.errors import JobCancelled, RetryableJobError
from ondoki.ports.jobs import JobContext
from ondoki_adapters.redis.worker import WorkerOptions, run_worker

#: Short backoffs, so retries happen within a test.
FAST_BACKOFF = Backoff(first=0.1, factor=2.0, maximum=0.4, jitter=0.0)


def _dir(payload: dict[str, Any]) -> Path:
    return Path(str(payload["dir"]))


def mark(payload: dict[str, Any], name: str, text: str = "") -> None:
    """Leave the marker file `name` (atomically, so readers never see half of it)."""
    target = _dir(payload) / name
    scratch = target.with_name(f".{target.name}.{os.getpid()}")
    scratch.write_text(text)
    scratch.replace(target)


def flaky(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Fails (retryably) until attempt `succeed_on`."""
    ctx.report("try", 0.5)
    if ctx.attempt < int(payload.get("succeed_on", 2)):
        raise RetryableJobError(f"not yet (attempt {ctx.attempt})")
    return {"attempt": ctx.attempt}


def broken(ctx: JobContext, payload: dict[str, Any]) -> None:
    """Fails for good, unless the marker file `fixed` exists."""
    if not (_dir(payload) / "fixed").exists():
        raise ValueError("boom: broken on purpose")


def block(ctx: JobContext, payload: dict[str, Any]) -> str:
    """Runs until cancelled (checking every 10 ms), or for `limit` seconds."""
    name = str(payload.get("name", "block"))
    mark(payload, f"{name}.started")
    deadline = time.monotonic() + float(payload.get("limit", 30))
    try:
        while time.monotonic() < deadline:
            ctx.checkpoint()
            time.sleep(0.01)
    except JobCancelled as exc:
        mark(payload, f"{name}.stopped", type(exc).__name__)
        raise
    return "ran to its limit"


def slow(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Works for `seconds` in 20 ms steps, recording `start last-alive` of this attempt in
    `intervals/<job>.<attempt>.<pid>`; a killed attempt's interval ends at its last step."""
    pid = os.getpid()
    intervals = _dir(payload) / "intervals"
    intervals.mkdir(exist_ok=True)
    record = intervals / f"{ctx.job_id}.{ctx.attempt}.{pid}"
    started = time.time()
    steps = max(1, round(float(payload.get("seconds", 1.0)) / 0.02))
    for step in range(steps):
        ctx.checkpoint()
        scratch = record.with_name(f".{record.name}")
        scratch.write_text(f"{started} {time.time()}")
        scratch.replace(record)
        ctx.report("work", (step + 1) / steps)
        time.sleep(0.02)
    scratch = record.with_name(f".{record.name}")
    scratch.write_text(f"{started} {time.time()}")
    scratch.replace(record)
    return {"pid": pid}


def poison(ctx: JobContext, payload: dict[str, Any]) -> None:
    """Kills the process running it, as a job that crashes its worker (OOM, segfault) does."""
    mark(payload, f"poison.{ctx.attempt}.{os.getpid()}")
    os.kill(os.getpid(), signal.SIGKILL)


def stuck(ctx: JobContext, payload: dict[str, Any]) -> str:
    """Sleeps `seconds` without a single checkpoint, as a handler stuck in a C call does."""
    mark(payload, f"stuck.{os.getpid()}")
    time.sleep(float(payload.get("seconds", 30)))
    return "woke up"


#: Time limits the test workers run with: `test.timeboxed` is `block` under a 0.3 s limit.
TEST_TIME_LIMITS = {"test.timeboxed": 0.3, "test.stuck": 0.3}


def build_kinds() -> JobKinds:
    """`demo.checksum` and the test kinds."""
    kinds = register_demo_kinds(JobKinds())
    kinds.register("test.flaky", flaky, queue="celery", max_attempts=3, retry_backoff=FAST_BACKOFF)
    kinds.register("test.broken", broken, max_attempts=3, retry_backoff=FAST_BACKOFF)
    kinds.register("test.block", block, max_attempts=3, retry_backoff=FAST_BACKOFF)
    kinds.register("test.slow", slow, max_attempts=3, retry_backoff=FAST_BACKOFF)
    kinds.register("test.poison", poison, max_attempts=2, retry_backoff=FAST_BACKOFF)
    kinds.register("test.timeboxed", block, max_attempts=3, retry_backoff=FAST_BACKOFF)
    kinds.register("test.stuck", stuck, max_attempts=3, retry_backoff=FAST_BACKOFF)
    return kinds


def fast_worker_options() -> WorkerOptions:
    """Timings that make crash recovery take seconds instead of minutes."""
    return WorkerOptions(
        heartbeat_timeout=2.0,
        requeue_interval=0.25,
        lease_ttl=1.5,
        poll_interval=0.05,
        cancel_check_interval=0.05,
        stop_timeout=10.0,
        time_limit_grace=0.5,
    )


async def _main(url: str, ready: Path | None) -> None:
    async with anyio.create_task_group() as tasks:
        worker = partial(
            run_worker,
            url,
            kinds=build_kinds(),
            options=fast_worker_options(),
            handle_signals=True,
            time_limits=TEST_TIME_LIMITS,
        )
        await tasks.start(worker)
        if ready is not None:
            await anyio.Path(ready).write_text(str(os.getpid()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--ready", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s {os.getpid()} %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    anyio.run(_main, args.url, args.ready)
    return 0


if __name__ == "__main__":
    sys.exit(main())
