"""`MemorySessionStore`: the SessionStore port in one process (tests and single instances)."""

from __future__ import annotations

import msgspec

from ondoki.errors import InvalidInput
from ondoki.ports.sessions import StoredSession


def _live(session: StoredSession, now: float) -> bool:
    return session.expires_at > now and session.absolute_expires_at > now


class MemorySessionStore:
    """Sessions in a dict; as durable as the process. Expired ones are dropped when read and
    by `purge_expired`."""

    def __init__(self) -> None:
        self._sessions: dict[str, StoredSession] = {}

    async def create(self, session: StoredSession) -> None:
        if session.id in self._sessions:
            raise InvalidInput("a session with this id exists")
        self._sessions[session.id] = session

    async def get(self, session_id: str, *, now: float) -> StoredSession | None:
        session = self._sessions.get(session_id)
        if session is None:
            return None
        if not _live(session, now):
            del self._sessions[session_id]
            return None
        return session

    async def extend(self, session_id: str, expires_at: float, *, now: float) -> bool:
        session = await self.get(session_id, now=now)
        if session is None:
            return False
        later = min(max(expires_at, session.expires_at), session.absolute_expires_at)
        self._sessions[session_id] = msgspec.structs.replace(session, expires_at=later)
        return True

    async def delete(self, session_id: str) -> bool:
        return self._sessions.pop(session_id, None) is not None

    async def purge_expired(self, *, now: float) -> int:
        dead = [key for key, session in self._sessions.items() if not _live(session, now)]
        for key in dead:
            del self._sessions[key]
        return len(dead)

    async def ping(self) -> None:
        return None

    async def aclose(self) -> None:
        self._sessions.clear()
