"""The consumer's side of a subscription, shared by every PubSub adapter."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import anyio
import anyio.lowlevel

from ondoki.adapterkit.cursor import Cursor
from ondoki.models import Delivery, Message


class BufferedSubscription:
    """A replay queue, a bounded live buffer and a cursor; adapters push live messages in
    (`_push`) and say how to refill from history (`_repair`). History is read a page at a
    time (`_queue_ready`): a subscriber far behind holds one page, never its whole history.

    A full buffer is dropped rather than blocking whoever pushes (the publisher, or the
    one reader all subscriptions share): the dropped messages are in history, and the next
    read refills from there. `_drops` counts the drops, so a repair that raced with a new
    one knows it is not done.
    """

    def __init__(self, cursor: Cursor, buffer: int) -> None:
        # Set by `hand_over`: takes in-order live messages without waking the consumer.
        self._receiver: Callable[[Message], None] | None = None
        # Set by `on_pending`: told when something is queued for iteration.
        self._on_pending: Callable[[], None] | None = None
        self._failure: Exception | None = None
        self._cursor = cursor
        self._buffer = buffer
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

    # -- the producer's side ---------------------------------------------------------------

    def hand_over(self, receiver: Callable[[Message], None] | None) -> None:
        self._receiver = receiver

    def on_pending(self, callback: Callable[[], None] | None) -> None:
        self._on_pending = callback

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

    def _push(self, message: Message) -> None:
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
                    self._notify()
            return
        if len(self._inbox) >= self._buffer:
            self._lose_buffer()
        else:
            if not self._inbox:
                self._inbox = deque()
            self._inbox.append(message)
            self._notify()

    def _lose_buffer(self) -> None:
        self._inbox = ()
        self._stale = True
        self._drops += 1
        self._notify()

    def _notify(self) -> None:
        if self._wake is not None:
            self._wake.set()
        if self._on_pending is not None:
            self._on_pending()

    def _close(self) -> None:
        self._closed = True
        self._notify()

    # -- the consumer's side ---------------------------------------------------------------

    async def _sleep(self) -> None:
        self._wake = anyio.Event()
        await self._wake.wait()

    async def _repair(self) -> None:
        """Refill `_ready` from history after `_cursor`, and clear `_stale` when done."""
        raise NotImplementedError

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
        if self._failure is not None or self._ready:
            return True
        return not self._closed and bool(self._inbox or self._stale)

    async def next_pending(self) -> Delivery | None:
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
            self._notify()
        return bool(verdict)
