"""The shipped Redis configs really configure redis-server; the Compose files say what
docs/operations.md says. (Docker cannot run here, so the Compose files are checked as data.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.redis_server import RedisServer

CONFIGS = Path(__file__).parents[2] / "configs"


def compose(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((CONFIGS / name).read_text())
    return loaded


@pytest.mark.redis
@pytest.mark.parametrize(
    ("conf", "policy"),
    [
        ("redis-dev.conf", "volatile-lru"),
        ("redis-cache.conf", "allkeys-lru"),
        ("redis-broker.conf", "noeviction"),
    ],
)
def test_shipped_redis_config_takes_effect(conf: str, policy: str) -> None:
    server = RedisServer(password="cfg-test-pw", config_file=CONFIGS / "redis" / conf).start()
    try:
        with server.client() as client:
            config = client.config_get("*")
        assert config["maxmemory"] == str(256 * 1024 * 1024)
        assert config["maxmemory-policy"] == policy
        assert config["appendonly"] == "no"
        assert config["save"] == ""
        assert "pubsub 33554432 8388608 60" in config["client-output-buffer-limit"]
    finally:
        server.close()


def test_dev_compose_is_one_redis_without_password() -> None:
    services = compose("docker-compose.dev.yml")["services"]
    assert services["redis"]["image"].startswith("redis:7")
    assert "requirepass" not in str(services["redis"])
    check = services["redis"]["healthcheck"]
    assert check["test"] == ["CMD", "redis-cli", "ping"] and check["interval"] == "10s"
    assert services["api"]["environment"]["REDIS_URL"] == "redis://redis:6379/0"
    assert services["worker"]["environment"]["CELERY_BROKER_URL"] == "redis://redis:6379/1"
    assert services["worker"]["command"] == ["ondoki", "worker", "--queues", "celery,media"]
    assert "serve" in services["api"]["command"]


def test_prod_compose_separates_cache_from_broker_with_passwords() -> None:
    services = compose("docker-compose.prod.yml")["services"]
    for name, conf in [("redis-cache", "redis-cache.conf"), ("redis-broker", "redis-broker.conf")]:
        redis = services[name]
        assert redis["image"].startswith("redis:7")
        assert "--requirepass" in " ".join(redis["command"])
        assert any(conf in volume for volume in redis["volumes"])
        assert redis["healthcheck"]["interval"] == "10s"
        assert "redis-cli ping" in " ".join(redis["healthcheck"]["test"])
    assert services["api"]["environment"]["ONDOKI_ENV"] == "production"
    assert services["worker"]["command"] == ["ondoki", "worker", "--queues", "celery,media"]
    # Sessions in PostgreSQL, its schema migrated before the API starts.
    assert services["migrate"]["command"] == ["ondoki", "migrate"]
    assert services["api"]["depends_on"]["migrate"] == {
        "condition": "service_completed_successfully"
    }
    assert services["postgres"]["environment"]["POSTGRES_DB"] == "ondoki"


def test_env_example_has_the_seed_connection_strings() -> None:
    lines = dict(
        line.split("=", 1)
        for line in (CONFIGS / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert lines["REDIS_URL"].endswith("@redis-cache:6379/0")
    assert lines["CELERY_BROKER_URL"].endswith("@redis-broker:6379/1")
    assert lines["CELERY_RESULT_BACKEND"] == lines["CELERY_BROKER_URL"]
    assert lines["ONDOKI_ENV"] == "production"
    assert lines["DATABASE_URL"].startswith("postgresql://ondoki:")
    assert lines["DATABASE_URL"].endswith("@postgres:5432/ondoki")
    # What the file sets is a production configuration ondoki accepts.
    from ondoki.support.settings import load_settings

    environ = {k: v for k, v in lines.items() if not k.endswith("_PASSWORD")}
    assert load_settings(environ).database_url == lines["DATABASE_URL"]
