"""The PubSub port: per-channel ordered notifications with bounded history and resume."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import NamedTuple, Protocol

import anyio
from anyio.abc import TaskStatus

from ondoki.models import Delivery, Message, Position, PubSubStats


class Publication(NamedTuple):
    """One message of a `publish_many` batch.

    Messages of a batch that carry the very same `payload` object (a broadcast) may be sent
    to the backend once.
    """

    channel: str
    payload: bytes
    idempotency_key: str | None = None


class Publishes(Protocol):
    """The publishing half of the PubSub port: all a process that only publishes needs."""

    async def publish(
        self, channel: str, payload: bytes, *, idempotency_key: str | None = None
    ) -> Position:
        """Append `payload` to the channel and deliver it; return its position."""
        ...

    async def publish_many(self, publications: Sequence[Publication]) -> list[Position]:
        """Publish each item in order, as `publish` would; return their positions in order.

        Items on one channel get increasing offsets in item order; an item whose
        idempotency key was already used on its channel (earlier in the same batch too)
        stores and delivers nothing and gets the first message's position. The batch goes
        to the backend at once (Redis: one script call, one round trip). On a backend
        error the caller cannot tell which items were stored: retry with idempotency keys.
        """
        ...


class Subscription(Protocol):
    """An open subscription: iterate it for `Message`s and `Gap`s, in publish order."""

    def __aiter__(self) -> AsyncIterator[Delivery]: ...

    def hand_over(self, receiver: Callable[[Message], None] | None) -> None:
        """Give live messages straight to `receiver` (None: stop), in order with iteration.

        A live message that nothing is queued ahead of (no replay, no gap, no repair under
        way) goes to `receiver` at once, in the task that received it from the backend or
        published it, instead of waking the iterating task: fan-out to many subscribers
        then costs no task switch per message. Everything else still comes through
        iteration, and iteration must go on (it carries replays, gaps and repairs).
        `receiver` must not block, and must not raise: an exception ends the subscription.
        """
        ...

    def on_pending(self, callback: Callable[[], None] | None) -> None:
        """Call `callback` (None: stop) whenever something may be queued for iteration (a
        replay page, a gap, a repair, a live message that could not be handed over), in
        the task that queued it: it must not block or raise. A consumer that iterates only
        when told (`next_pending`) needs no task of its own while the subscription is idle.
        """
        ...

    def pending(self) -> bool:
        """Whether iteration has something to do now (`next_pending` would not be None)."""
        ...

    async def next_pending(self) -> Delivery | None:
        """What iteration would yield next, or None at once when it would wait (nothing
        queued; live messages then go to the `hand_over` receiver) or has ended. It may
        await the backend (reading the next page of history, a repair)."""
        ...


class PubSub(Publishes, Protocol):
    """Publish to named channels; subscribers get every message in order, or are told not.

    Contract, for every adapter:

    - `publish` appends to the channel's history and delivers to current subscribers. It
      returns the message's `Position`; offsets in one epoch increase by one per message.
    - History is bounded per channel (by length and by age); it is what `subscribe(since=)`
      can replay.
    - `subscribe(channel, since=None)` delivers messages published after it is open.
      With `since`, it first replays what history holds after `since`, then continues live:
      no message is missing or repeated at the seam. History is read a bounded page at a
      time, the next page when the subscriber has taken the last one: a subscriber far
      behind holds one page in memory, never the channel's whole history.
    - When history cannot cover what came after `since` (trimmed, expired, or the epoch
      changed because history was lost), the first delivery is a `Gap` naming the position
      to continue from, never a silent hole. The same holds after a backend outage that a
      subscription could not repair. When the epoch changed, the `Gap` names offset 0 of
      the new epoch and is followed by every message history holds from that epoch's start
      (none is lost between the loss and the subscriber noticing it); when that start is
      already trimmed, the `Gap` names the latest position.
    - `publish` with an `idempotency_key` already used on that channel (within the history's
      age) stores and delivers nothing and returns the first message's position.
    - `publish_many` is `publish` for each item in order, sent to the backend at once.
    - A subscriber that does not consume is the caller's concern (the notification hub
      bounds it); adapters must not block publishers on it. Each subscription buffers a
      bounded number of messages; past that it drops its buffer and later refills from
      history, so a slow subscriber loses nothing that history still holds.
    - Background work (Redis: the one pub/sub connection per instance) runs in `run`, which
      the composition root starts in its task group; `subscribe` needs it running.
    - Backend failures raise `ondoki.errors.PubSubError`.
    - `stats` counts reconnects and repairs from history (for `/metrics`); reading it never
      touches the backend.
    """

    @property
    def stats(self) -> PubSubStats:
        """This adapter's delivery counters, now (a snapshot)."""
        ...

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Do the adapter's background work until cancelled or `aclose`d.

        Start it with `await task_group.start(pubsub.run)`: it reports started at once and
        connects (and reconnects) in the background. `subscribe` raises `PubSubError` while
        it is not running; open subscriptions end when it stops.
        """
        ...

    def subscribe(
        self, channel: str, *, since: Position | None = None
    ) -> AbstractAsyncContextManager[Subscription]:
        """Open a subscription; closing the context manager unsubscribes.

        Entering returns once the subscription is live (raises `PubSubError` if the backend
        cannot be reached); iteration ends when the adapter is closed or stops running.
        `since` with a negative offset raises `InvalidInput`.
        """
        ...

    async def position(self, channel: str) -> Position:
        """The position of the channel's latest message (offset 0 when it has none).

        A channel without state (never published to, or expired) gets its epoch here, so a
        client that starts from this position later resumes without a `Gap` as long as the
        channel's history lives.
        """
        ...

    async def ping(self) -> None:
        """Return when the backend answers; raise `PubSubError` otherwise."""
        ...

    async def aclose(self) -> None:
        """Close every subscription and connection."""
        ...
