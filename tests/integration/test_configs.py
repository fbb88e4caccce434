"""The shipped Redis configs really configure redis-server; the Compose files say what
docs/operations.md says. (Docker cannot run here, so the Compose files are checked as data.)"""

from __future__ import annotations

import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from ondoki.errors import ConfigError
from ondoki_adapters.prometheus.jobs import JobMetrics, serve_metrics
from tests.e2e.process import ServeProcess, clean_env
from tests.redis_server import RedisServer, free_port

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
    # The placeholder key is refused (a forgotten one must not run); a made one is accepted.
    with pytest.raises(ConfigError) as refused:
        load_settings(environ)
    assert refused.value.variable == "ONDOKI_API_KEY"
    environ["ONDOKI_API_KEY"] = secrets.token_urlsafe(32)
    assert load_settings(environ).database_url == lines["DATABASE_URL"]


@pytest.mark.parametrize("name", ["docker-compose.dev.yml", "docker-compose.prod.yml"])
def test_compose_health_checks_run_and_tell(name: str, tmp_path: Path) -> None:
    services = compose(name)["services"]
    # The api's check against a real `ondoki serve`; the port is the test's own.
    api = ServeProcess(tmp_path, clean_env()).wait_ready()
    try:
        assert run_check(services["api"], "8000", api.port) == 0
    finally:
        api.stop()
    assert run_check(services["api"], "8000", api.port) != 0  # stopped: unhealthy
    # The worker's check reads the heartbeat from its metrics.
    metrics = JobMetrics(registry := CollectorRegistry())
    server, thread = serve_metrics(registry, "127.0.0.1", port := free_port())
    try:
        metrics.worker_heartbeat(time.time())
        assert run_check(services["worker"], "9100", port) == 0
        metrics.worker_heartbeat(time.time() - 120)
        assert run_check(services["worker"], "9100", port) != 0
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    assert services["worker"]["environment"]["ONDOKI_WORKER_METRICS_PORT"] == "9100"


def run_check(service: dict[str, Any], port: str, actual: int) -> int:
    command = service["healthcheck"]["test"]
    assert command[:3] == ["CMD", "python", "-c"]
    script = command[3].replace(f"127.0.0.1:{port}", f"127.0.0.1:{actual}")
    return subprocess.run([sys.executable, "-c", script], timeout=30).returncode


def test_prod_worker_waits_for_both_redis_instances() -> None:
    depends = compose("docker-compose.prod.yml")["services"]["worker"]["depends_on"]
    assert depends == {
        "redis-cache": {"condition": "service_healthy"},
        "redis-broker": {"condition": "service_healthy"},
    }
