"""Temporary state: small JSON documents per user and key, each with a TTL, and a per-user
bound on how many keys and bytes one user may hold."""

from __future__ import annotations

import time
from collections.abc import Callable

import anyio
import msgspec

from ondoki.domain import validation
from ondoki.errors import NotFound, TooLarge
from ondoki.ports.cache import Cache

#: key -> (value bytes, expires at, epoch seconds): what one user holds.
_Usage = dict[str, tuple[int, float]]
_encode_usage = msgspec.json.Encoder().encode
_decode_usage = msgspec.json.Decoder(_Usage).decode


class _UserLocks:
    """One lock per user with a write under way: a user's index is read, changed and
    written back without another write of the same user in between (in this process)."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[anyio.Lock, int]] = {}

    def acquire(self, user_id: str) -> anyio.Lock:
        lock, users = self._locks.get(user_id, (None, 0))
        if lock is None:
            lock = anyio.Lock()
        self._locks[user_id] = (lock, users + 1)
        return lock

    def release(self, user_id: str) -> None:
        lock, users = self._locks[user_id]
        if users <= 1:
            del self._locks[user_id]
        else:
            self._locks[user_id] = (lock, users - 1)


class TemporaryState:
    """Per-user key/value state in the cache; one user never sees another's keys.

    Each user holds at most `max_keys_per_user` keys and `max_bytes_per_user` bytes of
    values (`TooLarge` past either, naming the limit). The bound is kept in an index per
    user, next to the values; writes of one user are serialised within a process.
    Concurrent writes of one user through different instances may pass the bound by the
    writes in flight (the index is read, changed and written back, not updated atomically).
    """

    def __init__(
        self,
        cache: Cache,
        *,
        ttl: float,
        max_ttl: float,
        max_bytes: int,
        max_keys_per_user: int = 100,
        max_bytes_per_user: int = 1024 * 1024,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cache = cache
        self.ttl = ttl
        self.max_ttl = max_ttl
        self.max_bytes = max_bytes
        self.max_keys_per_user = max_keys_per_user
        self.max_bytes_per_user = max_bytes_per_user
        self._clock = clock
        self._locks = _UserLocks()

    @staticmethod
    def _key(user_id: str, key: str) -> str:
        # User IDs never contain "/", so "u/k" cannot collide across users.
        return f"{validation.user_id(user_id)}/{validation.state_key(key)}"

    @staticmethod
    def _index_key(user_id: str) -> str:
        # State keys are never empty, so "u/" is no user's state key.
        return f"{user_id}/"

    async def _usage(self, user_id: str, now: float) -> _Usage:
        raw = await self.cache.get(self._index_key(user_id))
        if raw is None:
            return {}
        try:
            usage = _decode_usage(raw)
        except msgspec.DecodeError:
            return {}
        return {key: entry for key, entry in usage.items() if entry[1] > now}

    async def _save_usage(self, user_id: str, usage: _Usage, now: float) -> None:
        index = self._index_key(user_id)
        if not usage:
            await self.cache.delete(index)
            return
        last = max(expires for _, expires in usage.values())
        await self.cache.set(index, _encode_usage(usage), ttl=max(last - now, 0.001))

    async def put(self, user_id: str, key: str, value: bytes, ttl: float | None = None) -> float:
        """Store `value`; return when it expires (epoch seconds)."""
        name = self._key(user_id, key)
        ttl = self.ttl if ttl is None else validation.ttl(ttl, maximum=self.max_ttl)
        if len(value) > self.max_bytes:
            raise TooLarge(f"state value is {len(value)} bytes; the limit is {self.max_bytes}")
        lock = self._locks.acquire(user_id)
        try:
            async with lock:
                now = self._clock()
                usage = await self._usage(user_id, now)
                usage.pop(key, None)
                if len(usage) >= self.max_keys_per_user:
                    raise TooLarge(
                        f"this user already holds {len(usage)} state keys; the limit is "
                        f"{self.max_keys_per_user} (ONDOKI_STATE_MAX_KEYS_PER_USER): delete "
                        "some first"
                    )
                used = sum(size for size, _ in usage.values())
                if used + len(value) > self.max_bytes_per_user:
                    raise TooLarge(
                        f"this user's state would be {used + len(value)} bytes; the limit is "
                        f"{self.max_bytes_per_user} (ONDOKI_STATE_MAX_BYTES_PER_USER): delete "
                        "some first"
                    )
                usage[key] = (len(value), now + ttl)
                await self.cache.set(name, value, ttl=ttl)
                await self._save_usage(user_id, usage, now)
        finally:
            self._locks.release(user_id)
        return now + ttl

    async def get(self, user_id: str, key: str) -> bytes:
        """The stored value; `NotFound` when absent or expired."""
        value = await self.cache.get(self._key(user_id, key))
        if value is None:
            raise NotFound(f"no state under {key!r}")
        return value

    async def delete(self, user_id: str, key: str) -> None:
        """Remove the value; `NotFound` when there was none."""
        name = self._key(user_id, key)
        lock = self._locks.acquire(user_id)
        try:
            async with lock:
                existed = await self.cache.delete(name)
                now = self._clock()
                usage = await self._usage(user_id, now)
                if usage.pop(key, None) is not None:
                    await self._save_usage(user_id, usage, now)
        finally:
            self._locks.release(user_id)
        if not existed:
            raise NotFound(f"no state under {key!r}")
