"""Settings: environment and TOML, one clear error naming the variable, no leaked secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from ondoki.entrypoints.cli import main
from ondoki.errors import ConfigError
from ondoki.support.redact import redact_url
from ondoki.support.settings import Settings, env_name, flag_name, load_settings, with_db


def test_defaults_need_no_configuration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings({})
    assert settings == Settings()
    assert settings.redis_url is None
    assert settings.broker is None
    assert settings.compatibility_notes == []


def test_seed_variables_and_db_defaults() -> None:
    settings = load_settings({"REDIS_URL": "redis://:pw@cache:6379/0"})
    assert settings.redis_url == "redis://:pw@cache:6379/0"
    assert settings.broker == "redis://:pw@cache:6379/1"
    assert settings.compatibility_notes == []
    explicit = load_settings(
        {
            "REDIS_URL": "redis://cache:6379/0",
            "CELERY_BROKER_URL": "redis://broker:6379/1",
            "CELERY_RESULT_BACKEND": "redis://results:6379/1",
        }
    )
    assert explicit.broker == "redis://broker:6379/1"
    # Accepted (the seed's deployments set it) but nothing is stored there: said once.
    assert explicit.result_backend == "redis://results:6379/1"
    [note] = explicit.compatibility_notes
    assert "CELERY_RESULT_BACKEND" in note and "nothing is stored there" in note


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
        ({"CELERY_RESULT_BACKEND": "redis://broker/1"}, "CELERY_RESULT_BACKEND"),
        ({"ONDOKI_API_KEY": "short"}, "ONDOKI_API_KEY"),
        ({"ONDOKI_STATE_TTL_SECONDS": "1e9"}, "ONDOKI_STATE_TTL_SECONDS"),
        # Not finite, or past any timestamp: a TTL of that cannot be stored (it was a 500).
        ({"ONDOKI_STATE_MAX_TTL_SECONDS": "inf"}, "ONDOKI_STATE_MAX_TTL_SECONDS"),
        ({"ONDOKI_SESSION_MAX_TTL_SECONDS": "1e308"}, "ONDOKI_SESSION_MAX_TTL_SECONDS"),
        ({"ONDOKI_SESSION_ABSOLUTE_TTL_SECONDS": "nan"}, "ONDOKI_SESSION_ABSOLUTE_TTL_SECONDS"),
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
            "ONDOKI_URL_SIGNING_KEY": "a-very-secret-signing-key-0123456789",
        }
    )
    shown = repr(settings.describe())
    for secret in ("pw-one", "pw-two", "a-very-secret-api-key", "signing-key-0123"):
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
        # redis-py prefers a `db=` query to the path: the broker must not stay on DB 0.
        ("redis://h/0?db=0", "redis://h/1"),
        ("rediss://h/0?db=0&ssl_cert_reqs=none", "rediss://h/1?ssl_cert_reqs=none"),
    ],
)
def test_with_db(url: str, expected: str) -> None:
    assert with_db(url, 1) == expected


def test_env_names() -> None:
    assert env_name("redis_url") == "REDIS_URL"
    assert env_name("broker_url") == "CELERY_BROKER_URL"
    assert env_name("media_dir") == "ONDOKI_MEDIA_DIR"


PROD = {
    "ONDOKI_ENV": "production",
    "ONDOKI_API_KEY": "Vq3x9LrT0bKz7NpW2sYd5HfJ8mGc1AeU4iRo6tQk",
    "DATABASE_URL": "postgresql://ondoki:pw@db:5432/ondoki",
    "ONDOKI_URL_SIGNING_KEY": "prod-signing-key-0123456789abcdef",
}


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
        (
            {**PROD, "REDIS_URL": "redis://:pw@r/0", "DATABASE_URL": ""},
            "DATABASE_URL",
            "ONDOKI_ALLOW_EPHEMERAL_SESSIONS",
        ),
        (
            {
                **PROD,
                "REDIS_URL": "redis://r/0",
                "ONDOKI_ALLOW_PASSWORDLESS_REDIS": "true",
                "DATABASE_URL": "",
            },
            "DATABASE_URL",
            "a Redis restart logs everyone out",
        ),
        (
            {**PROD, "REDIS_URL": "redis://:pw@r/0", "ONDOKI_URL_SIGNING_KEY": ""},
            "ONDOKI_URL_SIGNING_KEY",
            "required",
        ),
        (
            {**PROD, "REDIS_URL": "redis://:pw@r/0", "ONDOKI_CORS_ORIGINS": "*"},
            "ONDOKI_CORS_ORIGINS",
            "development only",
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
        {
            "REDIS_URL": "redis://:pw@r/0",
            "DATABASE_URL": "",
            "ONDOKI_ALLOW_EPHEMERAL_SESSIONS": "1",
        },
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


# -- command-line flags ----------------------------------------------------------------------


def test_flags_win_over_the_environment_and_are_typed() -> None:
    settings = load_settings({"ONDOKI_PORT": "9000"}, flags={"port": "9100", "host": "0.0.0.0"})
    assert (settings.host, settings.port) == ("0.0.0.0", 9100)
    unset = load_settings({"ONDOKI_PORT": "9000"}, flags={"port": None, "host": None})
    assert (unset.host, unset.port) == ("127.0.0.1", 9000)


@pytest.mark.parametrize(
    ("flags", "flag", "says"),
    [
        ({"port": "99999"}, "--port", "65535"),
        ({"port": "-1"}, "--port", ">= 0"),
        ({"port": "eighty"}, "--port", "int"),
        ({"port": ""}, "--port", "int"),
        ({"host": "bad host"}, "--host", "host name or an IP address"),
        ({"host": ""}, "--host", "host name or an IP address"),
    ],
)
def test_a_bad_flag_is_named_like_a_bad_variable(
    flags: dict[str, str], flag: str, says: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({}, flags=flags)
    assert caught.value.variable == flag == flag_name(next(iter(flags)))
    assert says in str(caught.value)


def test_hosts_that_can_be_bound_are_accepted() -> None:
    for host in ("localhost", "0.0.0.0", "::1", "[::1]", "api.internal.example"):
        assert load_settings({}, flags={"host": host}).host == host


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["serve", "--port", "99999"], "--port"),
        (["serve", "--host", "no spaces please"], "--host"),
    ],
)
def test_cli_refuses_a_bad_flag_with_one_line_and_exit_2(
    argv: list[str],
    flag: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    for variable in ("ONDOKI_CONFIG", "ONDOKI_HOST", "ONDOKI_PORT", "REDIS_URL"):
        monkeypatch.delenv(variable, raising=False)
    assert main(argv) == 2
    captured = capsys.readouterr()
    [line] = captured.err.strip().splitlines()
    assert line.startswith(f"ondoki: configuration error: {flag}: ")
    assert captured.out == ""


@pytest.mark.parametrize(
    ("argv", "names"),
    [
        (["serve", "--worker-class", "gevent"], "--worker-class"),
        (["serve", "--prot", "8000"], "--prot"),
        (["launch"], "launch"),
    ],
)
def test_cli_refuses_a_bad_command_line_with_one_line_and_exit_2(
    argv: list[str], names: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("ondoki") and names in line


@pytest.mark.parametrize(
    "url",
    [
        "mysql://u:hunter2-secret@db/x",
        "postgresql://u:hunter2-secret@db:port/x",
        "hunter2-secret",
    ],
)
def test_bad_database_url_is_refused_without_showing_it(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({"DATABASE_URL": url})
    assert caught.value.variable == "DATABASE_URL"
    assert "hunter2-secret" not in str(caught.value)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://ondoki:pw@db:5432/ondoki",
        "postgres://ondoki@db/ondoki?sslmode=verify-full&sslrootcert=/etc/ca.pem",
        "postgresql://ondoki@/ondoki?host=/var/run/postgresql",
    ],
)
def test_database_urls_accepted(url: str) -> None:
    assert load_settings({"DATABASE_URL": url}).database_url == url


def test_database_password_is_redacted_in_describe() -> None:
    settings = load_settings({"DATABASE_URL": "postgresql://ondoki:hunter2@db/ondoki"})
    assert settings.describe()["database_url"] == "postgresql://ondoki:***@db/ondoki"
    assert env_name("database_url") == "DATABASE_URL"


def test_cors_origins_are_a_comma_separated_list() -> None:
    settings = load_settings(
        {"ONDOKI_CORS_ORIGINS": "https://app.example.com, http://localhost:5173"}
    )
    assert settings.cors_origins == ["https://app.example.com", "http://localhost:5173"]
    assert load_settings({"ONDOKI_CORS_ORIGINS": "*"}).cors_origins == ["*"]
    assert load_settings({}).cors_origins == []


@pytest.mark.parametrize(
    ("environ", "variable"),
    [
        ({"ONDOKI_CORS_ORIGINS": "https://app.example.com/path"}, "ONDOKI_CORS_ORIGINS"),
        ({"ONDOKI_CORS_ORIGINS": "app.example.com"}, "ONDOKI_CORS_ORIGINS"),
        ({"ONDOKI_URL_SIGNING_KEY": "short"}, "ONDOKI_URL_SIGNING_KEY"),
    ],
)
def test_browser_settings_refusals(environ: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(environ)
    assert caught.value.variable == variable


def test_cors_origins_in_toml_are_an_array(tmp_path: Path) -> None:
    config = tmp_path / "ondoki.toml"
    config.write_text('cors_origins = ["https://app.example.com"]\n')
    assert load_settings({}, config_file=config).cors_origins == ["https://app.example.com"]
    config.write_text('cors_origins = "https://app.example.com"\n')
    with pytest.raises(ConfigError):
        load_settings({}, config_file=config)


def test_job_time_limits_per_kind_with_a_default() -> None:
    assert Settings().job_time_limits == {"media.import": 28800.0, "*": 3600.0}
    assert load_settings({"ONDOKI_JOB_TIME_LIMIT_SECONDS": "90"}).job_time_limits == {"*": 90.0}
    both = load_settings({"ONDOKI_JOB_TIME_LIMIT_SECONDS": "a=1.5, *=60"}).job_time_limits
    assert both == {"a": 1.5, "*": 60.0}
    for bad in ("a=", "a=x", "=5", "a=-1", "a=inf", "a=nan", "*=1e12", "0"):
        with pytest.raises(ConfigError, match="ONDOKI_JOB_TIME_LIMIT_SECONDS"):
            load_settings({"ONDOKI_JOB_TIME_LIMIT_SECONDS": bad})


def test_worker_metrics_port_is_checked() -> None:
    assert Settings().worker_metrics_port is None
    assert load_settings({"ONDOKI_WORKER_METRICS_PORT": "9100"}).worker_metrics_port == 9100
    for bad in ("0", "70000", "x"):
        with pytest.raises(ConfigError, match="ONDOKI_WORKER_METRICS_PORT"):
            load_settings({"ONDOKI_WORKER_METRICS_PORT": bad})
