"""Temporary state: small JSON documents per user and key, each with a TTL."""

from __future__ import annotations

import time
from collections.abc import Callable

from ondoki.domain import validation
from ondoki.errors import NotFound, TooLarge
from ondoki.ports.cache import Cache


class TemporaryState:
    """Per-user key/value state in the cache; one user never sees another's keys."""

    def __init__(
        self,
        cache: Cache,
        *,
        ttl: float,
        max_ttl: float,
        max_bytes: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cache = cache
        self.ttl = ttl
        self.max_ttl = max_ttl
        self.max_bytes = max_bytes
        self._clock = clock

    @staticmethod
    def _key(user_id: str, key: str) -> str:
        # User IDs never contain "/", so "u/k" cannot collide across users.
        return f"{validation.user_id(user_id)}/{validation.state_key(key)}"

    async def put(self, user_id: str, key: str, value: bytes, ttl: float | None = None) -> float:
        """Store `value`; return when it expires (epoch seconds)."""
        name = self._key(user_id, key)
        ttl = self.ttl if ttl is None else validation.ttl(ttl, maximum=self.max_ttl)
        if len(value) > self.max_bytes:
            raise TooLarge(f"state value is {len(value)} bytes; the limit is {self.max_bytes}")
        await self.cache.set(name, value, ttl=ttl)
        return self._clock() + ttl

    async def get(self, user_id: str, key: str) -> bytes:
        """The stored value; `NotFound` when absent or expired."""
        value = await self.cache.get(self._key(user_id, key))
        if value is None:
            raise NotFound(f"no state under {key!r}")
        return value

    async def delete(self, user_id: str, key: str) -> None:
        """Remove the value; `NotFound` when there was none."""
        if not await self.cache.delete(self._key(user_id, key)):
            raise NotFound(f"no state under {key!r}")
