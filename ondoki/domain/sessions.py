"""Sessions: opaque bearer tokens looked up in the cache, with sliding expiry."""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from typing import Any

import msgspec

from ondoki.domain import validation
from ondoki.errors import TooLarge, Unauthorized
from ondoki.models import Session
from ondoki.ports.cache import Cache

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(Session).decode


def session_id(token: str) -> str:
    """The session's public identity: a hash of its token, also its cache key.

    Keyed by a hash so that a cache dump or `KEYS` listing gives away no usable token.
    """
    return hashlib.sha256(token.encode()).hexdigest()


_key = session_id


class Sessions:
    """Create, look up and end sessions. `cache` should be a namespace of its own."""

    def __init__(
        self,
        cache: Cache,
        *,
        ttl: float,
        max_ttl: float,
        max_data_bytes: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cache = cache
        self.ttl = ttl
        self.max_ttl = max_ttl
        self.max_data_bytes = max_data_bytes
        self._clock = clock

    async def create(
        self, user_id: str, data: dict[str, Any] | None = None, ttl: float | None = None
    ) -> tuple[str, float]:
        """A new session for `user_id`: its token and when it expires (epoch seconds)."""
        validation.user_id(user_id)
        ttl = self.ttl if ttl is None else validation.ttl(ttl, maximum=self.max_ttl)
        now = self._clock()
        value = _encode(Session(user_id=user_id, created_at=now, ttl_seconds=ttl, data=data or {}))
        if len(value) > self.max_data_bytes:
            raise TooLarge(
                f"session data is {len(value)} bytes; the limit is {self.max_data_bytes}"
            )
        token = secrets.token_urlsafe(32)
        await self.cache.set(_key(token), value, ttl=ttl)
        return token, now + ttl

    async def get(self, token: str) -> tuple[Session, float]:
        """The session behind `token` and its new expiry; each look-up extends it.

        Raises `Unauthorized` for an unknown, expired or ended session.
        """
        key = _key(token)
        value = await self.cache.get(key, refresh_ttl=self.ttl)
        if value is None:
            raise Unauthorized("unknown or expired session")
        session = _decode(value)
        if session.ttl_seconds != self.ttl:
            # Sessions created with their own TTL slide by that TTL, not the default.
            await self.cache.touch(key, session.ttl_seconds)
        return session, self._clock() + session.ttl_seconds

    async def end(self, token: str) -> bool:
        """End the session; False when there was none."""
        return await self.cache.delete(_key(token)) > 0
