"""POST /internal/notifications: one event, a batch, a broadcast; their limits and errors."""

from __future__ import annotations

from typing import Any

import pytest

from ondoki.support.settings import Settings
from tests.redis_server import RedisServer
from tests.web.conftest import Api


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def settings(request: pytest.FixtureRequest) -> Settings:
    """As tests/web/conftest.py's, with small batch limits."""
    redis_url = None
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        server.flushall()
        redis_url = server.url(0)
    return Settings(
        redis_url=redis_url, notification_batch_max_events=5, notification_batch_max_bytes=2048
    )


def post(api: Api, body: Any) -> tuple[int, Any]:
    response = api.client.post("/internal/notifications", json=body, headers=api.internal)
    return response.status_code, response.json()


def next_offset(api: Api, user_id: str) -> int:
    """The offset a new event for `user_id` gets (it publishes one)."""
    status, body = post(api, {"user_id": user_id, "type": "probe"})
    assert status == 202, body
    offset: int = body["offset"]
    return offset


def test_one_event_answers_its_position(api: Api) -> None:
    status, body = post(api, {"user_id": "alice", "type": "hello", "data": {"a": 1}})
    assert status == 202
    assert set(body) == {"epoch", "offset"} and body["offset"] == 1


def test_a_batch_answers_each_position_in_order(api: Api) -> None:
    batch = [
        {"user_id": "alice", "type": "t", "data": 1},
        {"user_id": "bob", "type": "t"},
        {"user_id": "alice", "type": "t", "id": "once"},
        {"user_id": "alice", "type": "t", "id": "once"},
    ]
    status, body = post(api, batch)
    assert status == 202, body
    assert [p["offset"] for p in body["positions"]] == [1, 1, 2, 2]
    assert body["positions"][0]["epoch"] == body["positions"][2]["epoch"]
    assert next_offset(api, "alice") == 3


def test_a_broadcast_answers_each_users_position(api: Api) -> None:
    post(api, {"user_id": "b", "type": "earlier"})
    body = {"user_ids": ["a", "b", "c"], "type": "announce", "data": "hi", "id": "ann-1"}
    status, first = post(api, body)
    assert status == 202, first
    assert [p["offset"] for p in first["positions"]] == [1, 2, 1]
    assert post(api, body) == (202, first)  # idempotent per user
    assert next_offset(api, "c") == 2


@pytest.mark.parametrize(
    ("item", "status", "named"),
    [
        ({"user_id": "bad user", "type": "t"}, 422, "events[2]: user_id"),
        ({"user_id": "carol", "type": "no spaces"}, 422, "events[2]: type"),
        ({"user_id": "carol"}, 422, "$[2]"),
        ({"user_id": "carol", "type": "t", "extra": 1}, 422, "$[2]"),
        ({"user_id": 7, "type": "t"}, 422, "$[2].user_id"),
        ({"user_id": "carol", "type": "t", "data": "x" * 70_000}, 413, "request body"),
    ],
)
def test_a_bad_item_refuses_the_whole_batch_naming_its_index(
    api: Api, item: dict[str, Any], status: int, named: str
) -> None:
    batch = [{"user_id": "alice", "type": "t"}, {"user_id": "bob", "type": "t"}, item]
    got, body = post(api, batch)
    assert got == status, body
    assert named in body["error"]["message"]
    assert next_offset(api, "alice") == 1 and next_offset(api, "bob") == 1


def test_batch_limits_are_named(api: Api) -> None:
    status, body = post(api, [{"user_id": "alice", "type": "t"}] * 6)
    assert status == 413
    assert body["error"] == {
        "code": "too_large",
        "message": "events has 6 items; the limit is 5 (ONDOKI_NOTIFICATION_BATCH_MAX_EVENTS)",
    }
    status, body = post(api, {"user_ids": [f"u{n}" for n in range(6)], "type": "t"})
    assert status == 413
    assert body["error"]["message"].startswith("user_ids has 6 items; the limit is 5 (ONDOKI_")
    status, body = post(api, [{"user_id": "alice", "type": "t", "data": "x" * 1000}] * 3)
    assert status == 413
    assert "ONDOKI_NOTIFICATION_BATCH_MAX_BYTES" in body["error"]["message"]
    assert next_offset(api, "alice") == 1


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"type": "t"}, "either user_id"),
        ({"user_id": "a", "user_ids": ["b"], "type": "t"}, "either user_id"),
        ({"user_ids": ["a", "a"], "type": "t"}, "user_ids[1]: 'a' is listed twice"),
        ({"user_ids": ["a", ""], "type": "t"}, "user_ids[1]: user_id"),
    ],
)
def test_a_bad_broadcast_is_refused(api: Api, body: dict[str, Any], named: str) -> None:
    status, answer = post(api, body)
    assert status == 422
    assert named in answer["error"]["message"]
    assert next_offset(api, "a") == 1


def test_an_empty_batch_publishes_nothing(api: Api) -> None:
    assert post(api, []) == (202, {"positions": []})


def test_publishing_needs_the_api_key(api: Api) -> None:
    response = api.client.post("/internal/notifications", json=[{"user_id": "a", "type": "t"}])
    assert response.status_code == 401
