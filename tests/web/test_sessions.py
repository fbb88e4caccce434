"""Sessions over HTTP with the durable store: state floods log nobody out, the database is
part of readiness, and a schema behind refuses to serve."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import pytest
from starlette.testclient import TestClient

from ondoki.entrypoints.bootstrap import check_session_store, open_services
from ondoki.errors import ConfigError
from ondoki.support.settings import Settings
from ondoki_adapters.web.app import create_app
from tests.postgres_server import throwaway_database
from tests.redis_server import RedisServer
from tests.web.conftest import API_KEY, Api

VALUE = b'"' + b"x" * (64 * 1024 - 3) + b'"'  # a 64 KiB JSON document


@contextmanager
def serving(settings: Settings, backend: Literal["asyncio", "trio"]) -> Iterator[Api]:
    app = create_app(lambda: open_services(settings, api_key=API_KEY))
    with TestClient(app, backend=backend, raise_server_exceptions=False) as client:
        yield Api(client)


def flood(api: Api, headers: dict[str, str], count: int) -> list[int]:
    statuses = []
    for n in range(count):
        response = api.client.put(
            f"/state/flood-{n}",
            content=VALUE,
            headers={**headers, "Content-Type": "application/json"},
        )
        statuses.append(response.status_code)
    return statuses


FLOOD_SETTINGS = {
    "state_max_bytes": 64 * 1024,
    "max_json_body_bytes": 128 * 1024,
    # No per-user bound to speak of: this shows what the caches do on their own.
    "state_max_keys_per_user": 100_000,
    "state_max_bytes_per_user": 2**40,
}


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
def test_memory_state_flood_evicts_no_session(anyio_backend: Literal["asyncio", "trio"]) -> None:
    settings = Settings(memory_cache_max_bytes=8 * 1024 * 1024, **FLOOD_SETTINGS)  # type: ignore[arg-type]
    with serving(settings, anyio_backend) as api:
        victims = [api.login(f"victim-{n}") for n in range(20)]
        flooder = api.login("flooder")
        assert set(flood(api, flooder, 200)) == {200}  # 12.5 MiB into an 8 MiB cache
        for headers in victims:
            assert api.client.get("/sessions/me", headers=headers).status_code == 200


@pytest.mark.redis
@pytest.mark.postgres
def test_redis_state_flood_logs_nobody_out_with_a_database(database_url: str) -> None:
    server = RedisServer(args=("--maxmemory", "12mb", "--maxmemory-policy", "allkeys-lru"))
    server.start()
    try:
        settings = Settings(redis_url=server.url(0), database_url=database_url, **FLOOD_SETTINGS)  # type: ignore[arg-type]
        with serving(settings, "asyncio") as api:
            victims = [api.login(f"victim-{n}") for n in range(20)]
            flooder = api.login("flooder")
            flood(api, flooder, 400)  # 25 MiB into a 12 MiB allkeys-lru Redis
            with server.client() as client:
                cached = len(client.keys("ondoki:session:*"))
            assert cached < 21, "the flood should have evicted sessions from Redis"
            for headers in victims:
                assert api.client.get("/sessions/me", headers=headers).status_code == 200
    finally:
        server.close()


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
def test_default_bounds_refuse_the_flood_naming_the_limit(
    anyio_backend: Literal["asyncio", "trio"],
) -> None:
    settings = Settings(state_max_bytes=64 * 1024, max_json_body_bytes=128 * 1024)
    with serving(settings, anyio_backend) as api:
        flooder = api.login("flooder")
        statuses = flood(api, flooder, 20)
        assert statuses[:15] == [200] * 15 and statuses[16:] == [413] * 4
        response = api.client.put(
            "/state/one-more",
            content=VALUE,
            headers={**flooder, "Content-Type": "application/json"},
        )
        assert response.status_code == 413
        assert "ONDOKI_STATE_MAX_BYTES_PER_USER" in response.json()["error"]["message"]


@pytest.mark.postgres
@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
def test_database_sessions_on_memory_adapters(
    database_url: str, anyio_backend: Literal["asyncio", "trio"]
) -> None:
    settings = Settings(database_url=database_url)
    with serving(settings, anyio_backend) as api:
        ready = api.client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["parts"]["database"] == {"ok": True}
        headers = api.login("alice", data={"plan": "pro"})
    # A new process (a new memory cache) on the same database: still logged in.
    with serving(settings, anyio_backend) as api:
        me = api.client.get("/sessions/me", headers=headers)
        assert me.status_code == 200 and me.json()["data"] == {"plan": "pro"}
        assert api.client.delete("/sessions/me", headers=headers).status_code == 204
    with serving(settings, anyio_backend) as api:
        assert api.client.get("/sessions/me", headers=headers).status_code == 401


@pytest.mark.postgres
def test_serve_refuses_a_schema_that_is_behind() -> None:
    with throwaway_database() as url:
        app = create_app(lambda: open_services(Settings(database_url=url), api_key=API_KEY))
        with pytest.raises(BaseException) as caught, TestClient(app):
            pass
        found: BaseException | None = caught.value
        while found is not None and not isinstance(found, ConfigError):
            inner = found.exceptions[0] if isinstance(found, BaseExceptionGroup) else None
            found = inner or found.__cause__ or found.__context__
        assert isinstance(found, ConfigError)
        assert "run `ondoki migrate`" in str(found)


@pytest.mark.anyio
async def test_redis_without_a_database_says_sessions_are_ephemeral(
    caplog: pytest.LogCaptureFixture, anyio_backend: str
) -> None:
    with caplog.at_level("WARNING", logger="ondoki"):
        await check_session_store(Settings(redis_url="redis://127.0.0.1:1/0"), None)
        await check_session_store(Settings(), None)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1
    assert "do not survive a Redis restart" in warnings[0]


@pytest.mark.redis
@pytest.mark.postgres
def test_redis_down_session_checks_fall_back_to_the_database(
    fresh_redis: RedisServer, database_url: str
) -> None:
    settings = Settings(
        redis_url=fresh_redis.url(0), database_url=database_url, redis_timeout_seconds=1
    )
    with serving(settings, "asyncio") as api:
        headers = api.login("alice")
        fresh_redis.stop()
        try:
            assert api.client.get("/sessions/me", headers=headers).status_code == 200
            # Accepted (a refused session would close before the upgrade, with 1008): the
            # session check was answered by PostgreSQL. Notifications need Redis, so the
            # socket then closes with 1011, "reconnect".
            with api.client.websocket_connect("/ws", headers=headers) as socket:
                message = socket.receive()
            assert message["type"] == "websocket.close" and message["code"] == 1011
            state = api.client.put("/state/draft", json={"step": 1}, headers=headers)
            assert state.status_code == 503
        finally:
            fresh_redis.start()
        assert api.client.put("/state/draft", json={"step": 1}, headers=headers).status_code == 200
        assert api.client.get("/sessions/me", headers=headers).status_code == 200


@pytest.mark.redis
@pytest.mark.postgres
def test_a_logout_redis_did_not_take_is_finished_by_the_next_not_undone(
    fresh_redis: RedisServer, database_url: str
) -> None:
    settings = Settings(
        redis_url=fresh_redis.url(0), database_url=database_url, redis_timeout_seconds=0.5
    )
    with serving(settings, "asyncio") as api:
        headers = api.login("alice")
        with fresh_redis.frozen():
            # The database row goes; the cached copy cannot: 503, log out again.
            assert api.client.delete("/sessions/me", headers=headers).status_code == 503
            # Before, this answered 401 (the session looked gone) and the client stopped,
            # leaving the cached copy to work again once Redis answered.
            assert api.client.delete("/sessions/me", headers=headers).status_code == 503
        # Redis answers again: the cached copy was still there, and this logout ends it.
        assert api.client.delete("/sessions/me", headers=headers).status_code == 204
        assert api.client.get("/sessions/me", headers=headers).status_code == 401
