"""The Cache port: session data and temporary state (Redis DB 0 in production)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol


class Cache(Protocol):
    """A key/value cache of bytes, every key with a time to live.

    Contract, for every adapter:

    - Every key has a TTL. `ttl=None` means the adapter's default TTL; there is no way to
      store a key forever (an LRU- or TTL-evicting server may then evict only cache keys).
    - TTLs are seconds as floats, honoured to the millisecond; a key past its TTL is never
      returned again.
    - The cache is bounded: when full, least-recently-used keys are evicted. Eviction is not
      an error, so callers must treat a miss as "unknown", never as "deleted by someone".
    - `increment` and `set_if_absent` are atomic across all clients of the same backend.
    - Keys are `str` (any characters); values are `bytes`.
    - Failures of the backend raise `ondoki.errors.CacheError`; operations that are safe to
      repeat are retried with backoff first. Bad arguments raise `InvalidInput`.
    """

    async def get(self, key: str, *, refresh_ttl: float | None = None) -> bytes | None:
        """The value of `key`, or None. With `refresh_ttl`, also reset its TTL (sliding expiry)."""
        ...

    async def set(self, key: str, value: bytes, *, ttl: float | None = None) -> None:
        """Store `value` under `key`, replacing any value and TTL."""
        ...

    async def set_if_absent(self, key: str, value: bytes, *, ttl: float | None = None) -> bool:
        """Store `value` only if `key` has no value; True when stored (idempotency keys)."""
        ...

    async def delete(self, *keys: str) -> int:
        """Remove the keys; the number that existed."""
        ...

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """The values of `keys`, in order, None for each missing one; one round trip."""
        ...

    async def set_many(self, items: Mapping[str, bytes], *, ttl: float | None = None) -> None:
        """Store every item with the same TTL; one round trip, all or nothing."""
        ...

    async def increment(self, key: str, amount: int = 1, *, ttl: float | None = None) -> int:
        """Add `amount` to the integer at `key` (0 when absent) and return the new value.

        The TTL is set when the key is created and left alone afterwards (a fixed window).
        Raises `InvalidInput` when the stored value is not an integer.
        """
        ...

    async def touch(self, key: str, ttl: float | None = None) -> bool:
        """Reset the TTL of `key`; False when it does not exist."""
        ...

    async def ttl(self, key: str) -> float | None:
        """Seconds left before `key` expires, or None when it does not exist."""
        ...

    async def ping(self) -> None:
        """Return when the backend answers; raise `CacheError` otherwise."""
        ...

    async def aclose(self) -> None:
        """Release connections. The cache must not be used afterwards."""
        ...
