"""Temporary state's per-user bounds: keys and bytes, each named when refused."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from ondoki.domain.state import TemporaryState
from ondoki.errors import NotFound, TooLarge
from ondoki_adapters.memory.cache import MemoryCache

pytestmark = pytest.mark.anyio


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class YieldingCache(MemoryCache):
    """Gives other tasks a turn in every read, as a network round trip does."""

    async def get(self, key: str, *, refresh_ttl: float | None = None) -> bytes | None:
        value = await super().get(key, refresh_ttl=refresh_ttl)
        await anyio.lowlevel.checkpoint()
        return value


def state(clock: Clock | None = None, **bounds: int) -> TemporaryState:
    clock = clock or Clock()
    return TemporaryState(
        YieldingCache(clock=clock),
        ttl=60,
        max_ttl=600,
        max_bytes=1000,
        max_keys_per_user=bounds.get("keys", 3),
        max_bytes_per_user=bounds.get("bytes", 2500),
        clock=clock,
    )


async def test_key_bound_names_the_limit() -> None:
    s = state()
    for n in range(3):
        await s.put("alice", f"k{n}", b"1")
    with pytest.raises(TooLarge, match="ONDOKI_STATE_MAX_KEYS_PER_USER"):
        await s.put("alice", "k3", b"1")
    # Replacing a key the user holds is no new key; other users have bounds of their own.
    await s.put("alice", "k0", b"2")
    await s.put("bob", "k0", b"1")
    assert await s.get("alice", "k0") == b"2"


async def test_byte_bound_names_the_limit() -> None:
    s = state(keys=10)
    await s.put("alice", "a", b"x" * 1000)
    await s.put("alice", "b", b"x" * 1000)
    with pytest.raises(TooLarge, match="ONDOKI_STATE_MAX_BYTES_PER_USER"):
        await s.put("alice", "c", b"x" * 501)
    await s.put("alice", "c", b"x" * 500)
    # Shrinking a value frees its bytes.
    await s.put("alice", "a", b"x")
    await s.put("alice", "d", b"x" * 999)


async def test_delete_and_expiry_free_room() -> None:
    clock = Clock()
    s = state(clock)
    await s.put("alice", "a", b"1", ttl=10)
    await s.put("alice", "b", b"1", ttl=100)
    await s.put("alice", "c", b"1", ttl=100)
    await s.delete("alice", "c")
    await s.put("alice", "d", b"1")
    clock.now += 11  # "a" expired
    await s.put("alice", "e", b"1")
    with pytest.raises(NotFound):
        await s.get("alice", "a")
    with pytest.raises(NotFound):
        await s.delete("alice", "a")


async def test_concurrent_writes_of_one_user_keep_the_bound() -> None:
    s = state(keys=5, bytes=10_000)
    refused = 0

    async def put(n: int) -> None:
        nonlocal refused
        try:
            await s.put("alice", f"k{n}", b"1")
        except TooLarge:
            refused += 1

    async with anyio.create_task_group() as tasks:
        for n in range(50):
            tasks.start_soon(put, n)
    assert refused == 45
