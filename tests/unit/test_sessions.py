"""Sessions with a durable store behind the cache: reads, misses, sliding persistence, the
absolute lifetime, and what each failure does (memory adapters, a controllable clock)."""

from __future__ import annotations

import math

import pytest

from ondoki.domain.sessions import Sessions, session_id
from ondoki.errors import CacheError, InvalidInput, SessionStoreError, Unauthorized
from ondoki.ports.sessions import StoredSession
from ondoki_adapters.memory.cache import MemoryCache
from ondoki_adapters.memory.sessions import MemorySessionStore

pytestmark = pytest.mark.anyio

TTL = 600.0
INTERVAL = 60.0
ABSOLUTE = 3600.0


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class FlakyCache(MemoryCache):
    """A memory cache that can be switched off (every call raises `CacheError`)."""

    down = False

    def _check(self) -> None:
        if self.down:
            raise CacheError("cache is down")

    async def get(self, key: str, *, refresh_ttl: float | None = None) -> bytes | None:
        self._check()
        return await super().get(key, refresh_ttl=refresh_ttl)

    async def set(self, key: str, value: bytes, *, ttl: float | None = None) -> None:
        self._check()
        await super().set(key, value, ttl=ttl)

    async def delete(self, *keys: str) -> int:
        self._check()
        return await super().delete(*keys)

    async def touch(self, key: str, ttl: float | None = None) -> bool:
        self._check()
        return await super().touch(key, ttl)


class FlakyStore(MemorySessionStore):
    """A memory store that can be switched off, and counts its writes."""

    down = False
    extends = 0
    extend_attempts = 0

    def _check(self) -> None:
        if self.down:
            raise SessionStoreError("database is down")

    async def create(self, session: StoredSession) -> None:
        self._check()
        await super().create(session)

    async def get(self, session_id: str, *, now: float) -> StoredSession | None:
        self._check()
        return await super().get(session_id, now=now)

    async def extend(self, session_id: str, expires_at: float, *, now: float) -> bool:
        self.extend_attempts += 1
        self._check()
        self.extends += 1
        return await super().extend(session_id, expires_at, now=now)

    async def delete(self, session_id: str) -> bool:
        self._check()
        return await super().delete(session_id)


class World:
    def __init__(self, *, store: bool = True) -> None:
        self.clock = Clock()
        self.cache = FlakyCache(clock=self.clock)
        self.store = FlakyStore() if store else None
        self.sessions = Sessions(
            self.cache,
            store=self.store,
            ttl=TTL,
            max_ttl=10 * TTL,
            max_data_bytes=4096,
            absolute_ttl=ABSOLUTE,
            persist_interval=INTERVAL,
            clock=self.clock,
        )

    def restart_cache(self) -> None:
        """Redis restarted without persistence: every key is gone."""
        self.cache = FlakyCache(clock=self.clock)
        self.sessions.cache = self.cache


@pytest.fixture
def world() -> World:
    return World()


async def test_create_is_durable_and_cached(world: World) -> None:
    token, expires = await world.sessions.create("alice", {"role": "editor"})
    assert expires == world.clock.now + TTL
    assert world.store is not None
    stored = await world.store.get(session_id(token), now=world.clock.now)
    assert stored is not None and stored.user_id == "alice"
    assert stored.absolute_expires_at == world.clock.now + ABSOLUTE
    assert await world.cache.get(session_id(token)) is not None
    # The token itself is stored nowhere.
    assert token not in repr(stored)


async def test_a_lost_cache_logs_nobody_out(world: World) -> None:
    token, _ = await world.sessions.create("alice", {"k": 1})
    world.restart_cache()
    session, _ = await world.sessions.get(token)
    assert session.user_id == "alice" and session.data == {"k": 1}
    # ...and the session is cached again: the next read does not need the store.
    assert world.store is not None
    world.store.down = True
    assert (await world.sessions.get(token))[0].user_id == "alice"


async def test_ended_session_stays_dead_after_the_cache_is_lost(world: World) -> None:
    token, _ = await world.sessions.create("alice")
    assert await world.sessions.end(token)
    world.restart_cache()
    with pytest.raises(Unauthorized):
        await world.sessions.get(token)


