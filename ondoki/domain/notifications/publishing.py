"""Publishing: a user's event checked, encoded once and stored in their channel."""

from __future__ import annotations

from typing import Any

from ondoki.domain import validation
from ondoki.domain.notifications.protocol import EVENT_TYPE, EndSession, Event, encode
from ondoki.errors import InvalidInput, TooLarge
from ondoki.models import Position
from ondoki.ports.pubsub import PubSub


class Publisher:
    """Checks and encodes events, and publishes them to users' channels on a PubSub.

    Each user's channel holds `Event`s (shown to the user's clients) and `EndSession`
    markers (a logout: that session's clients are closed on every instance).
    """

    def __init__(self, pubsub: PubSub, *, max_event_bytes: int = 64 * 1024) -> None:
        self.pubsub = pubsub
        self.max_event_bytes = max_event_bytes
        self.published = 0  # events this process published

    async def publish(
        self, user_id: str, type: str, data: Any = None, *, id: str | None = None
    ) -> Position:
        """Publish an event to every client of `user_id`; `id` makes it idempotent.

        Raises InvalidInput for a bad user id, type or id, TooLarge past `max_event_bytes`,
        and the PubSub's errors when the backend fails.
        """
        validation.user_id(user_id)
        if not EVENT_TYPE.fullmatch(type):
            raise InvalidInput("type must be 1-64 characters of letters, digits and . _ -")
        if id is not None and not 1 <= len(id) <= 128:
            raise InvalidInput("id must be 1-128 characters")
        payload = encode(Event(type=type, data=data))
        if len(payload) > self.max_event_bytes:
            raise TooLarge(f"event is {len(payload)} bytes; the limit is {self.max_event_bytes}")
        position = await self.pubsub.publish(user_id, payload, idempotency_key=id)
        self.published += 1
        return position

    async def end_session(self, user_id: str, session: str) -> None:
        """Close that session's clients on every instance (after logout)."""
        await self.pubsub.publish(user_id, encode(EndSession(session=session)))
