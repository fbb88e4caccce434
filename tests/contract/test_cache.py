"""The Cache port's contract, run against every adapter (see conftest.py)."""

from __future__ import annotations

import math

import anyio
import pytest

from ondoki.domain.namespaces import NamespacedCache
from ondoki.errors import InvalidInput
from ondoki.ports.cache import Cache

pytestmark = pytest.mark.anyio


async def test_get_returns_what_set_stored(cache: Cache) -> None:
    await cache.set("k", b"v1")
    assert await cache.get("k") == b"v1"
    await cache.set("k", b"v2")
    assert await cache.get("k") == b"v2"


async def test_missing_key_is_none(cache: Cache) -> None:
    assert await cache.get("absent") is None
    assert await cache.ttl("absent") is None


async def test_values_are_bytes_and_keys_any_text(cache: Cache) -> None:
    value = bytes(range(256)) * 4
    await cache.set("clé:ünïcode/ spaces", value)
    assert await cache.get("clé:ünïcode/ spaces") == value
    await cache.set("empty", b"")
    assert await cache.get("empty") == b""


async def test_every_key_gets_a_ttl(cache: Cache) -> None:
    await cache.set("default", b"x")
    left = await cache.ttl("default")
    assert left is not None and 0 < left < math.inf
    await cache.set("short", b"x", ttl=30)
    left = await cache.ttl("short")
    assert left is not None and 25 < left <= 30


async def test_key_expires_after_its_ttl(cache: Cache) -> None:
    await cache.set("brief", b"x", ttl=0.15)
    assert await cache.get("brief") == b"x"
    await anyio.sleep(0.3)
    assert await cache.get("brief") is None
    assert await cache.ttl("brief") is None


async def test_refresh_ttl_slides_expiry(cache: Cache) -> None:
    await cache.set("sliding", b"x", ttl=0.3)
    for _ in range(3):
        await anyio.sleep(0.15)
        assert await cache.get("sliding", refresh_ttl=0.3) == b"x"
    await anyio.sleep(0.45)
    assert await cache.get("sliding") is None


async def test_touch_resets_ttl_and_reports_absence(cache: Cache) -> None:
    await cache.set("t", b"x", ttl=5)
    assert await cache.touch("t", 100) is True
    left = await cache.ttl("t")
    assert left is not None and left > 90
    assert await cache.touch("nope", 100) is False


@pytest.mark.parametrize("ttl", [0, -1, math.nan])
async def test_bad_ttl_is_refused_and_stores_nothing(cache: Cache, ttl: float) -> None:
    with pytest.raises(InvalidInput):
        await cache.set("k", b"x", ttl=ttl)
    assert await cache.get("k") is None


async def test_set_if_absent_stores_once(cache: Cache) -> None:
    assert await cache.set_if_absent("idem", b"first", ttl=10) is True
    assert await cache.set_if_absent("idem", b"second", ttl=10) is False
    assert await cache.get("idem") == b"first"


async def test_set_if_absent_has_one_winner_under_concurrency(cache: Cache) -> None:
    winners: list[int] = []

    async def claim(n: int) -> None:
        if await cache.set_if_absent("race", str(n).encode(), ttl=10):
            winners.append(n)

    async with anyio.create_task_group() as tasks:
        for n in range(20):
            tasks.start_soon(claim, n)
    assert len(winners) == 1
    assert await cache.get("race") == str(winners[0]).encode()


async def test_set_if_absent_after_expiry_succeeds(cache: Cache) -> None:
    assert await cache.set_if_absent("lease", b"a", ttl=0.1)
    await anyio.sleep(0.25)
    assert await cache.set_if_absent("lease", b"b", ttl=0.1)


async def test_delete_counts_what_existed(cache: Cache) -> None:
    await cache.set_many({"a": b"1", "b": b"2"})
    assert await cache.delete("a", "b", "c") == 2
    assert await cache.get("a") is None
    assert await cache.delete() == 0


async def test_many_calls_keep_order_and_ttl(cache: Cache) -> None:
    await cache.set_many({"m1": b"1", "m2": b"2", "m3": b"3"}, ttl=60)
    assert await cache.get_many(["m3", "absent", "m1"]) == [b"3", None, b"1"]
    left = await cache.ttl("m2")
    assert left is not None and 55 < left <= 60
    assert await cache.get_many([]) == []
    await cache.set_many({})


async def test_increment_counts_from_zero_with_fixed_window(cache: Cache) -> None:
    assert await cache.increment("hits", ttl=30) == 1
    assert await cache.increment("hits", 5, ttl=1000) == 6
    assert await cache.increment("hits", -2) == 4
    left = await cache.ttl("hits")
    # The window is set when the counter is created; later calls do not extend it.
    assert left is not None and left <= 30


async def test_increment_is_atomic(cache: Cache) -> None:
    async def bump() -> None:
        for _ in range(10):
            await cache.increment("counter")

    async with anyio.create_task_group() as tasks:
        for _ in range(10):
            tasks.start_soon(bump)
    assert await cache.get("counter") == b"100"


async def test_increment_of_a_non_integer_is_refused_and_keeps_the_value(cache: Cache) -> None:
    await cache.set("text", b"hello")
    with pytest.raises(InvalidInput):
        await cache.increment("text")
    assert await cache.get("text") == b"hello"


async def test_namespaces_do_not_see_each_other(cache: Cache) -> None:
    left, right = NamespacedCache(cache, "left:"), NamespacedCache(cache, "right:")
    await left.set("k", b"L")
    await right.set("k", b"R")
    assert await left.get("k") == b"L"
    assert await right.get("k") == b"R"
    assert await cache.get("left:k") == b"L"
    assert await right.delete("k") == 1
    assert await left.get("k") == b"L"
    assert await left.increment("n") == 1
    assert await left.get_many(["k", "n"]) == [b"L", b"1"]
    nested = NamespacedCache(left, "inner:")
    await nested.set("x", b"1")
    assert await cache.get("left:inner:x") == b"1"


async def test_ping_answers(cache: Cache) -> None:
    await cache.ping()
