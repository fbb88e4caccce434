"""Settings: read once, at start-up, from the environment and an optional TOML file."""

from __future__ import annotations

import difflib
import math
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, urlsplit

import msgspec

from ondoki.errors import ConfigError
from ondoki.support.redact import redact_url, url_password

#: The longest duration a setting takes: 100 years (finite: a TTL of `inf` or 1e308 cannot
#: be stored, in Redis or in a timestamp).
MAX_SECONDS = 100 * 365 * 86_400.0
Seconds = Annotated[float, msgspec.Meta(gt=0, le=MAX_SECONDS)]
Positive = Annotated[int, msgspec.Meta(ge=1)]

DEFAULT_CONFIG = Path("configs/ondoki.toml")

# Variables whose names predate ondoki (the seed's deployments use them as they are).
_SEED_NAMES = {
    "redis_url": "REDIS_URL",
    "broker_url": "CELERY_BROKER_URL",
    "result_backend": "CELERY_RESULT_BACKEND",
}
_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
# The database's URL goes by the name the PostgreSQL ecosystem uses.
_OTHER_NAMES = {"database_url": "DATABASE_URL"}
_DATABASE_SCHEMES = ("postgresql://", "postgres://")
# Query parameters a Redis URL may carry. redis-py hands any other name to the connection
# as a keyword argument, which fails only when the first connection is made.
_URL_PARAMETERS = frozenset({"db", "username", "password"})
_TLS_PARAMETERS = frozenset(
    {
        "ssl_cert_reqs",
        "ssl_ca_certs",
        "ssl_ca_path",
        "ssl_certfile",
        "ssl_keyfile",
        "ssl_check_hostname",
        "ssl_min_version",
    }
)
# Connection options ondoki sets itself, from its own settings, for every client alike.
_OWN_PARAMETERS = frozenset(
    {
        "socket_timeout",
        "socket_connect_timeout",
        "timeout",
        "health_check_interval",
        "max_connections",
        "retry_on_timeout",
        "protocol",
    }
)
#: How to make an API key production accepts (quoted in the error that refuses one).
API_KEY_RECIPE = 'python -c "import secrets; print(secrets.token_urlsafe(32))"'
PRODUCTION_API_KEY_CHARS = 32


