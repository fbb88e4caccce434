"""The consumer's side of a subscription, shared by every PubSub adapter."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable

import anyio
import anyio.lowlevel

from ondoki.adapterkit.cursor import Cursor
from ondoki.models import Delivery, Message

#: The most entries one page of replayed history holds, besides its byte bound: the same for
#: every adapter, so a subscriber behind holds as much on each.
REPLAY_PAGE_ENTRIES = 256


class BufferedSubscription(ABC):
    """A replay queue, a bounded live buffer and a cursor, shared by every PubSub adapter.

    Consumers see the `Subscription` port: iteration, `hand_over`, `on_pending`, `pending`
    and `next_pending`. The adapter that owns the subscription drives it through the
    adapter-facing methods below: `push` each live message, `lose_buffer` when live
    delivery broke (a lost connection), `wake` when something the adapter's subclass waits
    on changed, `close` when the subscription ends. A subclass says how to refill from
    history by implementing `_repair`, queueing each page it reads with `_queue_ready`; it
    may use the protected state for that (`_cursor`, `_ready`, `_stale`, `_drops`,
    `_closed`, `_sleep`). History is read a page at a time: a subscriber far behind holds
    one page, never its whole history.

    A full buffer (`buffer` messages, or `buffer_bytes` of payloads) is dropped rather than
    blocking whoever pushes (the publisher, or the one reader all subscriptions share): the
    dropped messages are in history, and the next read refills from there. `_drops` counts
    the drops, so a repair that raced with a new one knows it is not done.
    """

    def __init__(self, cursor: Cursor, buffer: int, buffer_bytes: int) -> None:
        # Set by `hand_over`: takes in-order live messages without waking the consumer.
        self._receiver: Callable[[Message], None] | None = None
        # Set by `on_pending`: told when something is queued for iteration.
        self._on_pending: Callable[[], None] | None = None
        self._failure: Exception | None = None
        self._cursor = cursor
        self._buffer = buffer
        self._buffer_bytes = buffer_bytes
        self._inbox_bytes = 0  # payload bytes in `_inbox`
        # Empty most of a subscription's life (live messages go to the receiver): an
        # empty tuple until used, as an empty deque costs over 600 bytes per subscriber.
        self._ready: deque[Delivery] | tuple[()] = ()
        self._inbox: deque[Message] | tuple[()] = ()
        # Stale: the live buffer is incomplete (overflow, a lost connection, a hole) and
        # history must fill it in.
        self._stale = False
        self._drops = 0
        self._closed = False
        self._wake: anyio.Event | None = None

    # -- the consumer's side of the port --------------------------------------------------

    def hand_over(self, receiver: Callable[[Message], None] | None) -> None:
        """See `ondoki.ports.pubsub.Subscription.hand_over`."""
        self._receiver = receiver

    def on_pending(self, callback: Callable[[], None] | None) -> None:
        """See `ondoki.ports.pubsub.Subscription.on_pending`."""
        self._on_pending = callback

    # -- the adapter-facing side: called by the adapter that owns the subscription ---------

    def push(self, message: Message) -> None:
        """Deliver a live message, in publish order; never blocks and never raises.

        It goes straight to the `hand_over` receiver when nothing is queued ahead of it,
        else into the bounded buffer (a full buffer is dropped and later refilled from
        history).
        """
        receiver = self._receiver
        if receiver is not None and not (
            self._ready or self._inbox or self._stale or self._closed or self._failure
        ):
            # Nothing is queued ahead of it: decided here as the consumer's loop would,
            # without a task switch.
            if self._accept(message):
                try:
                    receiver(message)
                except Exception as exc:  # a bug in the receiver: the consumer raises it
                    self._failure = exc
                    self.wake()
            return
        size = len(message.payload)
        if len(self._inbox) >= self._buffer or self._inbox_bytes + size > self._buffer_bytes:
            self.lose_buffer()
        else:
            if not self._inbox:
                self._inbox = deque()
            self._inbox.append(message)
            self._inbox_bytes += size
            self.wake()

    def lose_buffer(self) -> None:
        """Live delivery broke (overflow, a lost connection): drop what is buffered and
        refill from history (`_repair`) before anything live is delivered again."""
        self._inbox = ()
        self._inbox_bytes = 0
        self._stale = True
        self._drops += 1
        self.wake()

    def wake(self) -> None:
        """Wake the consumer if it is waiting, and tell the `on_pending` callback, so the
        subscription's state is looked at again (the adapter changed something)."""
        if self._wake is not None:
            self._wake.set()
        if self._on_pending is not None:
            self._on_pending()

    def close(self) -> None:
        """End the subscription: iteration stops once the replay queue is drained (live
        messages still buffered are dropped)."""
        self._closed = True
        self.wake()

    def _queue_ready(self, deliveries: list[Delivery], latest: int) -> None:
        """Queue a page of history for iteration; while the cursor is still behind
        `latest` (the page was bounded), the subscription stays stale and the next read
        fetches the next page, at the pace of the consumer."""
        if deliveries:
            if not self._ready:
                self._ready = deque()
            self._ready.extend(deliveries)
        if self._cursor.offset < latest:
            self._stale = True

    # -- the consumer's side ---------------------------------------------------------------

    async def _sleep(self) -> None:
        self._wake = anyio.Event()
        await self._wake.wait()

    @abstractmethod
    async def _repair(self) -> None:
        """Refill `_ready` from history after `_cursor` (a page at a time, with
        `_queue_ready`), and clear `_stale` when done.

        Called by iteration while the subscription is stale; implemented by each adapter.
        """

    def __aiter__(self) -> BufferedSubscription:
        return self

    async def __anext__(self) -> Delivery:
        await anyio.lowlevel.checkpoint()
        while True:
            delivery = await self.next_pending()
            if delivery is not None:
                return delivery
            if self._closed:
                raise StopAsyncIteration
            await self._sleep()

    def pending(self) -> bool:
        """See `ondoki.ports.pubsub.Subscription.pending`."""
        if self._failure is not None or self._ready:
            return True
        return not self._closed and bool(self._inbox or self._stale)

    async def next_pending(self) -> Delivery | None:
        """See `ondoki.ports.pubsub.Subscription.next_pending`."""
        while True:
            if self._failure is not None:
                raise self._failure
            if self._ready:
                assert isinstance(self._ready, deque)
                return self._ready.popleft()
            if self._closed:
                return None
            if self._stale:
                await self._repair()
                continue
            if self._inbox:
                assert isinstance(self._inbox, deque)
                message = self._inbox.popleft()
                self._inbox_bytes -= len(message.payload)
                if self._accept(message):
                    return message
                continue
            return None

    def _accept(self, message: Message) -> bool:
        """Whether the cursor takes a live message; a hole before it makes the
        subscription stale (history fills it, this message included)."""
        verdict = self._cursor.accept(message.position)
        if verdict is None:
            self._stale = True
            self.wake()
        return bool(verdict)
