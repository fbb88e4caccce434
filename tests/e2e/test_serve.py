"""`ondoki serve` end to end: real processes, real HTTP, real Redis."""

from __future__ import annotations

import re

import httpx2 as httpx
import pytest

from tests.e2e.conftest import Start
from tests.e2e.process import remember_secret
from tests.redis_server import RedisServer

pytestmark = pytest.mark.e2e

API_KEY = "e2e-api-key-0123456789abcdef"


def login(base: str, api_key: str, user_id: str) -> dict[str, str]:
    response = httpx.post(
        f"{base}/internal/sessions",
        json={"user_id": user_id},
        headers={"Authorization": f"Bearer {api_key}"},
    )
    assert response.status_code == 201, response.text
    return {"Authorization": f"Bearer {remember_secret(response.json()['token'])}"}


@pytest.mark.parametrize("worker_class", ["asyncio", "uvloop", "trio"])
def test_serves_with_no_configuration(start: Start, worker_class: str) -> None:
    server = start("--worker-class", worker_class).wait_ready()
    # Development mode generates an API key and prints it for the operator.
    match = re.search(r"development API key .*: (\S+)", server.output())
    assert match, server.output()
    alice = login(server.url, match.group(1), "alice")
    assert httpx.put(f"{server.url}/state/x", json={"n": 1}, headers=alice).status_code == 200
    assert httpx.get(f"{server.url}/state/x", headers=alice).json() == {"n": 1}
    assert httpx.get(f"{server.url}/readyz").json()["status"] == "ready"
    assert "in-memory adapters" in server.output()
    assert server.stop() == 0
    assert "shutting down" in server.output()


@pytest.mark.redis
def test_two_instances_share_sessions_through_redis(
    start: Start, redis_server_password: RedisServer
) -> None:
    url = redis_server_password.url(0)
    a = start(REDIS_URL=url, ONDOKI_API_KEY=API_KEY)
    b = start(REDIS_URL=url, ONDOKI_API_KEY=API_KEY)
    a.wait_ready()
    b.wait_ready()
    alice = login(a.url, API_KEY, "alice")
    assert httpx.put(f"{a.url}/state/draft", json=[1], headers=alice).status_code == 200
    assert httpx.get(f"{b.url}/state/draft", headers=alice).json() == [1]
    assert httpx.delete(f"{b.url}/sessions/me", headers=alice).status_code == 204
    assert httpx.get(f"{a.url}/sessions/me", headers=alice).status_code == 401

    with redis_server_password.client() as redis:
        keys = redis.keys("ondoki:*")
        assert keys, "nothing was stored in Redis DB 0"
        assert all(redis.pttl(key) > 0 for key in keys), "a key without a TTL"
    for server in (a, b):
        assert server.stop() == 0
        assert redis_server_password.password
        assert redis_server_password.password not in server.output()
        assert "using Redis at redis://:***@" in server.output()


@pytest.mark.redis
def test_readyz_follows_redis(start: Start, fresh_redis: RedisServer) -> None:
    server = start(REDIS_URL=fresh_redis.url(0), ONDOKI_API_KEY=API_KEY).wait_ready()
    assert httpx.get(f"{server.url}/readyz").status_code == 200
    fresh_redis.stop()
    down = httpx.get(f"{server.url}/readyz", timeout=10)
    assert down.status_code == 503
    assert down.json()["parts"]["cache"]["ok"] is False
    # A request that needs the cache gets a 503 in the error shape, not a 500.
    response = httpx.get(
        f"{server.url}/sessions/me", headers={"Authorization": "Bearer x"}, timeout=10
    )
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "cache_unavailable"
    fresh_redis.start()
    assert httpx.get(f"{server.url}/readyz", timeout=10).status_code == 200


@pytest.mark.parametrize(
    ("args", "env", "names"),
    [
        ((), {"ONDOKI_PORT": "eighty"}, "ONDOKI_PORT"),
        (("--port", "99999"), {}, "--port"),
        ((), {"REDIS_URL": "http://nope"}, "REDIS_URL"),
        ((), {"REDIS_URL": "redis://:s3cr3tPW/x9@127.0.0.1:1/0"}, "REDIS_URL"),
        ((), {"ONDOKI_ENV": "production"}, "ONDOKI_API_KEY"),
        ((), {"REDIS_URL": "redis://127.0.0.1:1/0?foo=1"}, "REDIS_URL"),
        ((), {"ONDOKI_MEDIA_DIR": "/proc/no-such-dir"}, "ONDOKI_MEDIA_DIR"),
        ((), {"REDIS_URL": "redis://127.0.0.1:1/0?db=x"}, "REDIS_URL"),
        (
            (),
            {
                "ONDOKI_ENV": "production",
                "ONDOKI_API_KEY": "a" * 16,
                "REDIS_URL": "redis://:pw-x9Q@h/0",
            },
            "secrets.token_urlsafe",
        ),
    ],
)
def test_bad_configuration_stops_start_up_with_one_line(
    start: Start, args: tuple[str, ...], env: dict[str, str], names: str
) -> None:
    server = start(*args, **env)
    assert server.exit_code() == 2
    lines = server.output().strip().splitlines()
    assert len(lines) == 1, lines
    assert names in lines[0]
    assert "Traceback" not in server.output()


@pytest.mark.redis
def test_start_up_warns_when_queued_jobs_can_be_evicted(
    start: Start, fresh_redis: RedisServer
) -> None:
    with fresh_redis.client() as admin:
        admin.config_set("maxmemory-policy", "allkeys-lru")
    server = start(REDIS_URL=fresh_redis.url(0), ONDOKI_API_KEY=API_KEY).wait_ready()
    assert "JOBS MAY BE LOST" in server.output()
    assert "allkeys-lru" in server.output()
    with fresh_redis.client() as admin:
        admin.config_set("maxmemory-policy", "noeviction")
    assert "CELERY_RESULT_BACKEND" not in server.output()
    quiet = start(
        REDIS_URL=fresh_redis.url(0),
        ONDOKI_API_KEY=API_KEY,
        CELERY_RESULT_BACKEND=fresh_redis.url(1),
    ).wait_ready()
    assert "JOBS MAY BE LOST" not in quiet.output()
    # Accepted for compatibility, and said once at start-up.
    assert quiet.output().count("CELERY_RESULT_BACKEND is accepted for compatibility") == 1
