"""Sessions across real `ondoki serve` processes on one Redis and one PostgreSQL: Redis
restarted empty, PostgreSQL stopped, a state flood, the absolute lifetime, a database dump."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx2 as httpx
import pytest
from websockets.exceptions import ConnectionClosed

from tests.e2e.conftest import Start
from tests.e2e.process import ServeProcess, clean_env
from tests.e2e.ws import WsClient, login, publish
from tests.postgres_server import PostgresServer, migrated, throwaway_database
from tests.redis_server import RedisServer

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

KEY = "e2e-api-key-0123456789abcdef"


@pytest.fixture
def database() -> Iterator[str]:
    with throwaway_database() as url:
        yield migrated(url)


def me(server: ServeProcess, token: str) -> int:
    response = httpx.get(
        f"{server.url}/sessions/me", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    return response.status_code


def pair(start: Start, redis: RedisServer, database: str, **env: str) -> list[ServeProcess]:
    servers = [
        start(REDIS_URL=redis.url(0), DATABASE_URL=database, ONDOKI_API_KEY=KEY, **env)
        for _ in range(2)
    ]
    return [server.wait_ready() for server in servers]


def test_redis_restarted_empty_logs_nobody_out_and_revives_nobody(
    start: Start, fresh_redis: RedisServer, database: str
) -> None:
    a, b = pair(start, fresh_redis, database)
    alive = login(a.url, KEY, "alice")
    ended = login(a.url, KEY, "bob")
    brief = httpx.post(
        f"{a.url}/internal/sessions",
        json={"user_id": "carol", "ttl_seconds": 3},
        headers={"Authorization": f"Bearer {KEY}"},
    ).json()["token"]
    assert (
        httpx.delete(
            f"{b.url}/sessions/me", headers={"Authorization": f"Bearer {ended}"}
        ).status_code
        == 204
    )

    fresh_redis.restart()  # no persistence: every key is gone
    with fresh_redis.client() as client:
        assert client.dbsize() == 0

    for server in (a, b):
        assert me(server, alive) == 200
        assert me(server, ended) == 401
    client = WsClient(b.url, alive)
    time.sleep(0.7)  # past the resume window
    publish(a.url, KEY, "alice", "hello", {"n": 1})
    assert client.notifications(1)[0]["event"]["data"] == {"n": 1}
    client.close()

    time.sleep(4)  # the 3-second session has expired, whatever Redis forgot
    fresh_redis.restart()
    for server in (a, b):
        assert me(server, brief) == 401
        assert me(server, ended) == 401
        assert me(server, alive) == 200


def test_database_stopped_cached_sessions_work_creating_answers_503(
    start: Start, fresh_redis: RedisServer
) -> None:
    # With a password: no log line of the server may show it (the `start` fixture checks).
    postgres = PostgresServer(password="pg-e2e-secret-password").start()
    try:
        with throwaway_database(postgres.url()) as url:
            migrated(url)
            (server,) = [
                start(
                    REDIS_URL=fresh_redis.url(0),
                    DATABASE_URL=url,
                    ONDOKI_API_KEY=KEY,
                    ONDOKI_DATABASE_TIMEOUT_SECONDS="1",
                ).wait_ready()
            ]
            token = login(server.url, KEY, "alice")
            postgres.stop()
            try:
                assert me(server, token) == 200
                created = httpx.post(
                    f"{server.url}/internal/sessions",
                    json={"user_id": "bob"},
                    headers={"Authorization": f"Bearer {KEY}"},
                    timeout=10,
                )
                assert created.status_code == 503
                assert created.json()["error"]["code"] == "sessions_unavailable"
                ready = httpx.get(f"{server.url}/readyz", timeout=10)
                assert ready.status_code == 503
                assert ready.json()["parts"]["database"]["ok"] is False
                logout = httpx.delete(
                    f"{server.url}/sessions/me",
                    headers={"Authorization": f"Bearer {token}"},
                    timeout=10,
                )
                assert logout.status_code == 503
            finally:
                postgres.start()
            assert httpx.get(f"{server.url}/readyz", timeout=10).status_code == 200
            assert me(server, token) == 200  # the refused logout did not happen
            other = login(server.url, KEY, "bob")
            assert me(server, other) == 200
            server.stop()
    finally:
        postgres.close()


@pytest.mark.parametrize("worker_class", ["asyncio", "trio"])
def test_no_raw_token_in_a_database_dump(start: Start, database: str, worker_class: str) -> None:
    server = start(
        "--worker-class", worker_class, DATABASE_URL=database, ONDOKI_API_KEY=KEY
    ).wait_ready()
    tokens = [login(server.url, KEY, f"user-{n}") for n in range(5)]
    dump = subprocess.run(
        ["pg_dump", "--data-only", database], capture_output=True, text=True, check=True
    ).stdout
    for token in tokens:
        assert token not in dump
        assert hashlib.sha256(token.encode()).hexdigest() in dump
    # Durable: a new process on the same database knows every session.
    server.stop()
    again = start(
        "--worker-class", worker_class, DATABASE_URL=database, ONDOKI_API_KEY=KEY
    ).wait_ready()
    assert all(me(again, token) == 200 for token in tokens)


def test_state_flood_logs_nobody_out(start: Start, database: str) -> None:
    redis = RedisServer(args=("--maxmemory", "12mb", "--maxmemory-policy", "allkeys-lru"))
    redis.start()
    try:
        # No per-user bound to speak of: Redis evicts sessions, PostgreSQL brings them back.
        a, b = pair(
            start,
            redis,
            database,
            ONDOKI_STATE_MAX_KEYS_PER_USER="100000",
            ONDOKI_STATE_MAX_BYTES_PER_USER="1000000000",
        )
        victims = [login(a.url, KEY, f"victim-{n}") for n in range(20)]
        flooder = login(a.url, KEY, "flooder")
        value = b'"' + b"x" * (64 * 1024 - 3) + b'"'
        with httpx.Client(timeout=10) as client:
            for n in range(400):  # 25 MiB into a 12 MiB Redis
                client.put(
                    f"{b.url}/state/flood-{n}",
                    content=value,
                    headers={
                        "Authorization": f"Bearer {flooder}",
                        "Content-Type": "application/json",
                    },
                )
        with redis.client() as client:
            assert client.info("stats")["evicted_keys"] > 0
        for token in victims:
            assert me(a, token) == 200
            assert me(b, token) == 200
    finally:
        redis.close()


def test_absolute_lifetime_closes_open_sockets(start: Start) -> None:
    server = start(
        ONDOKI_API_KEY=KEY,
        ONDOKI_SESSION_ABSOLUTE_TTL_SECONDS="3",
        ONDOKI_WS_PING_INTERVAL_SECONDS="0.5",
    ).wait_ready()
    token = login(server.url, KEY, "alice")
    client = WsClient(server.url, token)
    started = time.monotonic()
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            client.recv(timeout=15)  # answers pings: only the lifetime may end this socket
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4001
    assert time.monotonic() - started >= 2  # not before the lifetime ended
    assert me(server, token) == 401


def test_serve_refuses_a_schema_behind_in_one_line_and_migrate_fixes_it(start: Start) -> None:
    with throwaway_database() as url:
        refused = start(DATABASE_URL=url, ONDOKI_API_KEY=KEY)
        assert refused.exit_code() == 2
        lines = [line for line in refused.output().splitlines() if "configuration error" in line]
        assert lines == [
            "ondoki: configuration error: DATABASE_URL: the session database's schema is at "
            "version 0, this ondoki needs 1: run `ondoki migrate` first"
        ]
        migrate = subprocess.run(
            [sys.executable, "-m", "ondoki", "migrate"],
            env=clean_env(DATABASE_URL=url),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert migrate.returncode == 0, migrate.stderr
        assert "from version 0 to 1" in migrate.stdout
        server = start(DATABASE_URL=url, ONDOKI_API_KEY=KEY).wait_ready()
        assert me(server, login(server.url, KEY, "alice")) == 200
