"""CORS: nothing allowed by default; listed origins get preflights answered and can read
responses (errors included); others are refused in the error shape."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from ondoki.entrypoints.bootstrap import open_services
from ondoki.support.settings import Settings
from ondoki_adapters.web.app import create_app
from tests.web.conftest import API_KEY

APP = "https://app.example.com"
PREFLIGHT = {
    "Origin": APP,
    "Access-Control-Request-Method": "PUT",
    "Access-Control-Request-Headers": "authorization, content-type",
}


def client(*origins: str) -> Iterator[TestClient]:
    app = create_app(lambda: open_services(Settings(), api_key=API_KEY), cors_origins=origins)
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture
def listed() -> Iterator[TestClient]:
    yield from client(APP)


def test_nothing_is_allowed_by_default() -> None:
    for test_client in client():
        preflight = test_client.options("/state/draft", headers=PREFLIGHT)
        assert preflight.status_code == 405
        assert "access-control-allow-origin" not in preflight.headers
        plain = test_client.get("/healthz", headers={"Origin": APP})
        assert "access-control-allow-origin" not in plain.headers


def test_preflight_of_a_listed_origin_is_answered(listed: TestClient) -> None:
    response = listed.options("/state/draft", headers=PREFLIGHT)
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == APP
    assert "PUT" in response.headers["access-control-allow-methods"]
    allowed = response.headers["access-control-allow-headers"].lower()
    assert "authorization" in allowed and "content-type" in allowed
    assert int(response.headers["access-control-max-age"]) > 0


def test_responses_and_errors_carry_the_headers(listed: TestClient) -> None:
    ok = listed.get("/healthz", headers={"Origin": APP})
    assert ok.headers["access-control-allow-origin"] == APP
    assert "x-request-id" in ok.headers["access-control-expose-headers"].lower()
    refused = listed.get("/sessions/me", headers={"Origin": APP})
    assert refused.status_code == 401
    assert refused.headers["access-control-allow-origin"] == APP


def test_other_origins_are_refused_in_the_error_shape(listed: TestClient) -> None:
    response = listed.options("/state/draft", headers={**PREFLIGHT, "Origin": "https://evil.test"})
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "cors_refused"
    assert "origin" in response.json()["error"]["message"].lower()
    assert "access-control-allow-origin" not in response.headers
    plain = listed.get("/healthz", headers={"Origin": "https://evil.test"})
    assert "access-control-allow-origin" not in plain.headers


def test_a_header_outside_the_list_fails_the_preflight(listed: TestClient) -> None:
    headers = {**PREFLIGHT, "Access-Control-Request-Headers": "x-custom"}
    response = listed.options("/state/draft", headers=headers)
    assert response.status_code == 403
    assert "header" in response.json()["error"]["message"].lower()


def test_any_origin_in_development() -> None:
    for test_client in client("*"):
        response = test_client.options(
            "/state/draft", headers={**PREFLIGHT, "Origin": "http://localhost:5173"}
        )
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] in ("*", "http://localhost:5173")
