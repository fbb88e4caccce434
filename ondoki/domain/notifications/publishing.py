"""Publishing: users' events checked, encoded once and stored in their channels.

`EventEncoder` is the pure half (checks, encoding, batch limits), shared by `Publisher`
(async, on any `Publishes`) and by publishers that are not async (the Redis adapter's
`SyncRedisPublisher`), so that every way of publishing accepts and stores the same events.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from ondoki.domain import validation
from ondoki.domain.notifications.protocol import EVENT_TYPE, EndSession, Event, encode
from ondoki.errors import InvalidInput, OndokiError, TooLarge
from ondoki.models import Position
from ondoki.ports.pubsub import Publication, Publishes

DEFAULT_MAX_EVENT_BYTES = 64 * 1024
DEFAULT_MAX_BATCH_EVENTS = 1000
DEFAULT_MAX_BATCH_BYTES = 1024 * 1024


class UserEvent(msgspec.Struct, forbid_unknown_fields=True):
    """One event for one user, as a batch lists it: `id` makes it idempotent."""

    user_id: str
    type: str
    data: Any = None
    id: str | None = None


def _unicode(text: str) -> bool:
    """True unless `text` holds a lone surrogate (which no UTF-8 encodes)."""
    if text.isascii():
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


class EventEncoder:
    """Checks events and encodes them into the publications their users' channels store.

    Limits: one encoded event at most `max_event_bytes`; a batch (or broadcast) at most
    `max_batch_events` items and `max_batch_bytes` encoded bytes (a broadcast's one event
    counted once). Bad input raises `InvalidInput`, a limit `TooLarge`; for a batch the
    message names the item (`events[3]: ...`, `user_ids[7]: ...`) and nothing is returned,
    so a caller publishes all of a batch or none of it.
    """

    def __init__(
        self,
        *,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        max_batch_events: int = DEFAULT_MAX_BATCH_EVENTS,
        max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
    ) -> None:
        if min(max_event_bytes, max_batch_events, max_batch_bytes) < 1:
            raise ValueError("the limits must be positive")
        self.max_event_bytes = max_event_bytes
        self.max_batch_events = max_batch_events
        self.max_batch_bytes = max_batch_bytes

    def event(self, type: str, data: Any = None, *, id: str | None = None) -> bytes:
        """The encoded event, checked (but not its user)."""
        if not EVENT_TYPE.fullmatch(type):
            raise InvalidInput("type must be 1-64 characters of letters, digits and . _ -")
        if id is not None and not (1 <= len(id) <= 128 and _unicode(id)):
            raise InvalidInput("id must be 1-128 characters of Unicode text")
        try:
            payload = encode(Event(type=type, data=data))
        except (TypeError, ValueError, RecursionError, msgspec.EncodeError) as exc:
            # An unsupported type, a lone surrogate, nesting too deep for the encoder.
            raise InvalidInput(f"data cannot be encoded as JSON: {exc}") from None
        if len(payload) > self.max_event_bytes:
            raise TooLarge(f"event is {len(payload)} bytes; the limit is {self.max_event_bytes}")
        return payload

    def one(
        self, user_id: str, type: str, data: Any = None, *, id: str | None = None
    ) -> Publication:
        """One user's event as its channel stores it."""
        validation.user_id(user_id)
        return Publication(user_id, self.event(type, data, id=id), id)

    def many(self, events: Sequence[UserEvent]) -> list[Publication]:
        """A batch: each event checked and encoded, in order."""
        self._count(len(events), "events")
        publications: list[Publication] = []
        size = 0
        for index, item in enumerate(events):
            try:
                publication = self.one(item.user_id, item.type, item.data, id=item.id)
            except OndokiError as exc:
                raise type(exc)(f"events[{index}]: {exc.message}", index=index) from None
            size += len(publication.payload)
            self._size(size)
            publications.append(publication)
        return publications

    def broadcast(
        self, user_ids: Sequence[str], type: str, data: Any = None, *, id: str | None = None
    ) -> list[Publication]:
        """One event for each of `user_ids` (each once), encoded once."""
        self._count(len(user_ids), "user_ids")
        payload = self.event(type, data, id=id)
        self._size(len(payload))
        seen: set[str] = set()
        for index, user_id in enumerate(user_ids):
            try:
                validation.user_id(user_id)
            except InvalidInput as exc:
                raise InvalidInput(f"user_ids[{index}]: {exc.message}", index=index) from None
            if user_id in seen:
                raise InvalidInput(f"user_ids[{index}]: {user_id!r} is listed twice", index=index)
            seen.add(user_id)
        # The same payload object for every user: the Redis adapter sends it once.
        return [Publication(user_id, payload, id) for user_id in user_ids]

    def _count(self, count: int, what: str) -> None:
        if count > self.max_batch_events:
            raise TooLarge(f"{what} has {count} items; the limit is {self.max_batch_events}")

    def _size(self, size: int) -> None:
        if size > self.max_batch_bytes:
            raise TooLarge(
                f"the batch's events are over {self.max_batch_bytes} bytes encoded (the limit)"
            )


class Publisher:
    """Checks and encodes events, and publishes them to users' channels.

    Each user's channel holds `Event`s (shown to the user's clients) and `EndSession`
    markers (a logout: that session's clients are closed on every instance). Positions are
    the channels' own: what a client resumes from.
    """

    def __init__(
        self,
        pubsub: Publishes,
        *,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        max_batch_events: int = DEFAULT_MAX_BATCH_EVENTS,
        max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
    ) -> None:
        self.pubsub = pubsub
        self.encoder = EventEncoder(
            max_event_bytes=max_event_bytes,
            max_batch_events=max_batch_events,
            max_batch_bytes=max_batch_bytes,
        )
        self.published = 0  # events this process published

    @property
    def max_event_bytes(self) -> int:
        return self.encoder.max_event_bytes

    async def publish(
        self, user_id: str, type: str, data: Any = None, *, id: str | None = None
    ) -> Position:
        """Publish an event to every client of `user_id`; `id` makes it idempotent.

        Raises InvalidInput for a bad user id, type or id, TooLarge past `max_event_bytes`,
        and the PubSub's errors when the backend fails.
        """
        channel, payload, key = self.encoder.one(user_id, type, data, id=id)
        position = await self.pubsub.publish(channel, payload, idempotency_key=key)
        self.published += 1
        return position

    async def publish_many(self, events: Sequence[UserEvent]) -> list[Position]:
        """Publish a batch in one backend call; each event's position, in order.

        Checked whole before anything is published (see `EventEncoder.many`).
        """
        return await self._send(self.encoder.many(events))

    async def broadcast(
        self, user_ids: Sequence[str], type: str, data: Any = None, *, id: str | None = None
    ) -> list[Position]:
        """Publish one event to each of `user_ids`; their positions, in that order.

        `id` makes it idempotent per user: a retried broadcast publishes to nobody twice.
        """
        return await self._send(self.encoder.broadcast(user_ids, type, data, id=id))

    async def end_session(self, user_id: str, session: str) -> None:
        """Close that session's clients on every instance (after logout)."""
        await self.pubsub.publish(user_id, encode(EndSession(session=session)))

    async def _send(self, publications: list[Publication]) -> list[Position]:
        if not publications:
            return []
        positions = await self.pubsub.publish_many(publications)
        self.published += len(positions)
        return positions
