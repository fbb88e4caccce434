"""`ondoki doctor`: check the configured Redis servers the way an operator needs them."""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import anyio
import msgspec
import redis.asyncio as aioredis
import redis.exceptions as rex

from ondoki.support.redact import redact_url, url_password
from ondoki.support.settings import Settings
from ondoki_adapters.redis.connection import connect, describe

Severity = Literal["ok", "info", "warning", "error"]
MIN_VERSION = (7, 0)
TIMEOUT = 3.0


class Finding(msgspec.Struct):
    """One check's outcome; `fix` says what to do about anything but `ok`."""

    target: str
    check: str
    severity: Severity
    message: str
    fix: str | None = None


@dataclass
class Target:
    name: str  # "cache" (REDIS_URL) or "broker" (CELERY_BROKER_URL)
    url: str

    @property
    def server(self) -> tuple[str, int | None, str]:
        parts = urlsplit(self.url)
        return (parts.hostname or "", parts.port, parts.path if parts.scheme == "unix" else "")


def targets(settings: Settings) -> list[Target]:
    found = []
    if settings.redis_url is not None:
        found.append(Target("cache", settings.redis_url))
    if settings.broker is not None:
        found.append(Target("broker", settings.broker))
    return found


async def diagnose(settings: Settings) -> list[Finding]:
    """Every finding, for every configured Redis; nothing here changes the servers."""
    if settings.redis_url is None:
        return [
            Finding(
                "memory",
                "adapters",
                "info",
                "REDIS_URL is unset: the in-memory adapters need no checks (one process only)",
                "set REDIS_URL to run on Redis and scale out",
            )
        ]
    found = targets(settings)
    shared = len({t.server for t in found}) < len(found)
    findings: list[Finding] = []
    for target in found:
        findings += await _check_target(target, settings, shared=shared)
    findings += [
        Finding("settings", "compatibility", "info", note, "nothing to do; unset it to quiet this")
        for note in settings.compatibility_notes
    ]
    return findings


async def _check_target(target: Target, settings: Settings, *, shared: bool) -> list[Finding]:
    findings: list[Finding] = []

    def add(check: str, severity: Severity, message: str, fix: str | None = None) -> None:
        findings.append(Finding(target.name, check, severity, message, fix))

    client = connect(target.url, timeout=TIMEOUT, client_name="ondoki-doctor")
    where = redact_url(target.url)
    try:
        try:
            with anyio.fail_after(TIMEOUT * 2):
                await client.ping()
        except rex.AuthenticationError:
            add(
                "auth",
                "error",
                f"{where}: authentication failed",
                "check the password (or ACL user and password) in the URL",
            )
            return findings
        except (rex.ConnectionError, rex.TimeoutError, TimeoutError, OSError) as exc:
            add(
                "reachable",
                "error",
                f"{where}: {describe(exc)}",
                "check host, port and network; is redis-server running?",
            )
            return findings
        except rex.ResponseError as exc:
            if "HELLO" in str(exc):
                add(
                    "resp3",
                    "error",
                    f"{where}: the server refuses HELLO 3 ({describe(exc)}); ondoki's Redis "
                    "clients speak RESP3 (redis-py on asyncio, coredis on trio)",
                    "upgrade to Redis 6 or newer (7 recommended); if HELLO is renamed or "
                    "denied by an ACL, allow it (ACL SETUSER <user> +hello)",
                )
                return findings
            add(
                "reachable",
                "error",
                f"{where}: {describe(exc)}",
                "check the database number in the URL (Redis has 16 by default)",
            )
            return findings
        if url_password(target.url) is None:
            add("reachable", "ok", f"{where} answers (no password: none was checked)")
        else:
            add("reachable", "ok", f"{where} answers, credentials accepted")
        # The client above opened its connection with HELLO 3, as the service's do.
        add("resp3", "ok", "HELLO 3 accepted (RESP3, which both event loops' clients speak)")

        info = await _optional(client.info)
        await _version(info, add)
        if target.name == "cache":
            await _pubsub(client, settings, add)
        config = await _config(client)
        if config is None:
            add(
                "config",
                "warning",
                "CONFIG GET is not allowed for this user (managed Redis?)",
                "check maxmemory-policy, persistence and client-output-buffer-limit in your "
                "provider's settings against docs/operations.md",
            )
        else:
            _memory(target, config, shared, add)
            _persistence(target, config, info, add)
            if target.name == "cache":
                _buffers(config, add)
    finally:
        await client.aclose()
    return findings


