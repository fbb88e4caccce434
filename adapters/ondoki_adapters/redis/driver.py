"""The Redis driver: the few Redis operations the adapters use, on whichever event loop runs.

The adapters (keys, scripts, retries, the pub/sub state machine) are written once, against
`Driver`. Two implementations sit behind it, chosen by the event loop that builds the driver
(`sniffio.current_async_library()`):

- asyncio and uvloop: redis-py's asyncio client (`RedisPyDriver`), the fast path; `execute`
  is the client's own `execute_command`, so it costs nothing over calling redis-py directly;
- trio: coredis (`ondoki_adapters.redis.driver_coredis.CoredisDriver`), anyio-native, RESP3.

Errors: both implementations raise redis-py's exception classes (`redis.exceptions`), so
`connection.call` and `connection.describe` classify failures the same way on both loops.
Replies are bytes (never decoded strings), integers, None and lists, as RESP2 gives them.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import anyio
import redis.asyncio as aioredis
import redis.exceptions as rex
import sniffio

log = logging.getLogger("ondoki.redis")

#: One command and its arguments, for `Driver.transaction`.
Command = tuple[Any, ...]


class Script(Protocol):
    """A Lua script: EVALSHA, falling back to EVAL when the server lost it (NOSCRIPT)."""

    async def __call__(self, keys: Sequence[Any], args: Sequence[Any]) -> Any: ...


class EvalScript:
    """`Script` on any driver's `execute`: EVALSHA, falling back to EVAL (which also caches
    the script) on NOSCRIPT.

    On redis-py this replaces the client's own `register_script`, whose every call costs
    about 15 us more (measured: 120 against 104 us per call of the publish script).
    """

    __slots__ = ("_execute", "_sha", "_source")

    def __init__(self, execute: Callable[..., Awaitable[Any]], source: str) -> None:
        self._execute = execute
        self._source = source
        self._sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(self, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        try:
            return await self._execute("EVALSHA", self._sha, len(keys), *keys, *args)
        except rex.NoScriptError:
            return await self._execute("EVAL", self._source, len(keys), *keys, *args)


class PubSubConnection(Protocol):
    """A connection of its own for pub/sub: commands go out without waiting for replies,
    and everything the server pushes (subscribe acks, messages, pongs) comes back in order.

    `receive` raises `redis.exceptions.ConnectionError` once the connection is lost, so the
    caller notices and repairs; it never reconnects by itself.
    """

    async def send(self, command: str, *args: Any) -> None: ...

    async def receive(self) -> list[Any] | bytes:
        """The next push: `[kind, channel, data]` (kinds `message`, `subscribe`,
        `unsubscribe`) or `[b"pong", ...]` / `b"PONG"` answering `send("PING")`."""
        ...

    async def aclose(self) -> None: ...


class Driver(Protocol):
    """What the Redis adapters need of a client; the contract of both implementations."""

    #: Run one command; its reply.
    execute: Callable[..., Awaitable[Any]]

    async def transaction(self, commands: Sequence[Command]) -> list[Any]:
        """Run `commands` in MULTI/EXEC (one round trip); their replies in order, a
        command's error (`redis.exceptions.ResponseError`) in its place instead of raised."""
        ...

    def script(self, source: str) -> Script:
        """`source` as a callable script (loaded on first use)."""
        ...

    async def open_pubsub(self, connect_within: float) -> PubSubConnection:
        """A new pub/sub connection, outside any pool, connected within `connect_within` seconds."""
        ...

    async def aclose(self) -> None: ...


def running_library() -> str:
    """The async library running now, or "asyncio" outside any event loop."""
    try:
        return sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        return "asyncio"


class RedisPyDriver:
    """`Driver` on a redis-py asyncio client (asyncio and uvloop)."""

    def __init__(self, client: aioredis.Redis, *, owned: bool) -> None:
        self.client = client
        self._owned = owned
        self.execute: Callable[..., Awaitable[Any]] = client.execute_command

    async def transaction(self, commands: Sequence[Command]) -> list[Any]:
        async with self.client.pipeline(transaction=True) as pipe:
            for command in commands:
                pipe.execute_command(*command)
            replies: list[Any] = await pipe.execute(raise_on_error=False)
            return replies

    def script(self, source: str) -> Script:
        return EvalScript(self.execute, source)

    async def open_pubsub(self, connect_within: float) -> PubSubConnection:
        return await _RedisPyPubSub.open(self.client, connect_within)

    async def aclose(self) -> None:
        if self._owned:
            await self.client.aclose()


class _RedisPyPubSub:
    """A redis-py connection made outside the pool: it never goes back to serve commands.
    RESP2 keeps pushed messages in the reply stream this reader parses."""

    def __init__(self, connection: Any) -> None:
        self._connection = connection

    @classmethod
    async def open(cls, client: aioredis.Redis, connect_within: float) -> _RedisPyPubSub:
        pool = client.connection_pool
        options = {**pool.connection_kwargs, "protocol": 2, "health_check_interval": 0}
        connection = pool.connection_class(**options)
        opened = cls(connection)
        try:
            open_connection: Callable[[], Awaitable[None]] = connection.connect
            with anyio.fail_after(connect_within):
                await open_connection()
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                await opened.aclose()
            if isinstance(exc, TimeoutError):
                raise rex.TimeoutError("connecting timed out") from None
            raise
        return opened

    async def send(self, command: str, *args: Any) -> None:
        await self._connection.send_command(command, *args, check_health=False)

    async def receive(self) -> list[Any] | bytes:
        reply: list[Any] | bytes = await self._connection.read_response(timeout=math.inf)
        return reply

    async def aclose(self) -> None:
        try:
            await self._connection.disconnect(nowait=True)
        except (rex.RedisError, OSError) as exc:  # closing a connection that already failed
            log.debug("closing the pub/sub connection: %s", exc)


def open_driver(
    url: str,
    *,
    db: int | None = None,
    timeout: float = 5.0,
    client_name: str = "ondoki",
    max_connections: int = 64,
) -> Driver:
    """A driver for `url` suited to the running event loop (see the module docstring)."""
    if running_library() == "trio":
        from ondoki_adapters.redis.driver_coredis import CoredisDriver

        return CoredisDriver(
            url, db=db, timeout=timeout, client_name=client_name, max_connections=max_connections
        )
    from ondoki_adapters.redis.connection import connect

    # The adapters on a driver run every command under `connection.call`'s deadline.
    client = connect(
        url,
        db=db,
        timeout=timeout,
        client_name=client_name,
        max_connections=max_connections,
        reply_timeout=False,
    )
    return RedisPyDriver(client, owned=True)


def driver_for(
    owner: str,
    url: str | None,
    client: aioredis.Redis | None,
    *,
    db: int | None = None,
    timeout: float = 5.0,
    client_name: str = "ondoki",
    bytes_replies: bool = True,
) -> Driver:
    """The driver an adapter named `owner` runs on: a new one for `url` (the running event
    loop's, see `open_driver`), or one over a caller's redis-py asyncio `client`, which it
    leaves open. `bytes_replies`: refuse a client that decodes replies to text."""
    if client is None:
        if url is None:
            raise ValueError(f"{owner} needs a url or a client")
        return open_driver(url, db=db, timeout=timeout, client_name=client_name)
    if bytes_replies and client.connection_pool.connection_kwargs.get("decode_responses"):
        raise ValueError(f"{owner} needs a client with decode_responses=False")
    return RedisPyDriver(client, owned=False)
