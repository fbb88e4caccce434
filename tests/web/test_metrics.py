"""/metrics in Prometheus text, request IDs on every response."""

from __future__ import annotations

import re

from tests.waits import metric
from tests.web.conftest import Api


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
