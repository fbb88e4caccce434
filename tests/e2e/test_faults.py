"""A hung (SIGSTOP) and a killed redis-server under a real `ondoki serve`: requests answer
503 within ONDOKI_REDIS_TIMEOUT_SECONDS, and only the API key sees where Redis is."""

from __future__ import annotations

import threading
import time

import httpx2 as httpx
import pytest

from tests.e2e.conftest import Start
from tests.e2e.test_serve import API_KEY, login
from tests.postgres_server import migrated, throwaway_database
from tests.redis_server import RedisServer

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

TIMEOUT = 2.0
# Where one timeout must be told from two on a loaded machine: 4 s against 8, cut at 6.
LONG_TIMEOUT = 4.0
INTERNAL = {"Authorization": f"Bearer {API_KEY}"}


def timed(method: str, url: str, **kwargs: object) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = httpx.request(method, url, timeout=60, **kwargs)  # type: ignore[arg-type]
    return response, time.monotonic() - started


def assert_no_address(response: httpx.Response, redis: RedisServer) -> None:
    assert str(redis.port) not in response.text, response.text
    assert "127.0.0.1" not in response.text, response.text


def test_a_hung_redis_answers_503_within_the_timeout(
    start: Start, fresh_redis: RedisServer
) -> None:
    server = start(
        REDIS_URL=fresh_redis.url(0),
        ONDOKI_API_KEY=API_KEY,
        ONDOKI_REDIS_TIMEOUT_SECONDS=str(TIMEOUT),
    ).wait_ready()
    alice = login(server.url, API_KEY, "alice")
    with fresh_redis.frozen():
        # Before: three attempts of a full socket timeout each, plus the pool's own wait.
        for method, path, body in (
            ("PUT", "/state/k", {"json": {"a": 1}}),
            ("GET", "/sessions/me", {}),
        ):
            response, took = timed(method, f"{server.url}{path}", headers=alice, **body)
            assert response.status_code == 503, response.text
            assert took < TIMEOUT * 2, f"{method} {path} took {took:.1f} s"
            assert_no_address(response, fresh_redis)
        created, took = timed(
            "POST", f"{server.url}/internal/sessions", json={"user_id": "bob"}, headers=INTERNAL
        )
        assert created.status_code == 503
        assert took < TIMEOUT * 2
        # The operator's key shows what failed.
        assert "Redis" in created.json()["error"]["message"]
    # And it recovers.
    assert httpx.put(f"{server.url}/state/k", json={"a": 2}, headers=alice).status_code == 200


@pytest.mark.postgres
@pytest.mark.parametrize("worker_class", ["asyncio", "trio"])
def test_a_hung_redis_costs_a_job_request_one_timeout_on_either_loop(
    start: Start, fresh_redis: RedisServer, worker_class: str
) -> None:
    with throwaway_database() as database:
        server = start(
            "--worker-class",
            worker_class,
            REDIS_URL=fresh_redis.url(0),
            DATABASE_URL=migrated(database),
            ONDOKI_API_KEY=API_KEY,
            ONDOKI_REDIS_TIMEOUT_SECONDS=str(LONG_TIMEOUT),
        ).wait_ready()
        alice = login(server.url, API_KEY, "alice")
        with fresh_redis.frozen():
            # The session cache spends the request's Redis budget, the database knows the
            # session, and the job queue gets what is left: nothing. On trio the queue runs
            # on an asyncio loop of its own (the bridge), which is handed the budget; before,
            # it started a timeout of its own (two in all).
            response, took = timed("GET", f"{server.url}/jobs/{'0' * 32}", headers=alice)
            assert response.status_code == 503, response.text
            assert took < LONG_TIMEOUT * 1.5, f"took {took:.1f} s"
            # Straight to the job queue (the API key needs no session): one timeout.
            dead, took = timed("GET", f"{server.url}/internal/jobs/dead", headers=INTERNAL)
            assert dead.status_code == 503, dead.text
            assert took < LONG_TIMEOUT * 1.5, f"took {took:.1f} s"
            assert "Redis" in dead.json()["error"]["message"]
        assert timed("GET", f"{server.url}/internal/jobs/dead", headers=INTERNAL)[0].is_success


def test_a_killed_redis_is_503_and_readyz_names_it_only_to_the_api_key(
    start: Start, fresh_redis: RedisServer
) -> None:
    server = start(
        REDIS_URL=fresh_redis.url(0),
        ONDOKI_API_KEY=API_KEY,
        ONDOKI_REDIS_TIMEOUT_SECONDS=str(TIMEOUT),
    ).wait_ready()
    alice = login(server.url, API_KEY, "alice")
    fresh_redis.kill()
    response, took = timed("PUT", f"{server.url}/state/k", json={"a": 1}, headers=alice)
    assert response.status_code == 503
    assert took < TIMEOUT * 2
    assert_no_address(response, fresh_redis)

    anonymous = httpx.get(f"{server.url}/readyz", timeout=30)
    assert anonymous.status_code == 503
    assert_no_address(anonymous, fresh_redis)
    assert anonymous.json()["parts"]["cache"] == {"ok": False}
    operator = httpx.get(f"{server.url}/readyz", headers=INTERNAL, timeout=30)
    assert operator.status_code == 503
    assert str(fresh_redis.port) in operator.json()["parts"]["cache"]["error"]


def test_metrics_scrapes_do_not_queue_behind_a_hung_redis(
    start: Start, fresh_redis: RedisServer
) -> None:
    server = start(
        REDIS_URL=fresh_redis.url(0),
        ONDOKI_API_KEY=API_KEY,
        ONDOKI_REDIS_TIMEOUT_SECONDS=str(TIMEOUT),
        ONDOKI_METRICS_REFRESH_SECONDS="0.5",
    ).wait_ready()
    assert "ondoki_queue_depth" in httpx.get(f"{server.url}/metrics", timeout=30).text
    took: list[float] = []

    def scrape() -> None:
        response, seconds = timed("GET", f"{server.url}/metrics")
        assert response.status_code == 200
        took.append(seconds)

    time.sleep(0.6)  # the snapshot is due again
    with fresh_redis.frozen():
        threads = [threading.Thread(target=scrape) for _ in range(10)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    assert len(took) == 10
    # Before: each scrape waited for the one before it (2 s each, up to 20 s). Now at most
    # one scrape reads the queue (up to its 2 s); the others answer from the snapshot.
    assert max(took) < 4.5, sorted(took)
    assert sorted(took)[-2] < 1.5, sorted(took)
