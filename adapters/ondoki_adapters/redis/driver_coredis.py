"""`CoredisDriver`: the Redis driver on trio, over coredis 6 (anyio-native, RESP3 only).

coredis is configured without retries (the adapters decide what is safe to repeat), and its
errors are raised as redis-py's classes (see `ondoki_adapters.redis.driver`).

coredis's pool runs every connection in a task group that must stay open while the pool is
used, and a trio task group can only be closed by the task that opened it. Adapters are
built and used without a task group of their own (a cache has no `run`), so the driver
opens its pool in a trio system task on first use and closes it on `aclose` (or when the
trio run ends). Pub/sub connections run in that task group too.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio
import coredis
import coredis.exceptions as cex
import redis.exceptions as rex
import trio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from coredis.commands.request import CommandRequest
from coredis.connection import BaseConnection
from coredis.retry import NoRetryPolicy

from ondoki.errors import ConfigError
from ondoki.support.redact import redact_url
from ondoki_adapters.redis.driver import Command, EvalScript, PubSubConnection

log = logging.getLogger("ondoki.redis")


def translate(exc: BaseException) -> BaseException:
    """coredis's (or the transport's) error as the redis-py error the adapters classify."""
    message = str(exc)
    if isinstance(exc, cex.AuthenticationError):
        return rex.AuthenticationError(message)
    if isinstance(exc, cex.AuthorizationError):
        return rex.NoPermissionError(message)
    if isinstance(exc, cex.NoScriptError):
        return rex.NoScriptError(message)
    if isinstance(exc, cex.ResponseError):
        return rex.ResponseError(message)
    if isinstance(exc, cex.BusyLoadingError):
        return rex.BusyLoadingError(message)
    if isinstance(exc, TimeoutError):
        return rex.TimeoutError(message or "timed out")
    if isinstance(exc, cex.ConnectionError | OSError | anyio.BrokenResourceError):
        return rex.ConnectionError(message or type(exc).__name__)
    if isinstance(exc, cex.RedisError):
        return rex.RedisError(message)
    return exc


def _request(command: Sequence[Any]) -> CommandRequest[Any]:
    name = command[0]
    return CommandRequest(
        name.encode() if isinstance(name, str) else name, *command[1:], execution_parameters={}
    )


class CoredisDriver:
    """`Driver` on coredis, for trio (it works on asyncio too, but redis-py is faster there)."""

    def __init__(
        self,
        url: str,
        *,
        db: int | None = None,
        timeout: float = 5.0,
        client_name: str = "ondoki",
        max_connections: int = 64,
    ) -> None:
        options: dict[str, Any] = {
            "stream_timeout": timeout,
            "connect_timeout": timeout,
            # A caller finding every connection in use waits up to `timeout` for one.
            "pool_timeout": timeout,
            "client_name": client_name,
            "max_connections": max_connections,
            "retry_policy": NoRetryPolicy(),
            "decode_responses": False,
            # The adapters send only commands every supported server has.
            "verify_version": False,
        }
        if db is not None:
            options["db"] = db
        try:
            self.client: coredis.Redis[bytes] = coredis.Redis.from_url(url, **options)
        except ValueError:
            # Settings validate URLs first; never echo one here (it may hold a password).
            raise ConfigError("REDIS_URL", f"not a usable Redis URL: {redact_url(url)}") from None
        self._ready = False
        self._started: trio.Event | None = None
        self._stop = trio.Event()
        self._stopped = trio.Event()
        self._tasks: TaskGroup | None = None
        self._failure: BaseException | None = None
        self.execute: Callable[..., Awaitable[Any]] = self._execute

    # -- the pool's lifetime ---------------------------------------------------------------

    async def _open(self) -> None:
        if self._started is None:
            self._started = trio.Event()
            trio.lowlevel.spawn_system_task(self._hold, name="ondoki redis pool")
        await self._started.wait()
        if self._failure is not None:
            raise rex.ConnectionError(f"the connection pool failed: {self._failure}")
        if self._stop.is_set():
            raise rex.ConnectionError("the Redis driver is closed")

    async def _hold(self) -> None:
        assert self._started is not None
        try:
            async with self.client, anyio.create_task_group() as self._tasks:
                self._ready = True
                self._started.set()
                await self._stop.wait()
                self._tasks.cancel_scope.cancel()
        except Exception as exc:  # a system task must not raise: it would end the trio run
            self._failure = exc
            log.warning("the Redis connection pool stopped: %s", exc)
        finally:
            self._ready = False
            self._tasks = None
            self._started.set()
            self._stopped.set()

    async def aclose(self) -> None:
        self._stop.set()
        if self._started is not None:
            await self._stopped.wait()

    # -- commands --------------------------------------------------------------------------

    async def _execute(self, *command: Any) -> Any:
        if not self._ready:
            await self._open()
        try:
            return await self.client.execute_command(_request(command))
        except Exception as exc:
            raise translate(exc) from None

    async def transaction(self, commands: Sequence[Command]) -> list[Any]:
        if not self._ready:
            await self._open()
        try:
            async with self.client.pipeline(transaction=True, raise_on_error=False) as pipe:
                requests = [
                    pipe.create_request(*_split(command), callback=_as_is) for command in commands
                ]
        except Exception as exc:
            raise translate(exc) from None
        replies: list[Any] = []
        for request in requests:
            try:
                replies.append(await request)
            except cex.ResponseError as exc:
                replies.append(translate(exc))
            except Exception as exc:
                raise translate(exc) from None
        return replies

    def script(self, source: str) -> EvalScript:
        return EvalScript(self.execute, source)

    # -- pub/sub ---------------------------------------------------------------------------

    async def open_pubsub(self, connect_within: float) -> PubSubConnection:
        if not self._ready:
            await self._open()
        assert self._tasks is not None
        pool = self.client.connection_pool
        connection = pool.connection_class(pool.location, **pool.connection_kwargs)
        try:
            with anyio.fail_after(connect_within):
                await self._tasks.start(connection.run)
        except BaseException as exc:
            connection.invalidate()
            if isinstance(exc, Exception):
                raise translate(exc) from None
            raise
        opened = _CoredisPubSub(connection)
        self._tasks.start_soon(opened.forward_pushes)
        self._tasks.start_soon(opened.forward_replies)
        return opened


def _as_is(reply: Any, **_: Any) -> Any:
    return reply


def _split(command: Command) -> tuple[Any, ...]:
    name = command[0]
    return (name.encode() if isinstance(name, str) else name, *command[1:])


class _CoredisPubSub:
    """A RESP3 connection: pub/sub messages and acks arrive as pushes, the PING answer as an
    ordinary reply; both are forwarded, in order of arrival, to one inbox that ends (and
    `receive` raises) when the connection is lost."""

    def __init__(self, connection: BaseConnection) -> None:
        self._connection = connection
        inbox: tuple[MemoryObjectSendStream[Any], MemoryObjectReceiveStream[Any]]
        inbox = anyio.create_memory_object_stream(math.inf)
        self._send, self._inbox = inbox
        self._lost: str = "connection lost"

    async def _forward(self, source: Any) -> None:
        try:
            # aclosing: a generator left open would be finalized by the garbage collector.
            async with contextlib.aclosing(source) as items:
                async for item in items:
                    await self._send.send(item)
        except Exception as exc:
            self._lost = str(translate(exc)) or "connection lost"
        finally:
            self._send.close()
            self._connection.invalidate()

    async def forward_pushes(self) -> None:
        await self._forward(self._connection.push_messages)

    async def forward_replies(self) -> None:
        await self._forward(self._connection.streamed_messages)

    async def send(self, command: str, *args: Any) -> None:
        try:
            self._connection.send_command(command.encode(), *args)
        except Exception as exc:
            raise translate(exc) from None
        await anyio.lowlevel.checkpoint()

    async def receive(self) -> list[Any] | bytes:
        try:
            item: list[Any] | bytes | Exception = await self._inbox.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            raise rex.ConnectionError(self._lost) from None
        if isinstance(item, Exception):
            # An error reply to a command sent without a request (a refused SUBSCRIBE).
            raise translate(item)
        return item

    async def aclose(self) -> None:
        self._connection.invalidate()
        self._send.close()
        self._inbox.close()