class Settings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Every setting, with its default. `ONDOKI_<NAME>` sets `<name>` (but see `env_name`)."""

    env: Literal["development", "production"] = "development"
    redis_url: str | None = None
    broker_url: str | None = None
    result_backend: str | None = None
    api_key: str | None = None
    allow_passwordless_redis: bool = False
    media_dir: str = "media"
    namespace: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.-]{1,32}$")] = "ondoki"

    # A host name or an IP address (IPv6 may be in brackets): what hypercorn can bind.
    host: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9._:\[\]-]{1,255}$")] = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8000
    shutdown_grace_seconds: Seconds = 10.0
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    session_ttl_seconds: Seconds = 86_400.0
    session_max_ttl_seconds: Seconds = 30 * 86_400.0
    state_ttl_seconds: Seconds = 3_600.0
    state_max_ttl_seconds: Seconds = 7 * 86_400.0
    state_max_bytes: Positive = 64 * 1024
    max_json_body_bytes: Positive = 1024 * 1024

    max_upload_bytes: Positive = 2 * 1024**3
    whisper_model_dir: str | None = None

    history_size: Positive = 1000
    history_ttl_seconds: Seconds = 3_600.0
    notification_max_bytes: Positive = 64 * 1024
    ws_send_buffer_bytes: Positive = 256 * 1024
    ws_ping_interval_seconds: Seconds = 25.0
    ws_ping_timeout_seconds: Seconds = 10.0
    ws_max_message_bytes: Positive = 4096

    # Publishing: batches and broadcasts (POST /internal/notifications, the publisher library)
    notification_batch_max_events: Positive = 1000
    notification_batch_max_bytes: Positive = 1024 * 1024

    # WebSocket limits and direct frames (the notification hub; docs/websocket-limits.md)
    ws_max_sockets_per_user: Positive = 64
    ws_resume_burst: Positive = 5
    ws_resumes_per_minute: Positive = 30
    ws_direct_frames: bool = True

    job_record_ttl_seconds: Seconds = 7 * 86_400.0
    worker_heartbeat_timeout_seconds: Seconds = 60.0
    worker_requeue_interval_seconds: Seconds = 5.0
    worker_lease_ttl_seconds: Seconds = 30.0
    worker_poll_interval_seconds: Seconds = 0.05
    worker_stop_timeout_seconds: Seconds = 600.0

    # jobs: worker metrics and time limits (docs/jobs.md)
    worker_metrics_port: Annotated[int, msgspec.Meta(ge=1, le=65535)] | None = None
    job_time_limit_seconds: str = "media.import=28800,*=3600"
    job_time_limit_grace_seconds: Seconds = 300.0

    cache_default_ttl_seconds: Seconds = 86_400.0
    memory_cache_max_entries: Positive = 100_000
    memory_cache_max_bytes: Positive = 64 * 1024 * 1024
    redis_timeout_seconds: Seconds = 5.0

    # Sessions: the durable store (PostgreSQL), absolute lifetime, per-user state bounds.
    database_url: str | None = None
    database_timeout_seconds: Seconds = 5.0
    database_pool_size: Annotated[int, msgspec.Meta(ge=1, le=100)] = 10
    allow_ephemeral_sessions: bool = False
    session_absolute_ttl_seconds: Seconds = 30 * 86_400.0
    session_persist_interval_seconds: Seconds = 300.0
    state_max_keys_per_user: Positive = 100
    state_max_bytes_per_user: Positive = 1024 * 1024

    # Browsers and apps: cross-origin access, signed frame URLs.
    cors_origins: list[str] = msgspec.field(default_factory=list)
    url_signing_key: str | None = None
    frame_url_ttl_seconds: Seconds = 3_600.0

    # Abuse and faults: uploads, request bodies, API-key guessing, HTTP/2 (docs/limits.md).
    body_idle_timeout_seconds: Seconds = 30.0
    max_concurrent_uploads: Positive = 16
    max_concurrent_uploads_per_user: Positive = 2
    max_active_imports_per_user: Positive = 5
    media_min_free_bytes: Annotated[int, msgspec.Meta(ge=0)] = 1024**3
    import_retention_seconds: Seconds = 7 * 86_400.0
    api_key_failure_limit: Positive = 10
    api_key_failure_window_seconds: Seconds = 60.0
    allow_h2c: bool = False
    metrics_refresh_seconds: Seconds = 5.0

    @property
    def broker(self) -> str | None:
        """The job broker URL: `CELERY_BROKER_URL`, else `REDIS_URL` on DB 1, else None."""
        if self.broker_url is not None:
            return self.broker_url
        return None if self.redis_url is None else with_db(self.redis_url, 1)

    @property
    def compatibility_notes(self) -> list[str]:
        """Settings that are accepted but change nothing, each said in one sentence; logged
        once at start-up and reported by `ondoki doctor`."""
        notes = []
        if self.result_backend is not None:
            notes.append(RESULT_BACKEND_NOTE)
        return notes

    @property
    def job_time_limits(self) -> dict[str, float]:
        """`job_time_limit_seconds` parsed: kind -> seconds, `*` for every other kind."""
        return parse_time_limits(self.job_time_limit_seconds)

    def describe(self) -> dict[str, Any]:
        """The settings with every secret redacted, for logs and `doctor`."""
        shown = msgspec.structs.asdict(self)
        for name in _SEED_NAMES:
            if shown[name] is not None:
                shown[name] = redact_url(shown[name])
        if shown["database_url"] is not None:
            shown["database_url"] = redact_url(shown["database_url"])
        for secret in ("api_key", "url_signing_key"):
            if shown[secret] is not None:
                shown[secret] = "***"
        return shown


#: Why `CELERY_RESULT_BACKEND` is read at all (docs/operations.md, "CELERY_RESULT_BACKEND").
RESULT_BACKEND_NOTE = (
    "CELERY_RESULT_BACKEND is accepted for compatibility with the seed's deployments and "
    "nothing is stored there: job results are kept in the job records on the broker "
    "(CELERY_BROKER_URL)"
)

# Variables that were read once, and what replaced them: silently ignoring one would leave
# an operator believing it still applies.
_RENAMED = {"ONDOKI_WS_QUEUE_SIZE": "ONDOKI_WS_SEND_BUFFER_BYTES (a bound in bytes)"}

# Settings that are lists: comma-separated in the environment, arrays in TOML.
_LIST_FIELDS = frozenset({"cors_origins"})


def parse_time_limits(text: str) -> dict[str, float]:
    """`14400` (every kind) or `kind=seconds,...` with `*=seconds` for the kinds not named;
    `ValueError` naming what is wrong."""
    text = text.strip()
    if "=" not in text:
        text = f"*={text}"
    limits: dict[str, float] = {}
    for item in text.split(","):
        kind, sep, value = (part.strip() for part in item.partition("="))
        if not sep or not kind:
            raise ValueError(f"expected kind=seconds, got {item.strip()!r}")
        try:
            seconds = float(value)
        except ValueError:
            raise ValueError(f"{kind}: {value!r} is not a number of seconds") from None
        if not 0 < seconds <= MAX_SECONDS:
            raise ValueError(
                f"{kind}: the limit must be a positive number of seconds, at most 100 years"
            )
        limits[kind] = seconds
    return limits


def known_variables() -> set[str]:
    """Every environment variable ondoki reads."""
    fields = {env_name(f.name) for f in msgspec.structs.fields(Settings)}
    return fields | {"ONDOKI_CONFIG"}


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """A warning for each `ONDOKI_*` variable that is no setting (a typo is otherwise
    silently ignored), naming the closest known variable."""
    known = known_variables()
    # Compared without the prefix they all share, which would make anything look close.
    suffixes = sorted(name[7:] for name in known if name.startswith("ONDOKI_"))
    warnings = []
    for name in sorted(environ):
        if not name.startswith("ONDOKI_") or name in known or name in _RENAMED:
            continue
        close = difflib.get_close_matches(name[7:], suffixes, n=1, cutoff=0.6)
        hint = f"; did you mean ONDOKI_{close[0]}?" if close else ""
        warnings.append(f"{name} is not a setting and is ignored{hint}")
    return warnings


def env_name(field: str) -> str:
    """The environment variable that sets `field`."""
    return _SEED_NAMES.get(field) or _OTHER_NAMES.get(field) or f"ONDOKI_{field.upper()}"


def with_db(url: str, db: int) -> str:
    """`url` pointing at database `db` (a redis:// path, or unix://'s `db=` query). A
    `db=` query parameter is dropped: redis-py would prefer it to the path."""
    base, _, query = url.partition("?")
    params = [p for p in query.split("&") if p and not p.startswith("db=")]
    if base.startswith("unix://"):
        return f"{base}?{'&'.join([*params, f'db={db}'])}"
    scheme, _, rest = base.partition("://")
    hostpart = rest.split("/", 1)[0]
    rest_query = f"?{'&'.join(params)}" if params else ""
    return f"{scheme}://{hostpart}/{db}{rest_query}"


# What a value must look like, for the settings checked by a pattern (msgspec would quote
# the regular expression).
_SHAPES = {
    "host": "must be a host name or an IP address",
    "namespace": "must be 1-32 letters, digits, '_', '.' or '-'",
}


def _problem(error: msgspec.ValidationError, field: str | None = None) -> str:
    # msgspec says "Expected `int`, got `str` - at `$.port`"; the variable is named apart.
    problem = str(error).split(" - at `", 1)[0]
    if "matching regex" in problem and field in _SHAPES:
        return _SHAPES[field]
    return problem


def flag_name(field: str) -> str:
    """The command-line flag that overrides `field` (`ondoki serve --port`)."""
    return "--" + field.replace("_", "-")


def load_settings(
    environ: Mapping[str, str] | None = None,
    *,
    config_file: str | Path | None = None,
    flags: Mapping[str, str | None] | None = None,
) -> Settings:
    """Settings from `config_file` (TOML; default `$ONDOKI_CONFIG` or configs/ondoki.toml
    when it exists), then the environment, then command-line `flags` (field name -> the
    flag's raw text, None when not given), each winning over the one before. Every value
    is validated the same way; a bad one raises `ConfigError` naming its variable or flag."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}

    path = config_file or environ.get("ONDOKI_CONFIG")
    if path is None and DEFAULT_CONFIG.is_file():
        path = DEFAULT_CONFIG
    if path is not None:
        values.update(_read_toml(Path(path)))

    for old, new in _RENAMED.items():
        if environ.get(old):
            raise ConfigError(old, f"is no longer read: set {new} instead")
    fields = {f.name for f in msgspec.structs.fields(Settings)}
    for field in fields:
        raw = environ.get(env_name(field))
        if raw is None or raw == "":
            continue
        value: str | list[str] = raw
        if field in _LIST_FIELDS:
            value = [part.strip() for part in raw.split(",") if part.strip()]
        values[field] = _validated(env_name(field), field, value)
    for field, raw in (flags or {}).items():
        if field not in fields:
            raise ValueError(f"no setting named {field!r}")
        if raw is not None:
            values[field] = _validated(flag_name(field), field, raw)

    settings = msgspec.convert(values, Settings, strict=False)
    _check(settings)
    return settings


def _validated(name: str, field: str, raw: str | list[str]) -> str | list[str]:
    """`raw` if it is a valid value of `field`, else a `ConfigError` naming `name`."""
    try:
        msgspec.convert({field: raw}, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(name, _problem(exc, field)) from None
    return raw


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError("ONDOKI_CONFIG", f"cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("ONDOKI_CONFIG", f"{path} is not valid TOML: {exc}") from None
    try:
        msgspec.convert(data, Settings)
    except msgspec.ValidationError as exc:
        where = str(exc).rsplit("`$.", 1)[-1].rstrip("`") if "`$." in str(exc) else "?"
        raise ConfigError(f"{path} [{where}]", _problem(exc, where)) from None
    return data


def _check(settings: Settings) -> None:
    for field in _SEED_NAMES:
        url = getattr(settings, field)
        if url is not None and not url.startswith(_REDIS_SCHEMES):
            raise ConfigError(
                env_name(field),
                f"must be a redis://, rediss:// or unix:// URL, got {redact_url(url)}",
            )
        if url is not None:
            _check_url(env_name(field), url)
            _check_query(env_name(field), url)
    if settings.redis_url is None:
        for field, url in (
            ("broker_url", settings.broker_url),
            ("result_backend", settings.result_backend),
        ):
            if url:
                raise ConfigError(
                    env_name(field),
                    "the Redis job settings need REDIS_URL set as well (set both or neither)",
                )
    if settings.database_url is not None:
        _check_database_url(settings.database_url)
    if settings.api_key is not None and len(settings.api_key) < 16:
        raise ConfigError("ONDOKI_API_KEY", "must be at least 16 characters")
    if settings.env == "production":
        _check_production(settings)
    _check_browser(settings)
    if settings.worker_requeue_interval_seconds * 2 > settings.worker_heartbeat_timeout_seconds:
        raise ConfigError(
            "ONDOKI_WORKER_REQUEUE_INTERVAL_SECONDS",
            "must be at most half of ONDOKI_WORKER_HEARTBEAT_TIMEOUT_SECONDS",
        )
    try:
        settings.job_time_limits  # noqa: B018 -- parsed to be checked
    except ValueError as exc:
        raise ConfigError("ONDOKI_JOB_TIME_LIMIT_SECONDS", str(exc)) from None
    if settings.session_ttl_seconds > settings.session_max_ttl_seconds:
        raise ConfigError(
            "ONDOKI_SESSION_TTL_SECONDS", "is larger than ONDOKI_SESSION_MAX_TTL_SECONDS"
        )
    if settings.state_ttl_seconds > settings.state_max_ttl_seconds:
        raise ConfigError("ONDOKI_STATE_TTL_SECONDS", "is larger than ONDOKI_STATE_MAX_TTL_SECONDS")
    if settings.max_concurrent_uploads_per_user > settings.max_concurrent_uploads:
        raise ConfigError(
            "ONDOKI_MAX_CONCURRENT_UPLOADS_PER_USER", "is larger than ONDOKI_MAX_CONCURRENT_UPLOADS"
        )
    if settings.ws_send_buffer_bytes < settings.notification_max_bytes:
        raise ConfigError(
            "ONDOKI_WS_SEND_BUFFER_BYTES",
            "is smaller than ONDOKI_NOTIFICATION_MAX_BYTES (one event would close its clients)",
        )


_ORIGIN = re.compile(
    r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?$|^https?://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$"
)


def _check_browser(settings: Settings) -> None:
    for origin in settings.cors_origins:
        if origin == "*":
            if settings.env == "production":
                raise ConfigError(
                    "ONDOKI_CORS_ORIGINS",
                    "`*` is allowed in development only; list the origins of your web apps",
                )
        elif not _ORIGIN.match(origin):
            raise ConfigError(
                "ONDOKI_CORS_ORIGINS",
                f"{origin[:64]!r} is not an origin (expected scheme://host[:port], no path)",
            )
    key = settings.url_signing_key
    if key is not None and len(key) < 32:
        raise ConfigError("ONDOKI_URL_SIGNING_KEY", "must be at least 32 characters")


def _check_url(variable: str, url: str) -> None:
    # The value is never echoed: a malformed URL is often a password that needs encoding.
    problem = (
        "is not a valid Redis URL (expected redis://[user:password@]host[:port][/db]; "
        "percent-encode special characters of the password, e.g. / as %2F)"
    )
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError for a port that is not a number
    except ValueError:
        raise ConfigError(variable, problem) from None
    if parts.scheme == "unix":
        if not parts.path:
            raise ConfigError(variable, "a unix:// URL needs the socket's path")
        return
    db = parts.path.lstrip("/")
    if not parts.hostname or (db and not (db.isascii() and db.isdigit())):
        raise ConfigError(variable, problem)


def _check_database_url(url: str) -> None:
    # Never echoed either: only the redacted form, for the same reason as Redis URLs.
    if not url.startswith(_DATABASE_SCHEMES):
        raise ConfigError(
            "DATABASE_URL",
            f"must be a postgresql:// URL (postgresql://user:password@host:5432/db), got "
            f"{redact_url(url)}",
        )
    try:
        urlsplit(url).port  # noqa: B018 -- raises ValueError for a port that is not a number
    except ValueError:
        raise ConfigError(
            "DATABASE_URL",
            "is not a valid PostgreSQL URL (expected postgresql://user:password@host:5432/db; "
            "percent-encode special characters of the password)",
        ) from None


def _check_query(variable: str, url: str) -> None:
    scheme = urlsplit(url).scheme
    allowed = _URL_PARAMETERS | (_TLS_PARAMETERS if scheme == "rediss" else frozenset())
    for name, value in parse_qsl(urlsplit(url).query, keep_blank_values=True):
        if name in _OWN_PARAMETERS:
            raise ConfigError(
                variable,
                f"sets {name!r} in the URL; ondoki sets it for every Redis client "
                "(see ONDOKI_REDIS_TIMEOUT_SECONDS): remove it from the URL",
            )
        if name not in allowed:
            known = ", ".join(sorted(allowed))
            raise ConfigError(
                variable, f"has an unknown query parameter {name[:32]!r} (known: {known})"
            )
        if not value:
            raise ConfigError(variable, f"has an empty {name!r} query parameter")
        if name == "db" and not (value.isascii() and value.isdigit()):
            raise ConfigError(variable, "has a db query parameter that is not a number")


def _has_password(url: str) -> bool:
    query = parse_qsl(urlsplit(url).query, keep_blank_values=True)
    return url_password(url) is not None or any(n == "password" and v for n, v in query)


def weak_api_key(key: str) -> str | None:
    """Why `key` is too weak for production, or None. A production key is at least
    `PRODUCTION_API_KEY_CHARS` characters, carries at least 128 bits by a generous
    estimate (length x log2 of its distinct characters), and is no short string repeated."""
    if len(key) < PRODUCTION_API_KEY_CHARS:
        return f"is {len(key)} characters; production needs at least {PRODUCTION_API_KEY_CHARS}"
    if len(key) * math.log2(max(2, len(set(key)))) < 128 or key in (key + key)[1:-1]:
        return "is too predictable (repeated or few distinct characters)"
    return None


def _check_production(settings: Settings) -> None:
    """Production refuses what is fine on a laptop: each refusal names its variable."""
    if settings.api_key is None:
        raise ConfigError(
            "ONDOKI_API_KEY",
            f"is required when ONDOKI_ENV=production; make one with: {API_KEY_RECIPE}",
        )
    weakness = weak_api_key(settings.api_key)
    if weakness is not None:
        raise ConfigError("ONDOKI_API_KEY", f"{weakness}; make one with: {API_KEY_RECIPE}")
    if settings.redis_url is None:
        raise ConfigError(
            "REDIS_URL",
            "is required when ONDOKI_ENV=production (the in-memory adapters keep sessions, "
            "notifications and jobs inside one process)",
        )
    if settings.url_signing_key is None:
        raise ConfigError(
            "ONDOKI_URL_SIGNING_KEY",
            "is required when ONDOKI_ENV=production (every instance must sign frame URLs "
            "with the same key)",
        )
    for field in _SEED_NAMES:
        url = getattr(settings, field)
        if url is not None and not settings.allow_passwordless_redis and not _has_password(url):
            raise ConfigError(
                env_name(field),
                f"has no password ({redact_url(url)}); put one in the URL, or set "
                "ONDOKI_ALLOW_PASSWORDLESS_REDIS=true if the network is private",
            )
    if settings.database_url is None and not settings.allow_ephemeral_sessions:
        raise ConfigError(
            "DATABASE_URL",
            "is required when ONDOKI_ENV=production (without it sessions live only in Redis "
            "and a Redis restart logs everyone out); set ONDOKI_ALLOW_EPHEMERAL_SESSIONS=true "
            "to accept that",
        )
