"""The SessionStore port: where sessions outlive the cache (PostgreSQL in production)."""

from __future__ import annotations

from typing import Any, Protocol

import msgspec


class StoredSession(msgspec.Struct, kw_only=True, frozen=True):
    """One session as the durable store keeps it. `id` is the SHA-256 of the token (hex);
    the token itself is never stored. Times are epoch seconds."""

    id: str
    user_id: str
    data: dict[str, Any] = msgspec.field(default_factory=dict)
    created_at: float
    #: The sliding TTL the session was created with.
    ttl_seconds: float
    #: When the session expires unless used again (as last persisted: it may lag behind
    #: the cache by up to the persist interval).
    expires_at: float
    #: When the session ends however often it is used.
    absolute_expires_at: float


class SessionStore(Protocol):
    """Durable sessions, keyed by the token's hash.

    Contract, for every adapter:

    - `create` stores a new session durably before it returns; an `id` already stored
      raises `InvalidInput` (tokens are random: this never happens by accident).
    - `get` returns None for an unknown, deleted or expired session (`expires_at` or
      `absolute_expires_at` at or before `now`): an expired session is never returned.
    - `extend` moves `expires_at` (never past `absolute_expires_at`); False when the session
      is gone or expired, which it never revives.
    - `delete` is durable when it returns; True when the session existed.
    - Failures of the backend raise `ondoki.errors.SessionStoreError`.
    """

    async def create(self, session: StoredSession) -> None:
        """Store a new session."""
        ...

    async def get(self, session_id: str, *, now: float) -> StoredSession | None:
        """The live session under `session_id`, or None."""
        ...

    async def extend(self, session_id: str, expires_at: float, *, now: float) -> bool:
        """Persist a later sliding expiry; False when the session is gone or expired."""
        ...

    async def delete(self, session_id: str) -> bool:
        """Remove the session; True when it existed."""
        ...

    async def purge_expired(self, *, now: float) -> int:
        """Remove sessions expired before `now`; how many (housekeeping, any time)."""
        ...

    async def ping(self) -> None:
        """Return when the store answers and is ready to use; raise `SessionStoreError`
        otherwise (for PostgreSQL: reachable, authenticated, schema current)."""
        ...

    async def aclose(self) -> None:
        """Release connections. The store must not be used afterwards."""
        ...
