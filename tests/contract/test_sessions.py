"""The SessionStore port's contract, run against every adapter (see conftest.py)."""

from __future__ import annotations

import math
import time

import anyio
import pytest

from ondoki.errors import InvalidInput
from ondoki.ports.sessions import SessionStore, StoredSession

pytestmark = pytest.mark.anyio


def stored(
    id: str = "a" * 64,
    *,
    now: float,
    ttl: float = 60.0,
    absolute: float = 3600.0,
    user_id: str = "alice",
    data: dict[str, object] | None = None,
) -> StoredSession:
    return StoredSession(
        id=id,
        user_id=user_id,
        data=data if data is not None else {"role": "editor", "n": [1, 2.5, None]},
        created_at=now,
        ttl_seconds=ttl,
        expires_at=now + ttl,
        absolute_expires_at=now + absolute,
    )


async def test_get_returns_what_create_stored(session_store: SessionStore) -> None:
    now = time.time()
    session = stored(now=now, data={"unicode": "clé ü", "nested": {"a": [1, True]}})
    await session_store.create(session)
    found = await session_store.get(session.id, now=now)
    assert found is not None
    assert found.user_id == "alice" and found.data == session.data
    assert found.ttl_seconds == 60.0
    for field in ("created_at", "expires_at", "absolute_expires_at"):
        assert math.isclose(getattr(found, field), getattr(session, field), abs_tol=1e-3)


async def test_unknown_session_is_none(session_store: SessionStore) -> None:
    assert await session_store.get("f" * 64, now=time.time()) is None
    assert not await session_store.delete("f" * 64)
    assert not await session_store.extend("f" * 64, time.time() + 60, now=time.time())


async def test_an_id_is_stored_once(session_store: SessionStore) -> None:
    now = time.time()
    await session_store.create(stored(now=now))
    with pytest.raises(InvalidInput):
        await session_store.create(stored(now=now, user_id="mallory"))
    found = await session_store.get("a" * 64, now=now)
    assert found is not None and found.user_id == "alice"


async def test_expired_session_is_never_returned(session_store: SessionStore) -> None:
    now = time.time()
    await session_store.create(stored(now=now, ttl=10))
    assert await session_store.get("a" * 64, now=now + 9.9) is not None
    assert await session_store.get("a" * 64, now=now + 10.1) is None
    assert not await session_store.extend("a" * 64, now + 100, now=now + 10.1)
    assert await session_store.get("a" * 64, now=now + 10.1) is None


async def test_extend_slides_but_never_past_the_absolute_lifetime(
    session_store: SessionStore,
) -> None:
    now = time.time()
    await session_store.create(stored(now=now, ttl=10, absolute=25))
    assert await session_store.extend("a" * 64, now + 19, now=now + 9)
    found = await session_store.get("a" * 64, now=now + 15)
    assert found is not None and math.isclose(found.expires_at, now + 19, abs_tol=1e-3)
    assert await session_store.extend("a" * 64, now + 40, now=now + 18)
    found = await session_store.get("a" * 64, now=now + 24)
    assert found is not None and math.isclose(found.expires_at, now + 25, abs_tol=1e-3)
    assert await session_store.get("a" * 64, now=now + 25.1) is None


async def test_extend_never_moves_expiry_back(session_store: SessionStore) -> None:
    now = time.time()
    await session_store.create(stored(now=now, ttl=60))
    assert await session_store.extend("a" * 64, now + 5, now=now)
    found = await session_store.get("a" * 64, now=now)
    assert found is not None and math.isclose(found.expires_at, now + 60, abs_tol=1e-3)


async def test_delete_is_final(session_store: SessionStore) -> None:
    now = time.time()
    await session_store.create(stored(now=now))
    assert await session_store.delete("a" * 64)
    assert await session_store.get("a" * 64, now=now) is None
    assert not await session_store.extend("a" * 64, now + 60, now=now)
    assert not await session_store.delete("a" * 64)


async def test_purge_removes_only_expired_sessions(session_store: SessionStore) -> None:
    now = time.time()
    await session_store.create(stored("1" * 64, now=now, ttl=5))
    await session_store.create(stored("2" * 64, now=now, ttl=60, absolute=8))
    await session_store.create(stored("3" * 64, now=now, ttl=60))
    assert await session_store.purge_expired(now=now + 10) == 2
    assert await session_store.get("3" * 64, now=now + 10) is not None
    assert await session_store.purge_expired(now=now + 10) == 0


async def test_concurrent_operations(session_store: SessionStore) -> None:
    now = time.time()

    async def one(n: int) -> None:
        sid = f"{n:064d}"
        await session_store.create(stored(sid, now=now, user_id=f"u{n}"))
        found = await session_store.get(sid, now=now)
        assert found is not None and found.user_id == f"u{n}"
        assert await session_store.delete(sid)

    async with anyio.create_task_group() as tasks:
        for n in range(20):
            tasks.start_soon(one, n)


async def test_ping_answers(session_store: SessionStore) -> None:
    await session_store.ping()
