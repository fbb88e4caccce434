"""The composition root: the one place that reads settings and wires adapters to the core."""

from __future__ import annotations

import logging
import secrets
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import anyio
import sniffio

from ondoki.cache import NamespacedCache
from ondoki.errors import ConfigError, OndokiError
from ondoki.ports.cache import Cache
from ondoki.redact import redact_url
from ondoki.services import Services
from ondoki.sessions import Sessions
from ondoki.settings import Settings
from ondoki.state import TemporaryState

log = logging.getLogger("ondoki")


def resolve_api_key(settings: Settings) -> str:
    """The configured API key; in development a generated one (printed), never in production."""
    if settings.api_key is not None:
        return settings.api_key
    if settings.env == "production":
        raise ConfigError("ONDOKI_API_KEY", "is required when ONDOKI_ENV=production")
    key = secrets.token_urlsafe(24)
    # Printed, not logged: the operator needs it once, log collectors never should.
    print(f"ondoki: development API key (set ONDOKI_API_KEY to choose one): {key}", file=sys.stderr)
    return key


def check_backend(settings: Settings) -> None:
    """Refuse combinations that cannot work, before anything is opened."""
    if settings.uses_redis and sniffio.current_async_library() == "trio":
        raise ConfigError(
            "REDIS_URL",
            "the Redis adapters need asyncio (redis-py has no trio support); "
            "use --worker-class asyncio or uvloop, or unset REDIS_URL for the memory adapters",
        )


def build_cache(settings: Settings) -> Cache:
    if settings.redis_url is None:
        from adapters.memory.cache import MemoryCache

        return MemoryCache(
            max_entries=settings.memory_cache_max_entries,
            max_bytes=settings.memory_cache_max_bytes,
            default_ttl=settings.cache_default_ttl_seconds,
        )
    from adapters.redis.cache import RedisCache

    return RedisCache(
        settings.redis_url,
        default_ttl=settings.cache_default_ttl_seconds,
        timeout=settings.redis_timeout_seconds,
    )


@asynccontextmanager
async def open_services(
    settings: Settings, *, api_key: str | None = None, cache: Cache | None = None
) -> AsyncIterator[Services]:
    """Open every adapter the settings ask for (or use the ones given), yield the services,
    and close everything in reverse order on the way out, whatever happened."""
    check_backend(settings)
    async with AsyncExitStack() as stack, anyio.create_task_group() as tasks:
        if cache is None:
            cache = build_cache(settings)
            stack.push_async_callback(cache.aclose)
        await _report_reachability(settings, cache)
        ns = settings.namespace
        services = Services(
            settings=settings,
            api_key=api_key if api_key is not None else resolve_api_key(settings),
            cache=cache,
            sessions=Sessions(
                NamespacedCache(cache, f"{ns}:session:"),
                ttl=settings.session_ttl_seconds,
                max_ttl=settings.session_max_ttl_seconds,
                max_data_bytes=settings.state_max_bytes,
            ),
            state=TemporaryState(
                NamespacedCache(cache, f"{ns}:state:"),
                ttl=settings.state_ttl_seconds,
                max_ttl=settings.state_max_ttl_seconds,
                max_bytes=settings.state_max_bytes,
            ),
            parts={"cache": cache},
        )
        yield services
        tasks.cancel_scope.cancel()


async def _report_reachability(settings: Settings, cache: Cache) -> None:
    # An unreachable Redis at start-up is not fatal: the service starts, /readyz says 503
    # and requests succeed again as soon as Redis is back (an orchestrator restarts nothing).
    if settings.redis_url is None:
        log.info("using in-memory adapters (REDIS_URL is unset)")
        return
    where = redact_url(settings.redis_url)
    try:
        with anyio.fail_after(settings.redis_timeout_seconds):
            await cache.ping()
    except (OndokiError, TimeoutError) as exc:
        log.warning("Redis at %s is not answering yet: %s", where, exc)
    else:
        log.info("using Redis at %s", where)
