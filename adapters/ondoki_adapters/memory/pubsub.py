"""`MemoryPubSub`: the PubSub port in one process, with the Redis adapter's history rules."""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

import anyio
import anyio.lowlevel
from anyio.abc import TaskStatus

from ondoki.adapterkit.cursor import Cursor
from ondoki.adapterkit.subscription import REPLAY_PAGE_ENTRIES, BufferedSubscription
from ondoki.errors import InvalidInput, PubSubError
from ondoki.models import Gap, Message, Position, PubSubStats
from ondoki.ports.pubsub import Publication


class _History:
    """One channel's state: what Redis keeps in its meta hash, stream and idempotency keys."""

    def __init__(self, size: int, expires_at: float) -> None:
        self.epoch = secrets.token_hex(8)
        self.offset = 0
        self.messages: deque[tuple[int, bytes]] = deque(maxlen=size)
        self.expires_at = expires_at
        # Oldest first; every key lives the same TTL, so expired ones are at the front.
        self.idempotency: OrderedDict[str, tuple[Position, float]] = OrderedDict()

    def after(self, offset: int, page_bytes: int) -> list[tuple[int, bytes]]:
        """The entries after `offset`, as many as fit in `page_bytes` (at least one)."""
        page: list[tuple[int, bytes]] = []
        size = 0
        for entry in self.messages:
            if entry[0] <= offset:
                continue
            size += len(entry[1])
            if page and (size > page_bytes or len(page) >= REPLAY_PAGE_ENTRIES):
                break
            page.append(entry)
        return page

    def seen(self, key: str, now: float) -> Position | None:
        while self.idempotency:
            oldest = next(iter(self.idempotency.values()))
            if oldest[1] > now:
                break
            self.idempotency.popitem(last=False)
        entry = self.idempotency.get(key)
        return None if entry is None else entry[0]


class _Counters:
    """What `MemoryPubSub.stats` reports, counted by the subscriptions' repairs."""

    def __init__(self) -> None:
        self.repaired = 0
        self.unrepaired_gaps = 0


class _MemorySubscription(BufferedSubscription):
    """One subscriber's view; history is read in process, so a repair never waits."""

    def __init__(self, pubsub: MemoryPubSub, cursor: Cursor, counters: _Counters) -> None:
        super().__init__(cursor, pubsub.buffer, pubsub.replay_page_bytes)
        self._pubsub = pubsub
        self._counters = counters

    def read_page(self, *, repair: bool = False) -> None:
        """Queue the next page of history after the cursor (`repair`: count what it
        refills, for `stats`)."""
        cursor = self._cursor
        epoch, latest, entries = self._pubsub._snapshot(cursor.channel, cursor)
        deliveries = cursor.catch_up(epoch, latest, entries)
        if repair:
            self._counters.repaired += sum(isinstance(d, Message) for d in deliveries)
            self._counters.unrepaired_gaps += sum(isinstance(d, Gap) for d in deliveries)
        self._queue_ready(deliveries, latest)

    async def _repair(self) -> None:
        self._stale = False
        self.read_page(repair=True)


