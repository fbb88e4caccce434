"""`RedisCache`: the Cache port on a Redis database (DB 0 by default)."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import redis.asyncio as aioredis
import redis.exceptions as rex

from ondoki.errors import CacheError, InvalidInput
from ondoki_adapters.redis.connection import call, milliseconds
from ondoki_adapters.redis.driver import Driver, driver_for

T = TypeVar("T")


def _ms(seconds: float) -> int:
    if not seconds > 0:
        raise InvalidInput(f"ttl must be a positive number of seconds, got {seconds!r}")
    return milliseconds(seconds)


class RedisCache:
    """The Cache port on Redis: one round trip per operation, many-key calls pipelined.

    Pass an already-built redis-py `client` (asyncio only; its database is used as it is) or
    a `url` (its database unless `db` says otherwise), which gets the driver of the running
    event loop (`ondoki_adapters.redis.driver`). Bounded size and LRU eviction are the server's job (`maxmemory`
    with a `*-lru` policy); every key gets a TTL, so `volatile-lru` evicts only cache keys.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        client: aioredis.Redis | None = None,
        db: int | None = None,
        default_ttl: float = 86_400.0,
        timeout: float = 5.0,
    ) -> None:
        self.driver: Driver = driver_for(
            "RedisCache", url, client, db=db, timeout=timeout, bytes_replies=False
        )
        self.default_ttl = default_ttl
        #: The longest one operation (retries and pool waits included) may take.
        self.timeout = timeout

    def _px(self, ttl: float | None) -> int:
        return _ms(self.default_ttl if ttl is None else ttl)

    async def _run(
        self, what: str, operation: Callable[[], Awaitable[T]], *, idempotent: bool = True
    ) -> T:
        return await call(
            operation, error=CacheError, what=what, idempotent=idempotent, deadline=self.timeout
        )

    async def _command(self, what: str, *args: Any, idempotent: bool = True) -> Any:
        execute = self.driver.execute
        return await self._run(what, lambda: execute(*args), idempotent=idempotent)

    async def get(self, key: str, *, refresh_ttl: float | None = None) -> bytes | None:
        if refresh_ttl is None:
            value = await self._command("cache get", "GET", key)
        else:
            value = await self._command("cache get", "GETEX", key, "PX", _ms(refresh_ttl))
        return None if value is None else bytes(value)

    async def set(self, key: str, value: bytes, *, ttl: float | None = None) -> None:
        await self._command("cache set", "SET", key, value, "PX", self._px(ttl))

    async def set_if_absent(self, key: str, value: bytes, *, ttl: float | None = None) -> bool:
        # Retrying after a lost reply could report False for our own write; try once.
        stored = await self._command(
            "cache set_if_absent", "SET", key, value, "PX", self._px(ttl), "NX", idempotent=False
        )
        return stored is not None and stored is not False

    async def delete(self, *keys: str) -> int:
        if not keys:
            return 0
        return int(await self._command("cache delete", "UNLINK", *keys))

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        values = await self._command("cache get_many", "MGET", *keys)
        return [None if value is None else bytes(value) for value in values]

    async def set_many(self, items: Mapping[str, bytes], *, ttl: float | None = None) -> None:
        if not items:
            return
        px = self._px(ttl)

        async def write() -> None:
            # MULTI/EXEC: one round trip, and readers never see half of the items.
            replies = await self.driver.transaction(
                [("SET", key, value, "PX", px) for key, value in items.items()]
            )
            for reply in replies:
                if isinstance(reply, rex.ResponseError):
                    raise reply

        await self._run("cache set_many", write)

    async def increment(self, key: str, amount: int = 1, *, ttl: float | None = None) -> int:
        px = self._px(ttl)

        async def incr() -> Any:
            # The SET NX gives a new key its TTL; an existing key keeps its own.
            return await self.driver.transaction(
                [("SET", key, b"0", "PX", px, "NX"), ("INCRBY", key, amount)]
            )

        _, result = await self._run("cache increment", incr, idempotent=False)
        if isinstance(result, rex.ResponseError):
            raise InvalidInput(f"the value at {key!r} is not an integer")
        return int(result)

    async def touch(self, key: str, ttl: float | None = None) -> bool:
        return bool(await self._command("cache touch", "PEXPIRE", key, self._px(ttl)))

    async def ttl(self, key: str) -> float | None:
        ms = int(await self._command("cache ttl", "PTTL", key))
        if ms == -2:
            return None
        # -1 (no TTL) only happens for keys written by something other than this adapter.
        return math.inf if ms == -1 else ms / 1000

    async def ping(self) -> None:
        await self._command("cache ping", "PING")

    async def aclose(self) -> None:
        await self.driver.aclose()
