"""Guessing the API key: each address gets a few wrong tries per window, then 429."""

from __future__ import annotations

from tests.waits import metric
from tests.web.conftest import Api
from tests.web.test_api import error_of


def test_repeated_wrong_api_keys_are_throttled_per_address(api: Api) -> None:
    limit = 10  # the default ONDOKI_API_KEY_FAILURE_LIMIT
    wrong = {"Authorization": "Bearer not-the-key-0123456789"}
    body = {"user_id": "alice"}
    for _ in range(limit):
        refused = api.client.post("/internal/sessions", json=body, headers=wrong)
        assert error_of(refused, 401)["code"] == "unauthorized"
    throttled = api.client.post("/internal/sessions", json=body, headers=wrong)
    assert error_of(throttled, 429)["code"] == "too_many_requests"
    assert 1 <= int(throttled.headers["retry-after"]) <= 60
    # The right key does not help the same address while it is throttled: guessing stops.
    right = api.client.post("/internal/sessions", json=body, headers=api.internal)
    assert right.status_code == 429
    # Session-token requests are not API-key requests: they go on.
    assert api.client.get("/healthz").status_code == 200
    text = api.client.get("/metrics").text
    assert metric(text, "ondoki_api_key_failures_total", 'outcome="refused"') == limit
    assert metric(text, "ondoki_api_key_failures_total", 'outcome="throttled"') == 2


def test_a_few_mistakes_do_not_lock_anyone_out(api: Api) -> None:
    wrong = {"Authorization": "Bearer typo"}
    for _ in range(3):
        assert api.client.get("/internal/jobs/dead", headers=wrong).status_code == 401
    assert api.client.get("/internal/jobs/dead", headers=api.internal).status_code == 200
