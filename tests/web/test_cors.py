"""CORS: nothing allowed by default; listed origins get preflights answered and can read
responses (errors included); others are refused in the error shape."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import NoReturn

import pytest
from starlette.testclient import TestClient

from ondoki.entrypoints.bootstrap import open_services
from ondoki.entrypoints.services import Services
from ondoki.support.logs import request_id
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


@asynccontextmanager
async def state_that_fails() -> AsyncIterator[Services]:
    """The real services, with temporary state reads raising what no handler expects."""
    async with open_services(Settings(), api_key=API_KEY) as services:

        async def fail(*args: object, **kwargs: object) -> NoReturn:
            raise RuntimeError("a bug in a route")

        services.state.get = fail  # type: ignore[method-assign]
        yield services


def test_an_unexpected_error_is_a_500_a_browser_can_read(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Tried: a route raising RuntimeError. The 500 goes through the middleware like any
    answer (request id, CORS headers), in the error shape, and the traceback is logged once
    with the request's id; nothing stored is touched."""
    app = create_app(state_that_fails, cors_origins=(APP,))
    with TestClient(app, raise_server_exceptions=False) as test_client:
        created = test_client.post(
            "/internal/sessions",
            json={"user_id": "u"},
            headers={"Authorization": f"Bearer {API_KEY}"},
        )
        token = created.json()["token"]
        auth = {"Authorization": f"Bearer {token}", "Origin": APP}
        written = test_client.put("/state/draft", json={"v": 1}, headers=auth)
        assert written.status_code == 200
        ids: list[str | None] = []

        def note_id(record: logging.LogRecord) -> bool:
            ids.append(request_id.get())  # as the log formatter reads it, at emit time
            return True

        web_log = logging.getLogger("ondoki.web")
        web_log.addFilter(note_id)
        try:
            with caplog.at_level(logging.ERROR, logger="ondoki.web"):
                response = test_client.get(
                    "/state/draft", headers={**auth, "X-Request-Id": "req-500-test"}
                )
        finally:
            web_log.removeFilter(note_id)
        assert response.status_code == 500
        assert response.json()["error"]["code"] == "internal"
        assert "traceback" not in response.text.lower()
        assert response.headers["x-request-id"] == "req-500-test"
        assert response.headers["access-control-allow-origin"] == APP
        logged = [
            r for r in caplog.records if r.exc_info and "a bug in a route" in str(r.exc_info[1])
        ]
        assert len(logged) == 1
        assert "GET /state/draft" in logged[0].getMessage()
        assert ids == ["req-500-test"]
        # The service goes on answering, and the session is still there.
        assert test_client.get("/sessions/me", headers=auth).status_code == 200
