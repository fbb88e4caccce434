"""`MemoryCache`: a bounded LRU cache with per-key TTLs, in one process."""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence

from ondoki.errors import InvalidInput

# Rough per-entry overhead (dict slot, tuple, key object), counted so that a cache of many
# tiny values is bounded as well as one of a few large ones.
_ENTRY_OVERHEAD = 100
# What Redis accepts as an integer for INCRBY: no spaces, no "+", no leading zeros.
_INTEGER = re.compile(rb"-?(0|[1-9][0-9]{0,18})")


class MemoryCache:
    """The Cache port in memory, like Redis with `maxmemory` and `allkeys-lru`.

    Bounded by `max_entries` and `max_bytes` (keys, values and an estimated overhead); when
    a write would exceed either, least-recently-used keys are evicted first. Expired keys
    are dropped when touched and swept as eviction walks the LRU order.
    """

    def __init__(
        self,
        *,
        max_entries: int = 100_000,
        max_bytes: int = 64 * 1024 * 1024,
        default_ttl: float = 86_400.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_entries < 1 or max_bytes < 1 or default_ttl <= 0:
            raise ValueError("max_entries, max_bytes and default_ttl must be positive")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.default_ttl = default_ttl
        self._clock = clock
        # key -> (value, expires_at); order is least- to most-recently used.
        self._entries: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self._bytes = 0
        self.evictions = 0

    # -- helpers ---------------------------------------------------------------------------

    def _deadline(self, ttl: float | None) -> float:
        if ttl is None:
            ttl = self.default_ttl
        if not ttl > 0:
            raise InvalidInput(f"ttl must be a positive number of seconds, got {ttl!r}")
        return self._clock() + ttl

    @staticmethod
    def _size(key: str, value: bytes) -> int:
        return len(key) + len(value) + _ENTRY_OVERHEAD

    def _live(self, key: str) -> tuple[bytes, float] | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[1] <= self._clock():
            self._remove(key)
            return None
        return entry

    def _remove(self, key: str) -> bool:
        entry = self._entries.pop(key, None)
        if entry is None:
            return False
        self._bytes -= self._size(key, entry[0])
        return True

    def _store(self, key: str, value: bytes, expires_at: float) -> None:
        size = self._size(key, value)
        if size > self.max_bytes:
            raise InvalidInput(f"value of {len(value)} bytes is larger than the whole cache")
        self._remove(key)
        self._make_room(size)
        self._entries[key] = (value, expires_at)
        self._bytes += size

    def _make_room(self, size: int) -> None:
        now = self._clock()
        while self._entries and (
            len(self._entries) >= self.max_entries or self._bytes + size > self.max_bytes
        ):
            key, (_, expires_at) = next(iter(self._entries.items()))
            self._remove(key)
            if expires_at > now:
                self.evictions += 1

    # -- the port --------------------------------------------------------------------------

    async def get(self, key: str, *, refresh_ttl: float | None = None) -> bytes | None:
        entry = self._live(key)
        if entry is None:
            return None
        if refresh_ttl is not None:
            self._entries[key] = (entry[0], self._deadline(refresh_ttl))
        self._entries.move_to_end(key)
        return entry[0]

    async def set(self, key: str, value: bytes, *, ttl: float | None = None) -> None:
        self._store(key, bytes(value), self._deadline(ttl))

    async def set_if_absent(self, key: str, value: bytes, *, ttl: float | None = None) -> bool:
        deadline = self._deadline(ttl)
        if self._live(key) is not None:
            return False
        self._store(key, bytes(value), deadline)
        return True

    async def delete(self, *keys: str) -> int:
        return sum(1 for key in keys if self._live(key) is not None and self._remove(key))

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        return [await self.get(key) for key in keys]

    async def set_many(self, items: Mapping[str, bytes], *, ttl: float | None = None) -> None:
        deadline = self._deadline(ttl)
        total = sum(self._size(key, value) for key, value in items.items())
        if total > self.max_bytes:
            raise InvalidInput(f"{len(items)} values of {total} bytes are larger than the cache")
        for key, value in items.items():
            self._store(key, bytes(value), deadline)

    async def increment(self, key: str, amount: int = 1, *, ttl: float | None = None) -> int:
        entry = self._live(key)
        if entry is None:
            new, deadline = amount, self._deadline(ttl)
        else:
            if not _INTEGER.fullmatch(entry[0]):
                raise InvalidInput(f"the value at {key!r} is not an integer")
            new = int(entry[0]) + amount
            deadline = entry[1]
        self._store(key, str(new).encode(), deadline)
        return new

    async def touch(self, key: str, ttl: float | None = None) -> bool:
        entry = self._live(key)
        if entry is None:
            return False
        self._entries[key] = (entry[0], self._deadline(ttl))
        self._entries.move_to_end(key)
        return True

    async def ttl(self, key: str) -> float | None:
        entry = self._live(key)
        return None if entry is None else entry[1] - self._clock()

    async def ping(self) -> None:
        return None

    async def aclose(self) -> None:
        self._entries.clear()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)