async def test_expired_session_stays_dead_after_the_cache_is_lost(world: World) -> None:
    token, _ = await world.sessions.create("alice", ttl=3)
    world.clock.now += 4
    world.restart_cache()
    with pytest.raises(Unauthorized):
        await world.sessions.get(token)


async def test_sliding_expiry_is_persisted_at_most_every_interval(world: World) -> None:
    assert world.store is not None
    token, _ = await world.sessions.create("alice")
    for _ in range(50):  # 50 requests within one interval: no database write
        world.clock.now += INTERVAL / 60
        await world.sessions.get(token)
    assert world.store.extends == 0
    world.clock.now += INTERVAL / 2
    await world.sessions.get(token)
    assert world.store.extends == 1
    for _ in range(10):
        world.clock.now += 1
        await world.sessions.get(token)
    assert world.store.extends == 1


async def test_a_session_shorter_than_the_interval_slides_in_the_store_too(
    world: World,
) -> None:
    # TTL 30 s, persist interval 60 s: before, the first store write was due after 60 s of
    # sliding, when the stored expiry had passed: the write found no session and the
    # client, busy all along, was logged out.
    token, _ = await world.sessions.create("alice", ttl=INTERVAL / 2)
    for _ in range(60):  # a request every 5 s for 5 minutes
        world.clock.now += 5
        await world.sessions.get(token)
    world.restart_cache()  # and Redis restarts: the store alone still knows the session
    world.clock.now += 5
    session, _ = await world.sessions.get(token)
    assert session.user_id == "alice"


@pytest.mark.parametrize(
    "data",
    [{"note": "a\x00b"}, {"a\x00": 1}, {"deep": [[{"x": ["\x00"]}]]}],
)
async def test_session_data_with_a_nul_character_is_refused(
    world: World, data: dict[str, object]
) -> None:
    # PostgreSQL's jsonb refuses U+0000: it was a 503 blaming the database there, and
    # stored by the memory store.
    with pytest.raises(InvalidInput, match="NUL"):
        await world.sessions.create("alice", data)
    assert world.store is not None and await world.store.purge_expired(now=math.inf) == 0


class _LogoutDuring(FlakyStore):
    """A store during whose next read (or sliding-expiry write) the session is ended, by
    another request: the logout lands between that read and the cache refill after it."""

    sessions: Sessions | None = None
    token = ""
    during = ""

    async def _logout(self, during: str) -> None:
        if self.during == during and self.sessions is not None:
            self.during = ""
            assert await self.sessions.end(self.token)

    async def get(self, session_id: str, *, now: float) -> StoredSession | None:
        found = await super().get(session_id, now=now)
        await self._logout("get")
        return found

    async def extend(self, session_id: str, expires_at: float, *, now: float) -> bool:
        alive = await super().extend(session_id, expires_at, now=now)
        await self._logout("extend")
        return alive


@pytest.mark.parametrize("during", ["get", "extend"])
async def test_a_logout_racing_a_cache_refill_stays_a_logout(during: str) -> None:
    # Before: the request refilled the cache after the logout had deleted the session from
    # both; the token then worked again, until the next persist (up to an interval).
    world = World()
    store = _LogoutDuring()
    world.store = world.sessions.store = store
    token, _ = await world.sessions.create("alice")
    store.sessions, store.token = world.sessions, token
    if during == "get":
        world.restart_cache()  # the next read misses the cache and reads the store
    else:
        world.clock.now += INTERVAL  # the next read persists its sliding expiry
    store.during = during
    with pytest.raises(Unauthorized):
        await world.sessions.get(token)
    with pytest.raises(Unauthorized):
        await world.sessions.get(token)
    assert await world.cache.get(session_id(token)) is None


async def test_losing_the_cache_costs_at_most_one_interval_of_sliding(world: World) -> None:
    token, _ = await world.sessions.create("alice")
    # Used every 10 s for 50 minutes: well past the first TTL.
    for _ in range(300):
        world.clock.now += 10
        _, expires = await world.sessions.get(token)
    world.restart_cache()
    assert world.store is not None
    stored = await world.store.get(session_id(token), now=world.clock.now)
    assert stored is not None
    assert expires - stored.expires_at <= INTERVAL
    # Idle until just before the persisted expiry: still logged in.
    world.clock.now = stored.expires_at - 1
    await world.sessions.get(token)