class MemoryPubSub:
    """The PubSub port in one process: bounded, expiring per-channel history, like Redis.

    Each channel keeps its last `history_size` messages; its whole state (epoch, history,
    idempotency keys) expires `history_ttl` seconds after the last publish, and the next
    publish then starts a new epoch at offset 1. Each subscription buffers up to `buffer`
    live messages (and `replay_page_bytes` of their payloads); a subscriber that falls
    further behind is refilled from history. History
    is replayed in pages of at most `replay_page_bytes` of payloads (and `REPLAY_PAGE_ENTRIES`
    entries), each read when the subscriber has taken the one before.
    """

    def __init__(
        self,
        *,
        namespace: str = "ondoki",
        history_size: int = 1000,
        history_ttl: float = 3600.0,
        buffer: int = 1024,
        clock: Callable[[], float] = time.monotonic,
        replay_page_bytes: int = 256 * 1024,
    ) -> None:
        if history_size < 1 or buffer < 1 or not history_ttl > 0:
            raise ValueError("history_size, history_ttl and buffer must be positive")
        if replay_page_bytes < 1:
            raise ValueError("replay_page_bytes must be positive")
        self.replay_page_bytes = replay_page_bytes
        self.namespace = namespace
        self.history_size = history_size
        self.history_ttl = history_ttl
        self.buffer = buffer
        self._clock = clock
        # Ordered by expiry: creation and publish both move a channel to the end.
        self._channels: OrderedDict[str, _History] = OrderedDict()
        self._subscribers: dict[str, set[_MemorySubscription]] = {}
        self._running = False
        self._closed = False
        self._run_scope: anyio.CancelScope | None = None
        self._counters = _Counters()

    # -- helpers ---------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise PubSubError("pub/sub is closed")

    def _history(self, channel: str) -> _History:
        now = self._clock()
        while self._channels:
            oldest = next(iter(self._channels.values()))
            if oldest.expires_at > now:
                break
            self._channels.popitem(last=False)
        history = self._channels.get(channel)
        if history is None:
            history = _History(self.history_size, now + self.history_ttl)
            self._channels[channel] = history
        return history

    def _snapshot(self, channel: str, cursor: Cursor) -> tuple[str, int, list[tuple[int, bytes]]]:
        history = self._history(channel)
        # A changed epoch is read from its start (see Cursor.catch_up).
        offset = cursor.offset if history.epoch == cursor.epoch else 0
        return history.epoch, history.offset, history.after(offset, self.replay_page_bytes)

    def _end_subscriptions(self) -> None:
        for subscriptions in self._subscribers.values():
            for subscription in subscriptions:
                subscription.close()

    # -- the port --------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Nothing runs in the background; this only marks the adapter as running."""
        self._check_open()
        if self._running:
            raise RuntimeError("MemoryPubSub.run is already running")
        self._running = True
        try:
            with anyio.CancelScope() as self._run_scope:
                task_status.started()
                await anyio.sleep_forever()
        finally:
            self._running = False
            self._run_scope = None
            self._end_subscriptions()

    async def publish(
        self, channel: str, payload: bytes, *, idempotency_key: str | None = None
    ) -> Position:
        self._check_open()
        await anyio.lowlevel.checkpoint()
        return self._append(channel, payload, idempotency_key)

    async def publish_many(self, publications: Sequence[Publication]) -> list[Position]:
        self._check_open()
        await anyio.lowlevel.checkpoint()
        # No await between items: the batch is stored as one step, like the Redis script.
        return [self._append(*publication) for publication in publications]

    def _append(self, channel: str, payload: bytes, idempotency_key: str | None) -> Position:
        history = self._history(channel)
        now = self._clock()
        if idempotency_key is not None:
            seen = history.seen(idempotency_key, now)
            if seen is not None:
                return seen
        history.offset += 1
        position = Position(history.epoch, history.offset)
        message = Message(channel, position, bytes(payload))
        history.messages.append((position.offset, message.payload))
        history.expires_at = now + self.history_ttl
        self._channels.move_to_end(channel)
        if idempotency_key is not None:
            history.idempotency[idempotency_key] = (position, now + self.history_ttl)
        for subscription in self._subscribers.get(channel, ()):
            subscription.push(message)
        return position

    @asynccontextmanager
    async def subscribe(
        self, channel: str, *, since: Position | None = None
    ) -> AsyncIterator[_MemorySubscription]:
        self._check_open()
        if not self._running:
            raise PubSubError(f"subscribe to {channel!r}: not running (start run() first)")
        if since is not None and since.offset < 0:
            raise InvalidInput(f"since.offset must be >= 0, got {since.offset}")
        await anyio.lowlevel.checkpoint()
        history = self._history(channel)
        if since is None:
            subscription = _MemorySubscription(
                self, Cursor(channel, history.epoch, history.offset), self._counters
            )
        else:
            subscription = _MemorySubscription(
                self, Cursor(channel, since.epoch, since.offset), self._counters
            )
            subscription.read_page()
        self._subscribers.setdefault(channel, set()).add(subscription)
        try:
            yield subscription
        finally:
            subscription.close()
            subscriptions = self._subscribers.get(channel)
            if subscriptions is not None:
                subscriptions.discard(subscription)
                if not subscriptions:
                    del self._subscribers[channel]

    async def position(self, channel: str) -> Position:
        self._check_open()
        await anyio.lowlevel.checkpoint()
        history = self._history(channel)
        return Position(history.epoch, history.offset)

    async def ping(self) -> None:
        self._check_open()

    @property
    def stats(self) -> PubSubStats:
        """Messages repaired from history after a subscriber's buffer overflowed, and gaps
        history could not cover; `reconnects` is always 0 (there is no connection)."""
        counters = self._counters
        return PubSubStats(repaired=counters.repaired, unrepaired_gaps=counters.unrepaired_gaps)

    async def aclose(self) -> None:
        self._closed = True
        if self._run_scope is not None:
            self._run_scope.cancel()
        self._end_subscriptions()
        self._channels.clear()

    def local_subscribers(self, channel: str) -> int:
        """How many subscriptions to `channel` are open (for tests and diagnostics)."""
        return len(self._subscribers.get(channel, ()))
