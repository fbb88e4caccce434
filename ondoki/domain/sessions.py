"""Sessions: opaque bearer tokens looked up in the cache, with sliding expiry, an absolute
lifetime, and (when a durable store is configured) the store behind the cache.

With a store:

- a read hits the cache first (one round trip); a miss, or a cache that does not answer,
  falls through to the store, and a found session refills the cache;
- create writes the store, then the cache; end deletes from the store, then the cache;
- sliding expiry reaches the store at most every `persist_interval` seconds, so losing the
  cache costs a session at most that much of its sliding time.
"""

from __future__ import annotations

import hashlib
import logging
import math
import secrets
import time
from collections.abc import Callable
from typing import Any

import msgspec

from ondoki.domain import validation
from ondoki.errors import CacheError, InvalidInput, SessionStoreError, TooLarge, Unauthorized
from ondoki.models import Session
from ondoki.ports.cache import Cache
from ondoki.ports.sessions import SessionStore, StoredSession

log = logging.getLogger("ondoki.sessions")

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(Session).decode


def session_id(token: str) -> str:
    """The session's public identity: a hash of its token, also its cache and store key.

    Keyed by a hash so that a cache dump, a database dump or a `KEYS` listing gives away no
    usable token.
    """
    return hashlib.sha256(token.encode()).hexdigest()


_key = session_id

#: Seconds without attempts to persist sliding expiry after the store failed to answer.
_PERSIST_PAUSE = 30.0