async def test_absolute_lifetime_ends_a_session_that_keeps_sliding(world: World) -> None:
    token, _ = await world.sessions.create("alice")
    end = world.clock.now + ABSOLUTE
    last = 0.0
    while world.clock.now + 300 < end:
        world.clock.now += 300
        _, last = await world.sessions.get(token)
        assert last <= end
    assert last == end
    world.clock.now = end
    with pytest.raises(Unauthorized):
        await world.sessions.get(token)
    world.restart_cache()
    with pytest.raises(Unauthorized):
        await world.sessions.get(token)


async def test_absolute_lifetime_without_a_store() -> None:
    world = World(store=False)
    token, _ = await world.sessions.create("alice")
    end = world.clock.now + ABSOLUTE
    while world.clock.now + 300 < end:
        world.clock.now += 300
        _, expires = await world.sessions.get(token)
    assert expires == end
    world.clock.now = end
    with pytest.raises(Unauthorized):
        await world.sessions.get(token)


async def test_database_down_cached_sessions_work_but_create_and_end_refuse(
    world: World,
) -> None:
    assert world.store is not None
    token, _ = await world.sessions.create("alice")
    world.store.down = True
    for _ in range(5):  # across a persist interval: the failed write is not fatal
        world.clock.now += INTERVAL
        assert (await world.sessions.get(token))[0].user_id == "alice"
    with pytest.raises(SessionStoreError):
        await world.sessions.create("bob")
    with pytest.raises(SessionStoreError):
        await world.sessions.end(token)
    # The refused logout did not happen: the session still works, and ends once the
    # database is back.
    assert (await world.sessions.get(token))[0].user_id == "alice"
    world.store.down = False
    assert await world.sessions.end(token)
    with pytest.raises(Unauthorized):
        await world.sessions.get(token)


async def test_a_store_that_fails_is_not_asked_on_every_request(world: World) -> None:
    assert world.store is not None
    token, _ = await world.sessions.create("alice")
    world.store.down = True
    world.clock.now += INTERVAL
    await world.sessions.get(token)
    assert world.store.extend_attempts == 1
    for _ in range(20):
        world.clock.now += 1
        await world.sessions.get(token)
    assert world.store.extend_attempts == 1
    world.store.down = False
    world.clock.now += 30
    await world.sessions.get(token)
    assert world.store.extend_attempts == 2 and world.store.extends == 1


async def test_database_down_uncached_session_is_unknowable(world: World) -> None:
    assert world.store is not None
    token, _ = await world.sessions.create("alice")
    world.restart_cache()
    world.store.down = True
    with pytest.raises(SessionStoreError):
        await world.sessions.get(token)


async def test_cache_down_falls_back_to_the_store(world: World) -> None:
    token, _ = await world.sessions.create("alice")
    world.cache.down = True
    assert (await world.sessions.get(token))[0].user_id == "alice"
    # Creating works too: the session is durable, the cache fills at the next read.
    other, _ = await world.sessions.create("bob")
    assert (await world.sessions.get(other))[0].user_id == "bob"
    world.cache.down = False
    assert (await world.sessions.get(other))[0].user_id == "bob"


async def test_logout_with_the_cache_down_is_refused_and_can_be_repeated(world: World) -> None:
    token, _ = await world.sessions.create("alice")
    world.cache.down = True
    with pytest.raises(CacheError):
        await world.sessions.end(token)
    world.cache.down = False
    await world.sessions.end(token)
    with pytest.raises(Unauthorized):
        await world.sessions.get(token)


async def test_session_ended_elsewhere_is_refused_at_the_next_persist(world: World) -> None:
    assert world.store is not None
    token, _ = await world.sessions.create("alice")
    await world.store.delete(session_id(token))  # another instance, whose cache delete was lost
    world.clock.now += INTERVAL
    with pytest.raises(Unauthorized):
        await world.sessions.get(token)
    assert await world.cache.get(session_id(token)) is None


async def test_without_a_store_sessions_live_in_the_cache_only() -> None:
    world = World(store=False)
    token, _ = await world.sessions.create("alice")
    assert (await world.sessions.get(token))[0].user_id == "alice"
    world.restart_cache()
    with pytest.raises(Unauthorized):
        await world.sessions.get(token)
    world.cache.down = True
    with pytest.raises(CacheError):
        await world.sessions.get(token)