Add = Callable[[str, Severity, str, str | None], None]


async def _optional(call: Callable[[], Awaitable[Any]]) -> Any:
    try:
        with anyio.fail_after(TIMEOUT):
            return await call()
    except (rex.NoPermissionError, rex.ResponseError):
        return None


async def _version(info: Any, add: Add) -> None:
    if not info:
        add(
            "version",
            "warning",
            "INFO is not allowed for this user; cannot read the version",
            "make sure the server runs Redis 7 or newer",
        )
        return
    text = str(info.get("redis_version", "0"))
    version = tuple(int(p) for p in text.split(".")[:2] if p.isdigit())
    if version >= MIN_VERSION:
        add("version", "ok", f"Redis {text}", None)
    else:
        add(
            "version",
            "error",
            f"Redis {text} is older than 7.0",
            "upgrade to Redis 7 (ondoki uses GETEX, streams with explicit IDs, ACL selectors)",
        )


async def _pubsub(client: aioredis.Redis, settings: Settings, add: Add) -> None:
    channel = f"{settings.namespace}:notify:doctor-{secrets.token_hex(4)}"
    pubsub = client.pubsub()
    try:
        with anyio.fail_after(TIMEOUT):
            await pubsub.subscribe(channel)
            await client.publish(channel, b"ping")
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
                if message is not None and message.get("data") == b"ping":
                    break
    except rex.NoPermissionError as exc:
        add(
            "pubsub",
            "error",
            f"pub/sub is not allowed: {exc}",
            f"grant the ACL user +subscribe +publish and &{settings.namespace}:* "
            "(or use a server that supports pub/sub; some proxies do not)",
        )
    except (TimeoutError, rex.RedisError) as exc:
        add(
            "pubsub",
            "error",
            f"no pub/sub round trip: {exc or 'timed out'}",
            "notifications need Redis pub/sub; check proxies between ondoki and Redis",
        )
    else:
        add("pubsub", "ok", "published and received a message", None)
    finally:
        close: Callable[[], Awaitable[None]] = pubsub.aclose
        await close()


async def _config(client: aioredis.Redis) -> dict[str, str] | None:
    try:
        with anyio.fail_after(TIMEOUT):
            raw = await client.config_get("*")
    except (rex.NoPermissionError, rex.ResponseError, TimeoutError):
        return None
    return {str(k): str(v) for k, v in raw.items()}


def _memory(target: Target, config: dict[str, str], shared: bool, add: Add) -> None:
    policy = config.get("maxmemory-policy", "noeviction")
    maxmemory = int(config.get("maxmemory", "0") or 0)
    # On a shared instance the broker's finding covers the queue keys; the cache's covers
    # the cache, so an eviction risk is reported once.
    holds_queue = target.name == "broker"
    if holds_queue and policy.startswith("allkeys-"):
        add(
            "eviction",
            "error",
            f"maxmemory-policy {policy} can evict queued jobs (queue keys have no TTL)"
            + (" on the instance shared by the cache and the broker" if shared else ""),
            "use a broker instance with noeviction (configs/redis/redis-broker.conf), or on one shared "
            "instance maxmemory-policy volatile-lru: every ondoki cache key has a TTL",
        )
    elif holds_queue:
        add("eviction", "ok", f"maxmemory-policy {policy} never evicts queue keys", None)
    elif policy == "noeviction" and maxmemory:
        add(
            "eviction",
            "warning",
            "noeviction on the cache: writes fail once maxmemory is reached",
            "use allkeys-lru or volatile-lru on a cache-only instance",
        )
    else:
        add("eviction", "ok", f"maxmemory-policy {policy}", None)
    if maxmemory == 0 and target.name == "cache":
        add(
            "maxmemory",
            "warning",
            "maxmemory is 0: the cache can grow until the host runs out",
            "set maxmemory (configs/redis/redis-cache.conf and redis-broker.conf use 256mb)",
        )
    elif maxmemory:
        add("maxmemory", "ok", f"maxmemory {maxmemory // (1024 * 1024)} MiB", None)


