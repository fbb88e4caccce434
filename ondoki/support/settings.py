"""Settings: read once, at start-up, from the environment and an optional TOML file."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import msgspec

from ondoki.errors import ConfigError
from ondoki.support.redact import redact_url, url_password

Seconds = Annotated[float, msgspec.Meta(gt=0)]
Positive = Annotated[int, msgspec.Meta(ge=1)]

DEFAULT_CONFIG = Path("configs/ondoki.toml")

# Variables whose names predate ondoki (the seed's deployments use them as they are).
_SEED_NAMES = {
    "redis_url": "REDIS_URL",
    "broker_url": "CELERY_BROKER_URL",
    "result_backend": "CELERY_RESULT_BACKEND",
}
_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


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

    host: str = "127.0.0.1"
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

    cache_default_ttl_seconds: Seconds = 86_400.0
    memory_cache_max_entries: Positive = 100_000
    memory_cache_max_bytes: Positive = 64 * 1024 * 1024
    redis_timeout_seconds: Seconds = 5.0

    @property
    def uses_redis(self) -> bool:
        return self.redis_url is not None

    @property
    def broker(self) -> str | None:
        """The job broker URL: `CELERY_BROKER_URL`, else `REDIS_URL` on DB 1, else None."""
        if self.broker_url is not None:
            return self.broker_url
        return None if self.redis_url is None else with_db(self.redis_url, 1)

    @property
    def results(self) -> str | None:
        """The job results URL: `CELERY_RESULT_BACKEND`, else the broker's."""
        return self.result_backend if self.result_backend is not None else self.broker

    def describe(self) -> dict[str, Any]:
        """The settings with every secret redacted, for logs and `doctor`."""
        shown = msgspec.structs.asdict(self)
        for name in _SEED_NAMES:
            if shown[name] is not None:
                shown[name] = redact_url(shown[name])
        if shown["api_key"] is not None:
            shown["api_key"] = "***"
        return shown


# Variables that were read once, and what replaced them: silently ignoring one would leave
# an operator believing it still applies.
_RENAMED = {"ONDOKI_WS_QUEUE_SIZE": "ONDOKI_WS_SEND_BUFFER_BYTES (a bound in bytes)"}


def env_name(field: str) -> str:
    """The environment variable that sets `field`."""
    return _SEED_NAMES.get(field, f"ONDOKI_{field.upper()}")


def with_db(url: str, db: int) -> str:
    """`url` pointing at database `db` (a redis:// path, or unix://'s `db=` query)."""
    base, sep, query = url.partition("?")
    if base.startswith("unix://"):
        params = [p for p in query.split("&") if p and not p.startswith("db=")]
        return f"{base}?{'&'.join([*params, f'db={db}'])}"
    scheme, _, rest = base.partition("://")
    hostpart = rest.split("/", 1)[0]
    return f"{scheme}://{hostpart}/{db}{sep}{query}"


def _problem(error: msgspec.ValidationError) -> str:
    # msgspec says "Expected `int`, got `str` - at `$.port`"; the variable is named apart.
    return str(error).split(" - at `", 1)[0]


def load_settings(
    environ: Mapping[str, str] | None = None, *, config_file: str | Path | None = None
) -> Settings:
    """Settings from `config_file` (TOML; default `$ONDOKI_CONFIG` or configs/ondoki.toml
    when it exists), then the environment, which wins. Raises `ConfigError`."""
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
        try:
            msgspec.convert({field: raw}, Settings, strict=False)
        except msgspec.ValidationError as exc:
            raise ConfigError(env_name(field), _problem(exc)) from None
        values[field] = raw

    settings = msgspec.convert(values, Settings, strict=False)
    _check(settings)
    return settings


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
        raise ConfigError(f"{path} [{where}]", _problem(exc)) from None
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
    if (settings.broker_url or settings.result_backend) and settings.redis_url is None:
        raise ConfigError(
            "CELERY_BROKER_URL",
            "a Redis job broker needs REDIS_URL set as well (set both or neither)",
        )
    if settings.api_key is not None and len(settings.api_key) < 16:
        raise ConfigError("ONDOKI_API_KEY", "must be at least 16 characters")
    if settings.env == "production":
        _check_production(settings)
    if settings.worker_requeue_interval_seconds * 2 > settings.worker_heartbeat_timeout_seconds:
        raise ConfigError(
            "ONDOKI_WORKER_REQUEUE_INTERVAL_SECONDS",
            "must be at most half of ONDOKI_WORKER_HEARTBEAT_TIMEOUT_SECONDS",
        )
    if settings.session_ttl_seconds > settings.session_max_ttl_seconds:
        raise ConfigError(
            "ONDOKI_SESSION_TTL_SECONDS", "is larger than ONDOKI_SESSION_MAX_TTL_SECONDS"
        )
    if settings.state_ttl_seconds > settings.state_max_ttl_seconds:
        raise ConfigError("ONDOKI_STATE_TTL_SECONDS", "is larger than ONDOKI_STATE_MAX_TTL_SECONDS")
    if settings.ws_send_buffer_bytes < settings.notification_max_bytes:
        raise ConfigError(
            "ONDOKI_WS_SEND_BUFFER_BYTES",
            "is smaller than ONDOKI_NOTIFICATION_MAX_BYTES (one event would close its clients)",
        )


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
    if not parts.hostname or (db and not db.isdigit()):
        raise ConfigError(variable, problem)


def _has_password(url: str) -> bool:
    return url_password(url) is not None or "password=" in urlsplit(url).query


def _check_production(settings: Settings) -> None:
    """Production refuses what is fine on a laptop: each refusal names its variable."""
    if settings.api_key is None:
        raise ConfigError("ONDOKI_API_KEY", "is required when ONDOKI_ENV=production")
    if settings.redis_url is None:
        raise ConfigError(
            "REDIS_URL",
            "is required when ONDOKI_ENV=production (the in-memory adapters keep sessions, "
            "notifications and jobs inside one process)",
        )
    if settings.allow_passwordless_redis:
        return
    for field in _SEED_NAMES:
        url = getattr(settings, field)
        if url is not None and not _has_password(url):
            raise ConfigError(
                env_name(field),
                f"has no password ({redact_url(url)}); put one in the URL, or set "
                "ONDOKI_ALLOW_PASSWORDLESS_REDIS=true if the network is private",
            )
