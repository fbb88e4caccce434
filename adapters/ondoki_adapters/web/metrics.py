"""`GET /metrics`: Prometheus text, from this process's counters and the job queue's state."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator

import anyio
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response

from ondoki.entrypoints.services import Services
from ondoki.errors import OndokiError
from ondoki.models import JobStats
from ondoki_adapters.web.auth import services

log = logging.getLogger("ondoki.metrics")
STATS_TIMEOUT = 2.0


class ServiceCollector(Collector):
    """Reads the services' own counters at scrape time (no second bookkeeping)."""

    def __init__(self) -> None:
        self.services: Services | None = None
        #: The latest job figures read from the queue, and when (`time.monotonic`).
        # The job figures and when they were read, replaced together: `collect` runs in a
        # worker thread while a scrape on the event loop may refresh them.
        self.jobs: tuple[JobStats, float] | None = None

    def collect(self) -> Iterator[Metric]:
        found = self.services
        if found is None:
            return
        hub = found.notifications.stats
        yield _gauge("ondoki_websockets_open", "Open WebSocket connections", hub.connections)
        yield _gauge(
            "ondoki_websockets_direct",
            "Open WebSockets written straight to their transport (the rest: ASGI sends)",
            hub.direct,
        )
        yield _counter(
            "ondoki_notifications_published",
            "Notifications published",
            found.notifications.publisher.published,
        )
        yield _counter(
            "ondoki_notifications_delivered",
            "Frames handed to clients (notifications, resyncs, pings)",
            hub.delivered,
        )
        yield _counter(
            "ondoki_ws_slow_client_closes", "Clients closed with 4008 (too slow)", hub.slow_closes
        )
        yield _counter("ondoki_ws_resyncs", "Resync frames sent (history gaps)", hub.resyncs)
        yield _gauge(
            "ondoki_uploads_in_progress",
            "Uploads being received by this instance (see ONDOKI_MAX_CONCURRENT_UPLOADS)",
            found.imports.gate.in_progress,
        )
        pubsub = found.pubsub.stats
        yield _counter(
            "ondoki_pubsub_reconnects",
            "Times the pub/sub connection was lost and made again",
            pubsub.reconnects,
        )
        yield _counter(
            "ondoki_pubsub_repaired_messages",
            "Messages missed live (a reconnect, a full buffer) and delivered from history",
            pubsub.repaired,
        )
        yield _counter(
            "ondoki_pubsub_unrepaired_gaps",
            "Gaps history could not cover in such a repair",
            pubsub.unrepaired_gaps,
        )
        snapshot = self.jobs
        if snapshot is not None:
            jobs, read_at = snapshot
            yield _gauge(
                "ondoki_job_stats_age_seconds",
                "Age of the job figures below (read from the queue at most every "
                "ONDOKI_METRICS_REFRESH_SECONDS, never by more than one scrape at a time)",
                time.monotonic() - read_at,
            )
            states = GaugeMetricFamily("ondoki_jobs", "Jobs per state", labels=["state"])
            for state, count in sorted(jobs.states.items()):
                states.add_metric([state], count)
            yield states
            depth = GaugeMetricFamily("ondoki_queue_depth", "Jobs waiting", labels=["queue"])
            delayed = GaugeMetricFamily(
                "ondoki_queue_delayed", "Jobs waiting to retry after a backoff", labels=["queue"]
            )
            age = GaugeMetricFamily(
                "ondoki_queue_oldest_age_seconds", "Age of the oldest waiting job", labels=["queue"]
            )
            for queue, stats in sorted(jobs.queues.items()):
                depth.add_metric([queue], stats.waiting)
                delayed.add_metric([queue], stats.delayed)
                age.add_metric([queue], stats.oldest_age or 0.0)
            yield from (depth, delayed, age)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


class MetricsEndpoint:
    """The route handler, holding the app's registry.

    Job figures come from the queue's backend, which can hang: they are a snapshot, read
    again by one scrape when it is older than ONDOKI_METRICS_REFRESH_SECONDS, while every
    other scrape answers at once with the snapshot it has (no scrape waits for another).
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.collector = ServiceCollector()
        registry.register(self.collector)
        self._refreshing = False
        self._tried_at = -math.inf

    async def handle(self, request: Request) -> Response:
        found = services(request)
        self.collector.services = found
        due = time.monotonic() - self._tried_at >= found.settings.metrics_refresh_seconds
        if due and not self._refreshing:
            await self._refresh(found)
        body = await anyio.to_thread.run_sync(generate_latest, self.registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    async def _refresh(self, found: Services) -> None:
        self._refreshing = True
        try:
            with anyio.fail_after(STATS_TIMEOUT):
                stats = await found.jobs.stats()
            self.collector.jobs = (stats, time.monotonic())
        except (OndokiError, TimeoutError) as exc:
            # The rest of the metrics still say something useful while the broker is down;
            # the job figures go, rather than stand for a state that may have changed.
            log.warning("job metrics unavailable: %s", exc)
            self.collector.jobs = None
        finally:
            self._tried_at = time.monotonic()
            self._refreshing = False
