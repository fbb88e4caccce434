"""`ondoki doctor` against real servers: healthy, wrong password, risky eviction, no pub/sub."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.process import clean_env
from tests.postgres_server import PostgresServer, throwaway_database
from tests.redis_server import RedisServer, free_port, require_redis_server

pytestmark = pytest.mark.redis

PASSWORD = "doctor-test-password"


def doctor(**env: str) -> tuple[int, list[dict[str, Any]], str]:
    """Exit status, JSON findings, and the human-readable report."""
    as_json = subprocess.run(
        [sys.executable, "-m", "ondoki", "doctor", "--json"],
        env=clean_env(**env), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    text = subprocess.run(
        [sys.executable, "-m", "ondoki", "doctor"],
        env=clean_env(**env), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert as_json.returncode == text.returncode
    return as_json.returncode, json.loads(as_json.stdout), text.stdout + text.stderr


def finding(findings: list[dict[str, Any]], target: str, check: str) -> dict[str, Any]:
    matches = [f for f in findings if f["target"] == target and f["check"] == check]
    assert len(matches) == 1, findings
    return matches[0]


@pytest.fixture
def healthy() -> Iterator[RedisServer]:
    server = RedisServer(
        password=PASSWORD,
        args=("--maxmemory", "256mb", "--maxmemory-policy", "volatile-lru", "--appendonly", "yes"),
    ).start()
    yield server
    server.close()


@pytest.mark.postgres
def test_healthy_server_passes(healthy: RedisServer, database_url: str) -> None:
    status, findings, text = doctor(REDIS_URL=healthy.url(0), DATABASE_URL=database_url)
    assert status == 0, text
    assert {f["severity"] for f in findings} <= {"ok", "info"}
    checks = {(f["target"], f["check"]) for f in findings}
    for check in [
        "reachable",
        "version",
        "pubsub",
        "resp3",
        "eviction",
        "persistence",
        "pubsub-buffer",
    ]:
        assert ("cache", check) in checks or ("broker", check) in checks
    assert ("broker", "reachable") in checks
    assert "credentials accepted" in finding(findings, "cache", "reachable")["message"]
    for check in ["reachable", "version", "schema"]:
        assert ("database", check) in checks


def test_redis_without_a_database_warns_that_sessions_are_ephemeral(
    healthy: RedisServer,
) -> None:
    status, findings, text = doctor(REDIS_URL=healthy.url(0))
    assert status == 0, text
    sessions = finding(findings, "database", "sessions")
    assert sessions["severity"] == "warning"
    assert "do not survive a Redis restart" in sessions["message"]
    assert "DATABASE_URL" in sessions["fix"]
    assert PASSWORD not in text and PASSWORD not in json.dumps(findings)


def test_wrong_password_is_an_error_with_its_fix(healthy: RedisServer) -> None:
    status, findings, text = doctor(REDIS_URL=healthy.url(0).replace(PASSWORD, "wrong-one"))
    assert status == 1
    auth = finding(findings, "cache", "auth")
    assert auth["severity"] == "error"
    assert "password" in auth["fix"]
    assert "wrong-one" not in text


def test_shared_allkeys_lru_instance_is_an_error(fresh_redis: RedisServer) -> None:
    with fresh_redis.client() as admin:
        admin.config_set("maxmemory", "256mb")
        admin.config_set("maxmemory-policy", "allkeys-lru")
    status, findings, text = doctor(REDIS_URL=fresh_redis.url(0))
    assert status == 1, text
    eviction = finding(findings, "broker", "eviction")
    assert eviction["severity"] == "error"
    assert "allkeys-lru" in eviction["message"] and "queued jobs" in eviction["message"]
    assert "noeviction" in eviction["fix"] and "volatile-lru" in eviction["fix"]
    assert "configs/redis/redis-broker.conf" in eviction["fix"]
    assert "fix:" in text
    # No password in the URL: nothing was checked, and the doctor does not claim otherwise.
    reachable = finding(findings, "cache", "reachable")["message"]
    assert "credentials accepted" not in reachable and "no password" in reachable


def test_separate_broker_with_noeviction_is_fine(fresh_redis: RedisServer) -> None:
    broker = RedisServer(args=("--maxmemory-policy", "noeviction", "--appendonly", "yes")).start()
    try:
        with fresh_redis.client() as admin:
            admin.config_set("maxmemory", "256mb")
            admin.config_set("maxmemory-policy", "allkeys-lru")
        status, findings, text = doctor(
            REDIS_URL=fresh_redis.url(0), CELERY_BROKER_URL=broker.url(1)
        )
        assert finding(findings, "cache", "eviction")["severity"] == "ok"
        assert finding(findings, "broker", "eviction")["severity"] == "ok"
        assert status == 0, text
    finally:
        broker.close()


def test_user_without_pubsub_permission_is_an_error(fresh_redis: RedisServer) -> None:
    with fresh_redis.client() as admin:
        admin.execute_command(
            "ACL", "SETUSER", "nopubsub", "on", ">nopubsub-pw", "~*", "&*", "+@all", "-subscribe"
        )
    status, findings, _ = doctor(
        REDIS_URL=f"redis://nopubsub:nopubsub-pw@127.0.0.1:{fresh_redis.port}/0"
    )
    assert status == 1
    pubsub = finding(findings, "cache", "pubsub")
    assert pubsub["severity"] == "error"
    assert "subscribe" in pubsub["fix"]


@pytest.mark.parametrize("query", ["?foo=1", "?socket_timeout=30", "?password="])
def test_a_bad_url_query_is_one_line_and_exit_2(query: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ondoki", "doctor"],
        env=clean_env(REDIS_URL=f"redis://127.0.0.1:1/0{query}"),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert len(lines) == 1, lines
    assert "REDIS_URL" in lines[0]


def test_a_server_refusing_hello_3_is_named_with_its_fix(tmp_path: Path) -> None:
    # What a Redis older than 6 answers (HELLO unknown), from a current server. Started
    # here: tests.redis_server's readiness check itself needs HELLO.
    port = free_port()
    command = [require_redis_server(), "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    command += ["--dir", str(tmp_path), "--rename-command", "HELLO", ""]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.02)
        status, findings, text = doctor(REDIS_URL=f"redis://127.0.0.1:{port}/0")
    finally:
        server.kill()
        server.wait(10)
    found = finding(findings, "cache", "resp3")
    assert found["severity"] == "error", found
    assert "HELLO 3" in found["message"]
    assert "Redis 6" in found["fix"] and "+hello" in found["fix"]
    assert status == 1, text


def test_unreachable_server_is_an_error() -> None:
    status, findings, _ = doctor(REDIS_URL="redis://127.0.0.1:1/0")
    assert status == 1
    assert finding(findings, "cache", "reachable")["severity"] == "error"


def test_result_backend_is_reported_as_accepted_for_compatibility(healthy: RedisServer) -> None:
    # Nothing is stored there, so it is not checked: an unreachable one is no error.
    status, findings, text = doctor(
        REDIS_URL=healthy.url(0), CELERY_RESULT_BACKEND="redis://:pw@127.0.0.1:1/1"
    )
    assert status == 0, text
    note = finding(findings, "settings", "compatibility")
    assert note["severity"] == "info"
    assert "CELERY_RESULT_BACKEND" in note["message"]
    assert "nothing is stored there" in note["message"]
    # No result-backend target; "database" says sessions need DATABASE_URL to be durable.
    assert {f["target"] for f in findings} == {"cache", "broker", "settings", "database"}


def test_memory_mode_has_nothing_to_check() -> None:
    status, findings, _ = doctor()
    assert status == 0
    assert findings[0]["severity"] == "info"


@pytest.mark.postgres
def test_database_wrong_password_and_schema_behind() -> None:
    server = PostgresServer(password=PASSWORD).start()
    try:
        with throwaway_database(server.url()) as url:
            status, findings, text = doctor(DATABASE_URL=url.replace(PASSWORD, "wrong-one"))
            assert status == 1
            auth = finding(findings, "database", "auth")
            assert auth["severity"] == "error" and "password" in auth["fix"]
            assert "wrong-one" not in text and "wrong-one" not in json.dumps(findings)
            status, findings, text = doctor(DATABASE_URL=url)
            assert status == 1
            assert finding(findings, "database", "reachable")["severity"] == "ok"
            schema = finding(findings, "database", "schema")
            assert schema["severity"] == "error" and "ondoki migrate" in schema["fix"]
            assert PASSWORD not in text and PASSWORD not in json.dumps(findings)
    finally:
        server.close()