class Sessions:
    """Create, look up and end sessions. `cache` should be a namespace of its own; `store`
    is the durable store (None: sessions live only in the cache)."""

    def __init__(
        self,
        cache: Cache,
        *,
        ttl: float,
        max_ttl: float,
        max_data_bytes: int,
        store: SessionStore | None = None,
        absolute_ttl: float = math.inf,
        persist_interval: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cache = cache
        self.store = store
        self.ttl = ttl
        self.max_ttl = max_ttl
        self.max_data_bytes = max_data_bytes
        self.absolute_ttl = absolute_ttl
        self.persist_interval = persist_interval
        self._clock = clock
        self._persist_paused_until = -math.inf

    async def create(
        self, user_id: str, data: dict[str, Any] | None = None, ttl: float | None = None
    ) -> tuple[str, float]:
        """A new session for `user_id`: its token and when it expires (epoch seconds).

        With a store, the session is durable when this returns; a store that does not answer
        raises `SessionStoreError` and no session exists.
        """
        validation.user_id(user_id)
        ttl = self.ttl if ttl is None else validation.ttl(ttl, maximum=self.max_ttl)
        now = self._clock()
        absolute = now + self.absolute_ttl
        expires = min(now + ttl, absolute)
        session = Session(
            user_id=user_id,
            created_at=now,
            ttl_seconds=ttl,
            data=data or {},
            absolute_expires_at=absolute if math.isfinite(absolute) else None,
            persisted_expires_at=expires if self.store is not None else None,
        )
        value = _encode(session)
        if len(value) > self.max_data_bytes:
            raise TooLarge(
                f"session data is {len(value)} bytes; the limit is {self.max_data_bytes}"
            )
        if _holds_nul(session.data):
            # PostgreSQL's jsonb refuses it: every store must take what the memory one does.
            raise InvalidInput("session data must not contain the NUL character (\\u0000)")
        token = secrets.token_urlsafe(32)
        key = _key(token)
        if self.store is None:
            await self.cache.set(key, value, ttl=expires - now)
            return token, expires
        await self.store.create(
            StoredSession(
                id=key,
                user_id=user_id,
                data=session.data,
                created_at=now,
                ttl_seconds=ttl,
                expires_at=expires,
                absolute_expires_at=absolute,
            )
        )
        await self._cache_quietly(key, value, expires - now)
        return token, expires

    async def get(self, token: str) -> tuple[Session, float]:
        """The session behind `token` and its new expiry; each look-up extends it (never
        past the session's absolute lifetime).

        Raises `Unauthorized` for an unknown, expired or ended session, and a `BackendError`
        when neither the cache nor the store can say.
        """
        key = _key(token)
        now = self._clock()
        cached = True
        try:
            value = await self.cache.get(key, refresh_ttl=self.ttl)
        except CacheError:
            if self.store is None:
                raise
            value, cached = None, False
        if value is None:
            if self.store is None:
                raise Unauthorized("unknown or expired session")
            session = await self._reload(key, now)
        else:
            session = _decode(value)
        absolute = self._absolute(session)
        if absolute <= now:
            await self._forget(key, cached=cached)
            raise Unauthorized("the session reached its absolute lifetime; log in again")
        expires = min(now + session.ttl_seconds, absolute)
        if value is not None and (session.ttl_seconds != self.ttl or expires < now + self.ttl):
            # Sessions created with their own TTL slide by that TTL, not the default, and
            # none slides past its absolute lifetime.
            if self.store is None:
                await self.cache.touch(key, expires - now)
            else:
                await self._touch_quietly(key, expires - now)
        refill = value is None and cached
        persisted = session.persisted_expires_at
        if (
            self.store is not None
            and persisted is not None
            # A session whose TTL is shorter than the interval persists every half TTL:
            # waiting for the interval, its stored expiry would pass while it is in use.
            and expires - persisted >= min(self.persist_interval, session.ttl_seconds / 2)
            and now >= self._persist_paused_until
        ):
            refill = not await self._persist(key, session, expires, now, cached=cached) and refill
        if refill:
            await self._refill(key, _encode(session), expires - now, now)
        return session, expires

    async def end(self, token: str) -> bool:
        """End the session; False when there was none.

        With a store: the store first (a `SessionStoreError` leaves the session alive: the
        caller answers 503 and the client repeats the logout), then the cache (a
        `CacheError` there is raised too, so that a cached copy never outlives a logout
        unnoticed; repeating the logout finishes it).
        """
        key = _key(token)
        existed = False
        if self.store is not None:
            existed = await self.store.delete(key)
        return await self.cache.delete(key) > 0 or existed

    def _absolute(self, session: Session) -> float:
        if session.absolute_expires_at is not None:
            return session.absolute_expires_at
        return session.created_at + self.absolute_ttl

    async def _reload(self, key: str, now: float) -> Session:
        assert self.store is not None
        stored = await self.store.get(key, now=now)
        if stored is None:
            raise Unauthorized("unknown or expired session")
        return Session(
            user_id=stored.user_id,
            created_at=stored.created_at,
            ttl_seconds=stored.ttl_seconds,
            data=stored.data,
            absolute_expires_at=stored.absolute_expires_at,
            persisted_expires_at=stored.expires_at,
        )

    async def _persist(
        self, key: str, session: Session, expires: float, now: float, *, cached: bool
    ) -> bool:
        """Write the sliding expiry to the store, and the session back to the cache (when
        it answers); False when the store did not answer (then nothing was written)."""
        assert self.store is not None
        try:
            alive = await self.store.extend(key, expires, now=now)
        except SessionStoreError as exc:
            # The cached copy keeps the session going. Requests stop trying for a while, so
            # that a store that times out does not slow every request down.
            self._persist_paused_until = now + min(self.persist_interval, _PERSIST_PAUSE)
            log.debug("could not persist a session's sliding expiry: %s", exc)
            return False
        if not alive:
            # Ended (or expired) in the store while a cached copy lived on: the store wins.
            await self._forget(key, cached=cached)
            raise Unauthorized("unknown or expired session")
        session.persisted_expires_at = expires
        if cached:
            await self._refill(key, _encode(session), expires - now, now)
        return True

    async def _refill(self, key: str, value: bytes, ttl: float, now: float) -> None:
        """Cache a session the store just vouched for, then ask the store again: a logout
        between the two found no cached copy to delete yet, and the copy cached after it
        would have kept the ended session working (until its next persist)."""
        assert self.store is not None
        await self._cache_quietly(key, value, ttl)
        try:
            alive = await self.store.get(key, now=now) is not None
        except SessionStoreError:
            return  # cannot tell now: the next persist asks again
        if not alive:
            await self._forget(key, cached=True)
            raise Unauthorized("unknown or expired session")

    async def _forget(self, key: str, *, cached: bool) -> None:
        if cached:
            try:
                await self.cache.delete(key)
            except CacheError as exc:
                log.debug("could not drop an ended session from the cache: %s", exc)

    async def _touch_quietly(self, key: str, ttl: float) -> None:
        try:
            await self.cache.touch(key, ttl)
        except CacheError as exc:
            log.debug("could not extend a cached session: %s", exc)

    async def _cache_quietly(self, key: str, value: bytes, ttl: float) -> None:
        # Only with a store: the session is durable already, and a cache that does not
        # answer now is refilled by the next read.
        try:
            await self.cache.set(key, value, ttl=ttl)
        except CacheError as exc:
            log.debug("could not cache a session: %s", exc)


def _holds_nul(data: Any) -> bool:
    """Whether any string in JSON-like `data` (keys included) holds U+0000."""
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return False