def _persistence(target: Target, config: dict[str, str], info: Any, add: Add) -> None:
    aof = config.get("appendonly") == "yes"
    rdb = bool(config.get("save", "").strip())
    what = "AOF" if aof else ("RDB snapshots" if rdb else "none")
    if target.name == "broker" and not aof:
        add(
            "persistence",
            "warning" if not rdb else "info",
            f"{what}; queued jobs {'are lost' if not rdb else 'since the last snapshot are lost'} "
            "if Redis restarts",
            "opt in to AOF on the broker (appendonly yes, appendfsync everysec; "
            "docs/operations.md)",
        )
    else:
        add("persistence", "ok", what, None)


def _buffers(config: dict[str, str], add: Add) -> None:
    parts = config.get("client-output-buffer-limit", "").split()
    limits = dict(
        zip(parts[0::4], zip(parts[1::4], parts[2::4], parts[3::4], strict=False), strict=False)
    )
    hard = int(limits.get("pubsub", ("0", "0", "0"))[0])
    if hard == 0:
        add(
            "pubsub-buffer",
            "warning",
            "client-output-buffer-limit pubsub has no hard limit: a stuck subscriber can use "
            "unbounded server memory",
            "client-output-buffer-limit pubsub 32mb 8mb 60 (the Redis default)",
        )
    elif hard < 8 * 1024 * 1024:
        add(
            "pubsub-buffer",
            "warning",
            f"client-output-buffer-limit pubsub hard limit {hard} bytes: notification bursts may "
            "disconnect ondoki's subscriber (it repairs from history, at a cost)",
            "client-output-buffer-limit pubsub 32mb 8mb 60",
        )
    else:
        add(
            "pubsub-buffer",
            "ok",
            f"pubsub output buffer hard limit {hard // (1024 * 1024)} MiB",
            None,
        )


def render(findings: list[Finding]) -> str:
    lines = []
    for f in findings:
        lines.append(f"{f.severity.upper():<8}{f.target}: {f.check}: {f.message}")
        if f.fix and f.severity != "ok":
            lines.append(f"{'':8}fix: {f.fix}")
    errors = sum(f.severity == "error" for f in findings)
    warnings = sum(f.severity == "warning" for f in findings)
    lines.append(f"{errors} error(s), {warnings} warning(s)")
    return "\n".join(lines)


def to_json(findings: list[Finding]) -> bytes:
    return msgspec.json.encode(findings)


async def eviction_warning(broker_url: str, *, shared: bool) -> str | None:
    """A warning when the broker's server may evict queue keys; None when it cannot (or the
    policy cannot be read: `ondoki doctor` says more)."""
    client = connect(broker_url, timeout=TIMEOUT, client_name="ondoki-startup-check")
    try:
        config = await _config(client)
    except (rex.RedisError, OSError):
        return None
    finally:
        await client.aclose()
    if config is None:
        return None
    findings: list[Finding] = []

    def add(check: str, severity: Severity, message: str, fix: str | None = None) -> None:
        findings.append(Finding("broker", check, severity, message, fix))

    _memory(Target("broker", broker_url), config, shared, add)
    for f in findings:
        if f.severity == "error":
            return f"{f.message}; fix: {f.fix}"
    return None
