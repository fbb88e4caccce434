"""The HTTP API (docs/api.md) in process: happy paths, and every kind of bad input
answered with a 4xx in the documented error shape, never a 500, nothing stored lost."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx2 as httpx
import pytest

from tests.web.conftest import API_KEY, Api


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message"}
    assert body["error"]["message"]
    error: dict[str, Any] = body["error"]
    return error


def test_healthz(api: Api) -> None:
    assert api.client.get("/healthz").json() == {"status": "ok"}


def test_readyz_reports_each_part(api: Api) -> None:
    response = api.client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["parts"]["cache"] == {"ok": True}


def test_session_lifecycle(api: Api) -> None:
    created = api.client.post(
        "/internal/sessions",
        json={"user_id": "alice", "data": {"plan": "pro"}, "ttl_seconds": 600},
        headers=api.internal,
    )
    assert created.status_code == 201
    token = created.json()["token"]
    assert len(token) >= 40
    expires = datetime.fromisoformat(created.json()["expires_at"])
    assert 590 < (expires - datetime.now(UTC)).total_seconds() <= 600

    auth = {"Authorization": f"Bearer {token}"}
    me = api.client.get("/sessions/me", headers=auth)
    assert me.status_code == 200
    assert me.json()["user_id"] == "alice"
    assert me.json()["data"] == {"plan": "pro"}

    assert api.client.delete("/sessions/me", headers=auth).status_code == 204
    assert error_of(api.client.get("/sessions/me", headers=auth), 401)["code"] == "unauthorized"


def test_state_is_scoped_per_user(api: Api) -> None:
    alice, bob = api.login("alice"), api.login("bob")
    put = api.client.put("/state/draft", json={"step": 3}, headers=alice)
    assert put.status_code == 200
    assert put.json()["key"] == "draft"
    assert api.client.get("/state/draft", headers=alice).json() == {"step": 3}
    assert error_of(api.client.get("/state/draft", headers=bob), 404)["code"] == "not_found"
    assert api.client.delete("/state/draft", headers=alice).status_code == 204
    assert api.client.get("/state/draft", headers=alice).status_code == 404
    assert api.client.delete("/state/draft", headers=alice).status_code == 404


def test_state_ttl_parameter(api: Api) -> None:
    alice = api.login("alice")
    put = api.client.put("/state/k?ttl_seconds=30", json=[1, 2, 3], headers=alice)
    expires = datetime.fromisoformat(put.json()["expires_at"])
    assert 25 < (expires - datetime.now(UTC)).total_seconds() <= 30


# -- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "headers", "status", "code", "says"),
    [
        (b"{not json", {"content-type": "application/json"}, 400, "malformed_body", "JSON"),
        (b"", {"content-type": "application/json"}, 400, "malformed_body", "empty"),
        (b"[1, 2]", {}, 422, "invalid_input", "object"),
        (b'{"user_id": 5}', {}, 422, "invalid_input", "user_id"),
        (b'{"data": {}}', {}, 422, "invalid_input", "user_id"),
        (b'{"user_id": "a b"}', {}, 422, "invalid_input", "user_id"),
        (b'{"user_id": ""}', {}, 422, "invalid_input", "user_id"),
        (b'{"user_id": "u", "ttl_seconds": -1}', {}, 422, "invalid_input", "ttl_seconds"),
        (b'{"user_id": "u", "ttl_seconds": 1e12}', {}, 422, "invalid_input", "ttl_seconds"),
        # PostgreSQL's jsonb refuses U+0000: a 503 blaming the database before.
        (b'{"user_id": "u", "data": {"a": "x\\u0000"}}', {}, 422, "invalid_input", "NUL"),
        (b'{"user_id": "u", "ttl_seconds": "10"}', {}, 422, "invalid_input", "ttl_seconds"),
        (b'{"user_id": "u", "data": [1]}', {}, 422, "invalid_input", "data"),
        (b'{"user_id": "u", "extra": 1}', {}, 422, "invalid_input", "extra"),
        (
            b'{"user_id": "u"}',
            {"content-type": "text/plain"},
            415,
            "unsupported_media_type",
            "json",
        ),
        (b'{"user_id": "u", "data": {"x": "' + b"y" * 2000 + b'"}}', {}, 413, "too_large", "limit"),
        (b'{"user_id": "' + b"u" * 5000 + b'"}', {}, 413, "too_large", "limit"),
    ],
)
def test_bad_session_requests(
    api: Api, body: bytes, headers: dict[str, str], status: int, code: str, says: str
) -> None:
    response = api.client.post(
        "/internal/sessions", content=body, headers={**api.internal, **headers}
    )
    error = error_of(response, status)
    assert error["code"] == code
    assert says.lower() in error["message"].lower()


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "Bearer wrong-key", f"Token {API_KEY}"],
)
def test_internal_endpoints_need_the_api_key(api: Api, authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    response = api.client.post("/internal/sessions", json={"user_id": "u"}, headers=headers)
    assert error_of(response, 401)["code"] == "unauthorized"
    assert response.headers["www-authenticate"] == "Bearer"


def test_a_session_token_is_not_an_api_key(api: Api) -> None:
    alice = api.login("alice")
    response = api.client.post("/internal/sessions", json={"user_id": "mallory"}, headers=alice)
    error_of(response, 401)


@pytest.mark.parametrize("path", ["/sessions/me", "/state/draft"])
@pytest.mark.parametrize("authorization", [None, "Bearer unknown-token", "Bearer " + "x" * 5000])
def test_session_endpoints_refuse_unknown_sessions(
    api: Api, path: str, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    assert error_of(api.client.get(path, headers=headers), 401)["code"] == "unauthorized"


def test_the_api_key_is_not_a_session(api: Api) -> None:
    error_of(api.client.get("/sessions/me", headers=api.internal), 401)


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "says"),
    [
        ("/state/draft", b"{oops", {}, 400, "JSON"),
        ("/state/draft", b"", {}, 400, "JSON"),
        ("/state/draft", b'"' + b"x" * 2000 + b'"', {}, 413, "limit"),
        ("/state/draft", b"{}", {"content-type": "application/xml"}, 415, "json"),
        ("/state/has%20space", b"{}", {}, 422, "state key"),
        ("/state/" + "k" * 129, b"{}", {}, 422, "state key"),
        ("/state/draft?ttl_seconds=abc", b"{}", {}, 422, "ttl_seconds"),
        ("/state/draft?ttl_seconds=0", b"{}", {}, 422, "ttl_seconds"),
        ("/state/draft?ttl_seconds=nan", b"{}", {}, 422, "ttl_seconds"),
        ("/state/draft?ttl_seconds=1e99", b"{}", {}, 422, "ttl_seconds"),
        ("/state/draft?ttl_seconds=inf", b"{}", {}, 422, "ttl_seconds"),
    ],
)
def test_bad_state_writes_keep_what_was_stored(
    api: Api, path: str, body: bytes, headers: dict[str, str], status: int, says: str
) -> None:
    alice = api.login("alice")
    assert api.client.put("/state/draft", json={"kept": True}, headers=alice).status_code == 200
    response = api.client.put(path, content=body, headers={**alice, **headers})
    assert says.lower() in error_of(response, status)["message"].lower()
    assert api.client.get("/state/draft", headers=alice).json() == {"kept": True}


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/nowhere", 404, "not_found"),
        ("POST", "/healthz", 405, "method_not_allowed"),
        ("PATCH", "/state/draft", 405, "method_not_allowed"),
        ("GET", "/internal/sessions", 405, "method_not_allowed"),
    ],
)
def test_unknown_routes_and_methods(
    api: Api, method: str, path: str, status: int, code: str
) -> None:
    assert error_of(api.client.request(method, path), status)["code"] == code
