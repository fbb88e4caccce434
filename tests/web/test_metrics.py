"""/metrics in Prometheus text, request IDs on every response."""

from __future__ import annotations

import re
from typing import Literal

from starlette.testclient import TestClient

from ondoki.entrypoints.bootstrap import open_services
from ondoki.models import PubSubStats
from ondoki.support.settings import Settings
from ondoki_adapters.memory.pubsub import MemoryPubSub
from ondoki_adapters.web.app import create_app
from tests.waits import metric
from tests.web.conftest import API_KEY, Api


def test_metrics_count_requests_notifications_and_jobs(api: Api) -> None:
    for _ in range(3):
        api.client.get("/healthz")
    api.client.get("/state/nope")  # a 401
    body = {"user_id": "alice", "type": "hello"}
    assert (
        api.client.post("/internal/notifications", json=body, headers=api.internal).status_code
        == 202
    )
    text = api.client.get("/metrics").text
    assert (
        metric(text, "ondoki_http_requests_total", 'method="GET",route="/healthz",status="200"')
        == 3
    )
    assert (
        metric(text, "ondoki_http_requests_total", 'method="GET",route="/state/{key}",status="401"')
        == 1
    )
    assert metric(text, "ondoki_notifications_published_total") == 1
    assert metric(text, "ondoki_websockets_open") == 0
    assert metric(text, "ondoki_uploads_in_progress") == 0
    assert metric(text, "ondoki_queue_depth", 'queue="media"') == 0
    assert metric(text, "ondoki_jobs", 'state="dead"') == 0
    # The process's own: the API's CPU and memory.
    assert metric(text, "process_cpu_seconds_total") > 0
    assert metric(text, "process_resident_memory_bytes") > 0
    for name in ("ondoki_pubsub_reconnects_total", "ondoki_ws_slow_client_closes_total",
                 "ondoki_queue_oldest_age_seconds", "ondoki_http_request_duration_seconds_bucket"):  # fmt: skip
        assert name in text


def test_request_ids_are_echoed_or_made(api: Api) -> None:
    given = api.client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert given.headers["x-request-id"] == "abc-123"
    made = api.client.get("/healthz", headers={"X-Request-ID": "bad id with spaces"})
    assert re.fullmatch(r"[0-9a-f]{16}", made.headers["x-request-id"])
    error = api.client.get("/nowhere")
    assert error.headers["x-request-id"]


def test_made_up_methods_do_not_grow_metrics(api: Api) -> None:
    for n in range(20):
        api.client.request(f"ZZ{n}", "/healthz")
    text = api.client.get("/metrics").text
    assert "ZZ" not in text
    assert (
        metric(text, "ondoki_http_requests_total", 'method="other",route="/healthz",status="405"')
        == 20
    )


class _CountingPubSub(MemoryPubSub):
    """A PubSub whose port-declared counters say something (the memory one never
    reconnects)."""

    @property
    def stats(self) -> PubSubStats:
        return PubSubStats(reconnects=3, repaired=5, unrepaired_gaps=1)


def test_pubsub_metrics_come_from_the_port_stats(
    anyio_backend: Literal["asyncio", "trio"],
) -> None:
    app = create_app(lambda: open_services(Settings(), api_key=API_KEY, pubsub=_CountingPubSub()))
    with TestClient(app, backend=anyio_backend) as client:
        text = client.get("/metrics").text
    assert metric(text, "ondoki_pubsub_reconnects_total") == 3
    assert metric(text, "ondoki_pubsub_repaired_messages_total") == 5
    assert metric(text, "ondoki_pubsub_unrepaired_gaps_total") == 1
