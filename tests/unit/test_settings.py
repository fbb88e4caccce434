"""Settings: environment and TOML, one clear error naming the variable, no leaked secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from ondoki.errors import ConfigError
from ondoki.support.redact import redact_url
from ondoki.support.settings import Settings, env_name, load_settings, with_db


def test_defaults_need_no_configuration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings({})
    assert settings == Settings()
    assert not settings.uses_redis
    assert settings.broker is None and settings.results is None


def test_seed_variables_and_db_defaults() -> None:
    settings = load_settings({"REDIS_URL": "redis://:pw@cache:6379/0"})
    assert settings.redis_url == "redis://:pw@cache:6379/0"
    assert settings.broker == "redis://:pw@cache:6379/1"
    assert settings.results == settings.broker
    explicit = load_settings(
        {
            "REDIS_URL": "redis://cache:6379/0",
            "CELERY_BROKER_URL": "redis://broker:6379/1",
            "CELERY_RESULT_BACKEND": "redis://results:6379/1",
        }
    )
    assert explicit.broker == "redis://broker:6379/1"
    assert explicit.results == "redis://results:6379/1"


def test_ondoki_variables_are_typed() -> None:
    settings = load_settings({"ONDOKI_PORT": "9000", "ONDOKI_SESSION_TTL_SECONDS": "60.5"})
    assert settings.port == 9000
    assert settings.session_ttl_seconds == 60.5


@pytest.mark.parametrize(
    ("environ", "variable"),
    [
        ({"ONDOKI_PORT": "eighty"}, "ONDOKI_PORT"),
        ({"ONDOKI_PORT": "70000"}, "ONDOKI_PORT"),
        ({"ONDOKI_ENV": "prod"}, "ONDOKI_ENV"),
        ({"ONDOKI_SESSION_TTL_SECONDS": "0"}, "ONDOKI_SESSION_TTL_SECONDS"),
        ({"ONDOKI_STATE_MAX_BYTES": "-5"}, "ONDOKI_STATE_MAX_BYTES"),
        ({"ONDOKI_NAMESPACE": "has space"}, "ONDOKI_NAMESPACE"),
        ({"REDIS_URL": "http://cache"}, "REDIS_URL"),
        ({"REDIS_URL": "redis://c", "CELERY_BROKER_URL": "amqp://x"}, "CELERY_BROKER_URL"),
        ({"CELERY_BROKER_URL": "redis://broker/1"}, "CELERY_BROKER_URL"),
        ({"ONDOKI_API_KEY": "short"}, "ONDOKI_API_KEY"),
        ({"ONDOKI_STATE_TTL_SECONDS": "1e9"}, "ONDOKI_STATE_TTL_SECONDS"),
        # Smaller than the largest event (64 KiB): that event would close every client.
        ({"ONDOKI_WS_SEND_BUFFER_BYTES": "4096"}, "ONDOKI_WS_SEND_BUFFER_BYTES"),
    ],
)
def test_bad_value_names_its_variable(environ: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(environ)
    assert caught.value.variable == variable
    assert str(caught.value).startswith(f"{variable}: ")
    assert "\n" not in str(caught.value)


def test_a_replaced_variable_is_refused_with_its_successor() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({"ONDOKI_WS_QUEUE_SIZE": "32"})
    assert caught.value.variable == "ONDOKI_WS_QUEUE_SIZE"
    assert "ONDOKI_WS_SEND_BUFFER_BYTES" in str(caught.value)
    assert load_settings({"ONDOKI_WS_SEND_BUFFER_BYTES": "70000"}).ws_send_buffer_bytes == 70000


def test_password_never_in_config_errors() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({"REDIS_URL": "http://user:hunter2-secret@cache"})
    assert "hunter2-secret" not in str(caught.value)


def test_toml_file_then_environment_wins(tmp_path: Path) -> None:
    path = tmp_path / "ondoki.toml"
    path.write_text('namespace = "staging"\nport = 9100\nstate_max_bytes = 1024\n')
    settings = load_settings({"ONDOKI_CONFIG": str(path), "ONDOKI_PORT": "9200"})
    assert (settings.namespace, settings.port, settings.state_max_bytes) == ("staging", 9200, 1024)


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("port = 'x'\n", "[port]"),
        ("no_such_setting = 1\n", "no_such_setting"),
        ("port = \n", "not valid TOML"),
    ],
)
def test_bad_toml_is_named(tmp_path: Path, text: str, where: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_settings({"ONDOKI_CONFIG": str(path)})
    assert str(path) in str(caught.value)
    assert where in str(caught.value)


def test_missing_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings({"ONDOKI_CONFIG": str(tmp_path / "absent.toml")})


def test_shipped_config_file_loads() -> None:
    shipped = Path(__file__).parents[2] / "configs" / "ondoki.toml"
    assert load_settings({}, config_file=shipped) == Settings()


def test_describe_redacts_every_secret() -> None:
    settings = load_settings(
        {
            "REDIS_URL": "redis://:pw-one@cache/0",
            "CELERY_BROKER_URL": "redis://user:pw-two@broker/1",
            "ONDOKI_API_KEY": "a-very-secret-api-key",
        }
    )
    shown = repr(settings.describe())
    for secret in ("pw-one", "pw-two", "a-very-secret-api-key"):
        assert secret not in shown


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://:pw@host:6379/0", "redis://:***@host:6379/0"),
        ("redis://user:pw@host/0", "redis://user:***@host/0"),
        ("redis://user@host/0", "redis://user@host/0"),
        ("redis://host/0", "redis://host/0"),
        ("unix:///run/redis.sock?db=0&password=pw", "unix:///run/redis.sock?db=0&password=***"),
        ("rediss://:p%40ss@host/0", "rediss://:***@host/0"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://h:1/0", "redis://h:1/1"),
        ("redis://:pw@h", "redis://:pw@h/1"),
        ("redis://h/0?ssl_cert_reqs=none", "redis://h/1?ssl_cert_reqs=none"),
        ("unix:///s.sock?db=0", "unix:///s.sock?db=1"),
    ],
)
def test_with_db(url: str, expected: str) -> None:
    assert with_db(url, 1) == expected


def test_env_names() -> None:
    assert env_name("redis_url") == "REDIS_URL"
    assert env_name("broker_url") == "CELERY_BROKER_URL"
    assert env_name("media_dir") == "ONDOKI_MEDIA_DIR"


PROD = {"ONDOKI_ENV": "production", "ONDOKI_API_KEY": "Vq3x9LrT0bKz7NpW2sYd5HfJ8mGc1AeU4iRo6tQk"}


@pytest.mark.parametrize(
    ("environ", "variable", "says"),
    [
        (
            {"ONDOKI_ENV": "production", "REDIS_URL": "redis://:pw@r/0"},
            "ONDOKI_API_KEY",
            "required",
        ),
        (PROD, "REDIS_URL", "in-memory"),
        ({**PROD, "REDIS_URL": "redis://r/0"}, "REDIS_URL", "no password"),
        (
            {**PROD, "REDIS_URL": "redis://:pw@r/0", "CELERY_BROKER_URL": "redis://b/1"},
            "CELERY_BROKER_URL",
            "no password",
        ),
    ],
)
def test_production_refusals(environ: dict[str, str], variable: str, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(environ)
    assert caught.value.variable == variable
    assert says in str(caught.value)


@pytest.mark.parametrize(
    ("environ", "variable", "says"),
    [
        ({"REDIS_URL": "redis://r/0?foo=1"}, "REDIS_URL", "unknown query parameter 'foo'"),
        ({"REDIS_URL": "redis://r/0?socket_timeout=60"}, "REDIS_URL", "ONDOKI_REDIS_TIMEOUT"),
        ({"REDIS_URL": "redis://r/0?db=one"}, "REDIS_URL", "not a number"),
        ({"REDIS_URL": "redis://r/0?ssl_certfile=/c"}, "REDIS_URL", "unknown query parameter"),
        (
            {"REDIS_URL": "redis://r/0", "CELERY_BROKER_URL": "unix:///s?password="},
            "CELERY_BROKER_URL",
            "empty 'password'",
        ),
        ({**PROD, "REDIS_URL": "redis://r/0?password="}, "REDIS_URL", "empty 'password'"),
        ({**PROD, "ONDOKI_API_KEY": "a" * 16}, "ONDOKI_API_KEY", "at least 32"),
        ({**PROD, "ONDOKI_API_KEY": "a" * 64}, "ONDOKI_API_KEY", "predictable"),
        ({**PROD, "ONDOKI_API_KEY": "abcd" * 12}, "ONDOKI_API_KEY", "predictable"),
        ({**PROD, "ONDOKI_API_KEY": "ab" * 40}, "ONDOKI_API_KEY", "secrets.token_urlsafe(32)"),
    ],
)
def test_url_queries_and_weak_keys_are_refused(
    environ: dict[str, str], variable: str, says: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(environ)
    assert caught.value.variable == variable
    assert says in str(caught.value)


@pytest.mark.parametrize(
    "extra",
    [
        {"REDIS_URL": "redis://:pw@r/0"},
        {"REDIS_URL": "redis://user:pw@r/0"},
        {"REDIS_URL": "unix:///run/redis.sock?password=pw"},
        {"REDIS_URL": "rediss://:pw@r/0?ssl_cert_reqs=required&ssl_ca_certs=/ca.pem"},
        {"REDIS_URL": "redis://r/0", "ONDOKI_ALLOW_PASSWORDLESS_REDIS": "true"},
        # A hex key (openssl rand -hex 32) is fine.
        {"REDIS_URL": "redis://:pw@r/0", "ONDOKI_API_KEY": "9f" + "0123456789abcdef" * 4},
    ],
)
def test_production_accepts(extra: dict[str, str]) -> None:
    assert load_settings({**PROD, **extra}).env == "production"


@pytest.mark.parametrize(
    "url",
    [
        "redis://:s3cr3tPW/x9@127.0.0.1:1/0",  # an unencoded "/" in the password
        "redis://127.0.0.1:abc/0",
        "redis://:pw@/0",
        "redis://host/not-a-db",
        "redis://[::1/0",
        "unix://",
    ],
)
def test_malformed_redis_urls_are_named_without_echoing_them(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({"REDIS_URL": url})
    assert caught.value.variable == "REDIS_URL"
    assert "s3cr3tPW" not in str(caught.value)
    assert "x9" not in str(caught.value)


def test_a_password_with_a_slash_is_still_redacted() -> None:
    from ondoki.support.logs import Redactor, secrets_of

    url = "redis://:s3cr3tPW/x9@127.0.0.1:1/0"
    assert redact_url(url) == "redis://:***@127.0.0.1:1/0"
    redactor = Redactor(secrets_of([url]))
    assert "s3cr3tPW" not in redactor(f"connecting to {url} failed: s3cr3tPW/x9")
    assert "s3cr3tPW" not in Redactor()(f"connecting to {url}")
