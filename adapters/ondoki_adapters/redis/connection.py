"""Building redis-py clients and turning their failures into ondoki's errors."""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
import redis.asyncio as aioredis
import redis.exceptions as rex
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.maint_notifications import MaintNotificationsConfig
from redis.retry import Retry as BlockingRetry

from ondoki.errors import BackendError, ConfigError
from ondoki.support.deadline import allowance
from ondoki.support.redact import redact_url

T = TypeVar("T")

# Errors after which a command may not have reached the server, or its reply was lost.
_TRANSIENT = (rex.ConnectionError, rex.TimeoutError)
# ConnectionError subclasses that no retry can fix.
_PERMANENT = (rex.AuthenticationError, rex.AuthorizationError)


class WaitingConnectionPool(aioredis.ConnectionPool):
    """redis-py's pool, but a caller finding every connection in use waits (up to
    `wait_timeout`) for one to come back instead of failing with "Too many connections".

    The fast path is the plain pool's: redis-py's BlockingConnectionPool makes every call
    pay for a condition and a queue (measured: 16% slower GETs), for the rare burst.
    """

    def __init__(self, *args: Any, wait_timeout: float = 5.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.wait_timeout = wait_timeout

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        deadline = time.monotonic() + self.wait_timeout
        pause = 0.001
        get: Callable[..., Awaitable[Any]] = super().get_connection
        while True:
            try:
                return await get(*args, **kwargs)
            except rex.MaxConnectionsError:
                if time.monotonic() >= deadline:
                    raise
                await anyio.sleep(pause)
                pause = min(pause * 2, 0.05)


def client_options(
    *, timeout: float, client_name: str, blocking: bool = False, reply_timeout: bool = True
) -> dict[str, Any]:
    """The options of every Redis client ondoki makes, asyncio or blocking, pooled or the
    pub/sub connection (which copies its pool's): one timeout for connecting and for each
    reply, and no redis-py retries: it would replay non-idempotent commands such as INCRBY
    after a lost reply. The adapters retry what is safe to repeat (see `call`). `blocking`
    for redis-py's synchronous client (dramatiq's).

    `reply_timeout=False` leaves out the timeout for each reply, for an asyncio client
    whose every command runs under `call`'s deadline, which already bounds writes, replies
    and pool waits: with one set, redis-py writes each command in a task of its own
    (`asyncio.wait_for`, before Python 3.12), which measured about 30 us of CPU and one more
    turn of the event loop before the command leaves, on every command."""
    return {
        "socket_timeout": timeout if reply_timeout else None,
        "socket_connect_timeout": timeout,
        "client_name": client_name,
        "retry": (BlockingRetry if blocking else Retry)(NoBackoff(), 0),
        "health_check_interval": 15,
        # Off: redis-py 8 takes its default ("auto") as on, and then skips the pool's check
        # for a connection the server closed while it sat idle, so the first command after a
        # Redis restart failed (fatal for a publish, which cannot be retried).
        "maint_notifications_config": MaintNotificationsConfig(enabled=False),
    }


def connect(
    url: str,
    *,
    db: int | None = None,
    timeout: float = 5.0,
    client_name: str = "ondoki",
    max_connections: int = 64,
    reply_timeout: bool = True,
) -> aioredis.Redis:
    """An asyncio client for `url`; `db` overrides the URL's database number;
    `reply_timeout` as in `client_options`.

    Its pool waits for a free connection (up to `timeout`) when `max_connections` are in
    use, instead of failing: a burst of clients connecting at once must wait, not be
    refused (measured: 87 of 1,000 WebSockets closed with "Too many connections" otherwise).
    """
    options: dict[str, Any] = {
        **client_options(timeout=timeout, client_name=client_name, reply_timeout=reply_timeout),
        "max_connections": max_connections,
        "wait_timeout": timeout,
    }
    if db is not None:
        options["db"] = db
    try:
        pool = WaitingConnectionPool.from_url(url, **options)
    except ValueError:
        # Settings validate URLs first; never echo one here (it may hold a password).
        raise ConfigError("REDIS_URL", f"not a usable Redis URL: {redact_url(url)}") from None
    return aioredis.Redis.from_pool(pool)


def milliseconds(seconds: float) -> int:
    """`seconds` as whole milliseconds for Redis (PX, PEXPIRE, ...): at least 1, since 0
    would mean no expiry or an error there."""
    return max(1, round(seconds * 1000))


def describe(exc: BaseException) -> str:
    """A one-line account of a redis-py error, free of secrets."""
    if isinstance(exc, rex.AuthenticationError):
        return "authentication failed (check the password or ACL user in the URL)"
    if isinstance(exc, rex.NoPermissionError | rex.AuthorizationError):
        return f"permission denied by the server's ACL: {exc}"
    if isinstance(exc, rex.TimeoutError):
        return "timed out waiting for Redis"
    if isinstance(exc, rex.BusyLoadingError):
        return "Redis is loading its dataset"
    if isinstance(exc, rex.ConnectionError):
        return f"cannot reach Redis: {exc}"
    return f"{type(exc).__name__}: {exc}"


async def call(
    operation: Callable[[], Awaitable[T]],
    *,
    error: type[BackendError],
    what: str,
    idempotent: bool,
    deadline: float,
    attempts: int = 3,
    backoff: float = 0.05,
) -> T:
    """Run one Redis operation, retrying transient failures when it is safe to repeat.

    Non-idempotent operations are tried once: a lost reply could otherwise apply them twice.
    Waiting for a pooled connection, every attempt and the pauses between them share one
    deadline: `deadline` seconds, or less when the request's budget
    (`ondoki.support.deadline`) has less left. Any redis-py error, and the deadline, end as
    `error`, with a message that names `what` failed.
    """
    limit, budget = allowance(deadline)
    started = anyio.current_time()
    try:
        # A bare cancel scope: `fail_after` wraps the same in a generator (3-4 us a call).
        # Only its deadline can cancel it, so leaving it without a result means that.
        with anyio.CancelScope(deadline=started + limit):
            return await _attempts(operation, error, what, idempotent, attempts, backoff)
    except TimeoutError:  # a driver's own timeout that escaped as the builtin one
        pass
    finally:
        if budget is not None:
            budget.spend(anyio.current_time() - started)
    raise error(f"{what}: no answer from Redis within {limit:g} s")


async def _attempts(
    operation: Callable[[], Awaitable[T]],
    error: type[BackendError],
    what: str,
    idempotent: bool,
    attempts: int,
    backoff: float,
) -> T:
    tries = attempts if idempotent else 1
    for attempt in range(1, tries + 1):
        try:
            return await operation()
        except _PERMANENT as exc:
            raise error(f"{what}: {describe(exc)}") from None
        except _TRANSIENT as exc:
            if attempt == tries:
                raise error(f"{what}: {describe(exc)}") from None
            # Full jitter keeps many instances from reconnecting in lockstep.
            await anyio.sleep(random.uniform(0, backoff * 2**attempt))
        except rex.RedisError as exc:
            raise error(f"{what}: {describe(exc)}") from None
    raise AssertionError("unreachable")


def wait_out(
    function: Callable[[], T],
    *,
    what: str,
    errors: tuple[type[rex.RedisError], ...],
    stopping: threading.Event,
    log: logging.Logger,
    patience: float = math.inf,
) -> T:
    """Run blocking `function`, waiting out `errors` (a warning each time, then 0.1 s,
    doubling up to 5 s) until it succeeds, `stopping` is set, or `patience` seconds would
    pass; then the last error is raised. A failed authentication is never waited out."""
    delay = 0.1
    deadline = time.monotonic() + patience
    while True:
        try:
            return function()
        except errors as exc:
            if (
                stopping.is_set()
                or isinstance(exc, rex.AuthenticationError)
                or time.monotonic() + delay > deadline
            ):
                raise
            log.warning("%s: %s; retrying in %.1fs", what, describe(exc), delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def call_blocking(
    operation: Callable[[], T],
    *,
    error: type[BackendError],
    what: str,
    idempotent: bool,
    attempts: int = 3,
    backoff: float = 0.05,
) -> T:
    """`call` for redis-py's blocking client (code that is not async): the same retries of
    what is safe to repeat, the same errors; the client's own timeouts bound each attempt."""
    tries = attempts if idempotent else 1
    for attempt in range(1, tries + 1):
        try:
            return operation()
        except _PERMANENT as exc:
            raise error(f"{what}: {describe(exc)}") from None
        except _TRANSIENT as exc:
            if attempt == tries:
                raise error(f"{what}: {describe(exc)}") from None
            time.sleep(random.uniform(0, backoff * 2**attempt))
        except rex.RedisError as exc:
            raise error(f"{what}: {describe(exc)}") from None
    raise AssertionError("unreachable")
