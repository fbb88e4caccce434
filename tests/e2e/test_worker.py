"""`ondoki worker` as a real process: its metrics port, and its one-line refusals."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx2 as httpx
import pytest

from tests.e2e.process import assert_clean_logs, clean_env
from tests.redis_server import RedisServer, free_port
from tests.waits import metric

pytestmark = [pytest.mark.e2e, pytest.mark.redis]


def worker(tmp_path: Path, redis: RedisServer, *args: str) -> subprocess.Popen[str]:
    env = clean_env(
        REDIS_URL=redis.url(0),
        ONDOKI_MEDIA_DIR=str(tmp_path / "media"),
        ONDOKI_WORKER_HEARTBEAT_TIMEOUT_SECONDS="4",
        ONDOKI_WORKER_REQUEUE_INTERVAL_SECONDS="1",
    )
    return subprocess.Popen(
        [sys.executable, "-m", "ondoki", "worker", *args],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def test_metrics_port_serves_heartbeat_and_process_metrics(
    tmp_path: Path, fresh_redis: RedisServer
) -> None:
    port = free_port()
    process = worker(tmp_path, fresh_redis, "--metrics-port", str(port))
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, process.communicate()[0]
            try:
                text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
                # 0 until the worker has stored its first heartbeat (a loaded machine can
                # serve the metrics port before that).
                name = "ondoki_worker_heartbeat_timestamp_seconds"
                if f"\n{name} " in text and metric(text, name) > 0:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "no heartbeat in the metrics within 30 s"
            time.sleep(0.1)
        assert time.time() - 30 < metric(text, "ondoki_worker_heartbeat_timestamp_seconds")
        assert metric(text, "process_resident_memory_bytes") > 0
    finally:
        process.terminate()
        output = process.communicate(timeout=30)[0]
    assert process.returncode == 0, output
    assert_clean_logs(output, "ondoki worker")


def test_metrics_port_in_use_is_one_line(tmp_path: Path, fresh_redis: RedisServer) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = worker(tmp_path, fresh_redis, "--metrics-port", str(port))
        output = process.communicate(timeout=60)[0]
    assert process.returncode == 2
    assert output.strip().splitlines()[-1] == (
        "ondoki: configuration error: ONDOKI_WORKER_METRICS_PORT: cannot serve metrics on "
        f"127.0.0.1:{port}: Address already in use"
    )


def test_metrics_port_out_of_range_is_refused(tmp_path: Path, fresh_redis: RedisServer) -> None:
    process = worker(tmp_path, fresh_redis, "--metrics-port", "70000")
    output = process.communicate(timeout=60)[0]
    assert process.returncode == 2
    assert "--metrics-port: must be a port from 1 to 65535, got '70000'" in output
