"""The PubSub port: per-channel ordered notifications with bounded history and resume."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from ondoki.models import Delivery, Position


class Subscription(Protocol):
    """An open subscription: iterate it for `Message`s and `Gap`s, in publish order."""

    def __aiter__(self) -> AsyncIterator[Delivery]: ...


class PubSub(Protocol):
    """Publish to named channels; subscribers get every message in order, or are told not.

    Contract, for every adapter:

    - `publish` appends to the channel's history and delivers to current subscribers. It
      returns the message's `Position`; offsets in one epoch increase by one per message.
    - History is bounded per channel (by length and by age); it is what `subscribe(since=)`
      can replay.
    - `subscribe(channel, since=None)` delivers messages published after it is open.
      With `since`, it first replays what history holds after `since`, then continues live:
      no message is missing or repeated at the seam.
    - When history cannot cover what came after `since` (trimmed, expired, or the epoch
      changed because history was lost), the first delivery is a `Gap` naming the position
      to continue from, never a silent hole. The same holds after a backend outage that a
      subscription could not repair.
    - `publish` with an `idempotency_key` already used on that channel (within the history's
      age) stores and delivers nothing and returns the first message's position.
    - A subscriber that does not consume is the caller's concern (the notification hub
      bounds it); adapters must not block publishers on it.
    - Backend failures raise `ondoki.errors.PubSubError`.
    """

    async def publish(
        self, channel: str, payload: bytes, *, idempotency_key: str | None = None
    ) -> Position:
        """Append `payload` to the channel and deliver it; return its position."""
        ...

    def subscribe(
        self, channel: str, *, since: Position | None = None
    ) -> AbstractAsyncContextManager[Subscription]:
        """Open a subscription; closing the context manager unsubscribes."""
        ...

    async def position(self, channel: str) -> Position:
        """The position of the channel's latest message (offset 0 when it has none)."""
        ...

    async def ping(self) -> None:
        """Return when the backend answers; raise `PubSubError` otherwise."""
        ...

    async def aclose(self) -> None:
        """Close every subscription and connection."""
        ...
