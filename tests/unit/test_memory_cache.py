"""MemoryCache behaviour the contract cannot show on Redis: bounds and LRU order."""

from __future__ import annotations

import pytest

from ondoki.errors import InvalidInput
from ondoki_adapters.memory.cache import MemoryCache

pytestmark = pytest.mark.anyio


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_evicts_least_recently_used_entry_first() -> None:
    cache = MemoryCache(max_entries=3)
    for key in "abc":
        await cache.set(key, b"x")
    await cache.get("a")  # "b" is now the least recently used
    await cache.set("d", b"x")
    assert await cache.get_many(["a", "b", "c", "d"]) == [b"x", None, b"x", b"x"]
    assert len(cache) == 3
    assert cache.evictions == 1


async def test_bounded_by_bytes_as_well_as_entries() -> None:
    cache = MemoryCache(max_entries=1_000, max_bytes=10_000)
    for n in range(100):
        await cache.set(f"k{n}", b"v" * 1_000)
    assert cache._bytes <= 10_000
    assert len(cache) < 10
    assert await cache.get("k99") == b"v" * 1_000


async def test_a_value_larger_than_the_cache_is_refused_and_nothing_is_lost() -> None:
    cache = MemoryCache(max_bytes=2_000)
    await cache.set("keep", b"x")
    with pytest.raises(InvalidInput):
        await cache.set("huge", b"v" * 5_000)
    assert await cache.get("keep") == b"x"


async def test_expiry_follows_the_clock_and_expired_entries_free_room() -> None:
    clock = Clock()
    cache = MemoryCache(max_entries=2, clock=clock)
    await cache.set("old", b"x", ttl=10)
    await cache.set("fresh", b"x", ttl=100)
    clock.now += 11
    assert await cache.get("old") is None
    await cache.set("new", b"x")
    assert await cache.get("fresh") == b"x"
    # "old" expired rather than being evicted while alive.
    assert cache.evictions == 0


async def test_overwrite_replaces_size_accounting() -> None:
    cache = MemoryCache()
    await cache.set("k", b"v" * 1_000)
    await cache.set("k", b"v")
    assert cache._bytes == len("k") + 1 + 100


async def test_increment_keeps_its_window_and_its_place() -> None:
    clock = Clock()
    cache = MemoryCache(clock=clock)
    assert await cache.increment("n", ttl=10) == 1
    clock.now += 5
    assert await cache.increment("n", ttl=10) == 2
    assert await cache.ttl("n") == pytest.approx(5)
    clock.now += 6
    assert await cache.increment("n", ttl=10) == 1


@pytest.mark.parametrize("stored", [b" 1", b"+1", b"01", b"1.0", b"", b"x"])
async def test_increment_refuses_what_redis_refuses(stored: bytes) -> None:
    cache = MemoryCache()
    await cache.set("n", stored)
    with pytest.raises(InvalidInput):
        await cache.increment("n")


def test_bounds_must_be_positive() -> None:
    with pytest.raises(ValueError):
        MemoryCache(max_entries=0)
