"""The worker's Prometheus metrics, served on their own port while jobs run on real Redis;
and the job log events' fields."""

from __future__ import annotations

import functools
import logging
import socket
import time
import urllib.request
from pathlib import Path

import anyio
import pytest

from ondoki.entrypoints.bootstrap import worker_metrics
from ondoki.errors import ConfigError
from ondoki_adapters.redis.jobs import DramatiqJobQueue
from ondoki_adapters.redis.worker import run_worker
from tests.integration.worker_main import TEST_TIME_LIMITS, build_kinds, fast_worker_options
from tests.redis_server import RedisServer, free_port
from tests.waits import finished, metric

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # redis-py


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text: str = response.read().decode()
        return text


async def test_worker_metrics_count_attempts_outcomes_and_stages(
    redis_server: RedisServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    redis_server.flushall()
    port = free_port()
    kinds = build_kinds()
    queue = DramatiqJobQueue(redis_server.url(1), kinds=kinds)
    caplog.set_level(logging.INFO, logger="ondoki.domain.jobs")
    with worker_metrics("127.0.0.1", port) as observer:
        worker = functools.partial(
            run_worker,
            redis_server.url(1),
            kinds=kinds,
            options=fast_worker_options(),
            time_limits=TEST_TIME_LIMITS,
            observer=observer,
        )
        async with anyio.create_task_group() as tasks:
            await tasks.start(worker)
            done = await queue.enqueue("demo.checksum", {"size": 1 << 16, "chunk": 1 << 14})
            flaky = await queue.enqueue("test.flaky", {"dir": str(tmp_path), "succeed_on": 2})
            boxed = await queue.enqueue("test.timeboxed", {"dir": str(tmp_path), "limit": 30})
            for job_id in (done, flaky, boxed):
                await finished(queue, job_id)
            text = await anyio.to_thread.run_sync(scrape, port)
            tasks.cancel_scope.cancel()
    await queue.aclose()

    def count(name: str, labels: str) -> float:
        return metric(text, name, labels)

    duration = "ondoki_job_duration_seconds_count"
    assert count(duration, 'kind="demo.checksum",outcome="succeeded"') == 1
    assert count(duration, 'kind="test.flaky",outcome="retry"') == 1
    assert count(duration, 'kind="test.flaky",outcome="succeeded"') == 1
    assert count(duration, 'kind="test.timeboxed",outcome="timed_out"') == 1
    assert count("ondoki_job_attempts_total", 'kind="test.flaky"') == 2
    assert count("ondoki_job_retries_total", 'kind="test.flaky"') == 1
    assert count("ondoki_job_dead_total", 'kind="test.timeboxed"') == 1
    stages = "ondoki_job_stage_duration_seconds_count"
    for stage in ("prepare", "hash", "finalize"):
        assert count(stages, f'kind="demo.checksum",stage="{stage}"') == 1
    heartbeat = count("ondoki_worker_heartbeat_timestamp_seconds", "")
    assert time.time() - 60 < heartbeat <= time.time()
    assert count("process_cpu_seconds_total", "") > 0
    assert count("process_resident_memory_bytes", "") > 0

    # The job's log events carry its identity, stage and durations as fields.
    events = [vars(r) for r in caplog.records if vars(r).get("job_id") == done]
    assert {event["kind"] for event in events} == {"demo.checksum"}
    assert {event["attempt"] for event in events} == {1}
    ended = [event for event in events if "duration_ms" in event]
    assert [event["stage"] for event in ended if "stage" in event] == [
        "prepare",
        "hash",
        "finalize",
    ]
    assert [event["outcome"] for event in ended if "outcome" in event] == ["succeeded"]


def test_a_metrics_port_in_use_is_one_config_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        refused = pytest.raises(ConfigError, match=rf"METRICS_PORT.*127\.0\.0\.1:{port}")
        with refused, worker_metrics("127.0.0.1", port):
            pass
