"""`JobMetrics`: the `JobObserver` port as Prometheus metrics, and `serve_metrics`, which
serves a registry as Prometheus text on its own port (the worker's `--metrics-port`)."""

from __future__ import annotations

import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

#: Job durations range from milliseconds (demo jobs) to hours (a long video's import).
DURATION_BUCKETS = (
    0.05, 0.25, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0
)  # fmt: skip


class JobMetrics:
    """Counts attempts, their outcomes and how long they and their stages took.

    Metrics (all labelled by `kind`): `ondoki_job_duration_seconds` (histogram, also by
    `outcome`), `ondoki_job_attempts_total`, `ondoki_job_retries_total` (attempts that
    failed and will be retried), `ondoki_job_dead_total` (attempts after which the job is
    dead, time-outs included) and `ondoki_job_stage_duration_seconds` (by `stage`); and
    `ondoki_worker_heartbeat_timestamp_seconds`, when the worker last stored its heartbeat
    (the Compose health check fails a worker whose heartbeat is a minute old).
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.duration = Histogram(
            "ondoki_job_duration_seconds",
            "How long job attempts ran, by kind and outcome",
            ["kind", "outcome"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.attempts = Counter(
            "ondoki_job_attempts", "Job attempts started", ["kind"], registry=registry
        )
        self.retries = Counter(
            "ondoki_job_retries",
            "Job attempts that failed and will be retried",
            ["kind"],
            registry=registry,
        )
        self.dead = Counter(
            "ondoki_job_dead",
            "Jobs that went dead (time-outs included)",
            ["kind"],
            registry=registry,
        )
        self.stages = Histogram(
            "ondoki_job_stage_duration_seconds",
            "How long the stages a job reports took",
            ["kind", "stage"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.heartbeat = Gauge(
            "ondoki_worker_heartbeat_timestamp_seconds",
            "When the worker last stored its heartbeat in the broker (UNIX time)",
            registry=registry,
        )

    def attempt_started(self, kind: str, attempt: int) -> None:
        self.attempts.labels(kind).inc()

    def attempt_ended(self, kind: str, outcome: str, attempt: int, seconds: float) -> None:
        self.duration.labels(kind, outcome).observe(seconds)
        if outcome == "retry":
            self.retries.labels(kind).inc()
        elif outcome in ("dead", "timed_out"):
            self.dead.labels(kind).inc()

    def stage_ended(self, kind: str, stage: str, seconds: float) -> None:
        self.stages.labels(kind, stage).observe(seconds)

    def worker_heartbeat(self, at: float) -> None:
        self.heartbeat.set(at)


def serve_metrics(
    registry: CollectorRegistry, host: str, port: int
) -> tuple[WSGIServer, threading.Thread]:
    """Serve `registry` at `http://host:port/` (any path) from a daemon thread; shut it
    down with `server.shutdown()`. `OSError` when the port cannot be bound."""
    server, thread = start_http_server(port, addr=host, registry=registry)
    return server, thread
