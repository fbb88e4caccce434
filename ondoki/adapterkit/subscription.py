"""The consumer's side of a subscription, shared by every PubSub adapter."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable

import anyio
import anyio.lowlevel

from ondoki.adapterkit.cursor import Cursor
from ondoki.models import Delivery, Message


class BufferedSubscription(ABC):
    """A replay queue, a bounded live buffer and a cursor, shared by every PubSub adapter.

    Consumers see the `Subscription` port: iteration and `hand_over`. The adapter that owns
    the subscription drives it through the adapter-facing methods below: `push` each live
    message, `lose_buffer` when live delivery broke (a lost connection), `wake` when
    something the adapter's subclass waits on changed, `close` when the subscription ends.
    A subclass says how to refill from history by implementing `_repair`; it may use the
    protected state for that (`_cursor`, `_ready`, `_stale`, `_drops`, `_closed`, `_sleep`).

    A full buffer is dropped rather than blocking whoever pushes (the publisher, or the
    one reader all subscriptions share): the dropped messages are in history, and the next
    read refills from there. `_drops` counts the drops, so a repair that raced with a new
    one knows it is not done.
    """

    def __init__(self, cursor: Cursor, buffer: int) -> None:
        # Set by `hand_over`: takes in-order live messages without waking the consumer.
        self._receiver: Callable[[Message], None] | None = None
        self._failure: Exception | None = None
        self._cursor = cursor
        self._buffer = buffer
        self._ready: deque[Delivery] = deque()
        self._inbox: deque[Message] = deque()
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
        if len(self._inbox) >= self._buffer:
            self.lose_buffer()
        else:
            self._inbox.append(message)
            self.wake()

    def lose_buffer(self) -> None:
        """Live delivery broke (overflow, a lost connection): drop what is buffered and
        refill from history (`_repair`) before anything live is delivered again."""
        self._inbox.clear()
        self._stale = True
        self._drops += 1
        self.wake()

    def wake(self) -> None:
        """Wake the consumer if it is waiting, so it looks at the subscription's state
        again (the adapter changed something its `_repair` or open waits on)."""
        if self._wake is not None:
            self._wake.set()

    def close(self) -> None:
        """End the subscription: iteration stops once the replay queue is drained (live
        messages still buffered are dropped)."""
        self._closed = True
        self.wake()

    # -- the consumer's side ---------------------------------------------------------------

    async def _sleep(self) -> None:
        self._wake = anyio.Event()
        await self._wake.wait()

    @abstractmethod
    async def _repair(self) -> None:
        """Refill `_ready` from history after `_cursor`, and clear `_stale` when done.

        Called by iteration while the subscription is stale; implemented by each adapter.
        """

    def __aiter__(self) -> BufferedSubscription:
        return self

    async def __anext__(self) -> Delivery:
        await anyio.lowlevel.checkpoint()
        while True:
            if self._failure is not None:
                raise self._failure
            if self._ready:
                return self._ready.popleft()
            if self._closed:
                raise StopAsyncIteration
            if self._stale:
                await self._repair()
                continue
            if self._inbox:
                message = self._inbox.popleft()
                if self._accept(message):
                    return message
                continue
            await self._sleep()

    def _accept(self, message: Message) -> bool:
        """Whether the cursor takes a live message; a hole before it makes the
        subscription stale (history fills it, this message included)."""
        verdict = self._cursor.accept(message.position)
        if verdict is None:
            self._stale = True
            self.wake()
        return bool(verdict)
