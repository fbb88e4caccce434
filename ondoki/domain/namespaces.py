"""Key namespaces over any Cache: each part of the service keeps to its own prefix."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ondoki.ports.cache import Cache


class NamespacedCache:
    """A Cache whose keys all live under `prefix`; it is itself a Cache.

    Namespaces nest (`NamespacedCache(NamespacedCache(c, "a:"), "b:")` uses `a:b:`), and one
    namespace never sees or deletes another's keys.
    """

    def __init__(self, cache: Cache, prefix: str) -> None:
        if not prefix:
            raise ValueError("a namespace needs a non-empty prefix")
        self.cache = cache
        self.prefix = prefix

    def _key(self, key: str) -> str:
        return self.prefix + key

    async def get(self, key: str, *, refresh_ttl: float | None = None) -> bytes | None:
        return await self.cache.get(self._key(key), refresh_ttl=refresh_ttl)

    async def set(self, key: str, value: bytes, *, ttl: float | None = None) -> None:
        await self.cache.set(self._key(key), value, ttl=ttl)

    async def set_if_absent(self, key: str, value: bytes, *, ttl: float | None = None) -> bool:
        return await self.cache.set_if_absent(self._key(key), value, ttl=ttl)

    async def delete(self, *keys: str) -> int:
        return await self.cache.delete(*map(self._key, keys))

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        return await self.cache.get_many([self._key(key) for key in keys])

    async def set_many(self, items: Mapping[str, bytes], *, ttl: float | None = None) -> None:
        await self.cache.set_many({self._key(k): v for k, v in items.items()}, ttl=ttl)

    async def increment(self, key: str, amount: int = 1, *, ttl: float | None = None) -> int:
        return await self.cache.increment(self._key(key), amount, ttl=ttl)

    async def touch(self, key: str, ttl: float | None = None) -> bool:
        return await self.cache.touch(self._key(key), ttl)

    async def ttl(self, key: str) -> float | None:
        return await self.cache.ttl(self._key(key))

    async def ping(self) -> None:
        await self.cache.ping()

    async def aclose(self) -> None:
        # The underlying cache belongs to whoever built it; a view closes nothing.
        return None
