"""The notification hub: serves each connected client its user's events."""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol

import anyio
import msgspec
from anyio.abc import TaskGroup, TaskStatus

from ondoki.domain.notifications.outbox import (
    DirectOutbox,
    FrameWriter,
    Outbox,
    QueuedOutbox,
)
from ondoki.domain.notifications.protocol import (
    PING,
    ClientClosed,
    CloseCode,
    EndSession,
    ErrorMessage,
    Frame,
    NotificationMessage,
    Pong,
    Resume,
    ResyncMessage,
    ShownEvent,
    decode_envelope,
    parse_client,
    text_frame,
)
from ondoki.domain.notifications.publishing import Publisher
from ondoki.errors import OndokiError
from ondoki.models import Gap, Message, Position
from ondoki.ports.pubsub import PubSub, Subscription

log = logging.getLogger("ondoki.domain.notifications")

# Frames' JSON; each cached frame may also hold its wire and text copies (three times).
_FRAME_CACHE_BYTES = 1024 * 1024


class ClientConnection(Protocol):
    """A connected, authenticated client (the web adapter wraps a WebSocket in this)."""

    async def send(self, frame: Frame) -> None:
        """Send one frame, waiting while the transport cannot take more."""
        ...

    def writer(self) -> FrameWriter | None:
        """Something that hands frames to the transport at once, never waiting; None when
        the transport cannot do that (the hub then queues frames and `send`s them one by
        one)."""
        ...

    def abort(self) -> None:
        """Drop the connection at once with whatever it holds unsent, if the transport
        allows (a client that stopped reading would never take its close frame)."""
        ...

    async def receive(self) -> str | bytes | None:
        """The next message as the client sent it; None when the client has gone.

        Cancelling it must lose nothing (the hub waits for a message and a ping's time in
        one call). Raises `ClientClosed` for a message the transport refuses (too large).
        """
        ...

    async def close(self, code: int, reason: str = "") -> None: ...


@dataclass
class HubStats:
    """Counters for /metrics, of this process."""

    connections: int = 0
    direct: int = 0  # of `connections`: those whose frames go straight to their transport
    delivered: int = 0
    slow_closes: int = 0
    resyncs: int = 0


class NotificationHub:
    """Publishes events to users' channels and serves each connected client.

    Every client's frames are bounded (`send_buffer_bytes` unsent): a client that cannot
    keep up is closed with 4008 (and resumes from its last offset) instead of slowing anyone
    else or growing memory; a replay is read and sent at the client's pace under the same
    bound. Live messages are handed from the subscription straight to the client's
    transport where it allows (see `ClientConnection.writer`): no task switch and one
    encoding per message per process, however many local clients get it.

    Per socket, `resume` messages are limited to a burst of `resume_burst`, refilled at
    `resume_per_second`; a user has at most `max_sockets_per_user` sockets served by this
    process (None: no bound); the next is closed with 4029.
    """

    def __init__(
        self,
        pubsub: PubSub,
        *,
        send_buffer_bytes: int = 256 * 1024,
        max_event_bytes: int = 64 * 1024,
        ping_interval: float = 25.0,
        ping_timeout: float = 10.0,
        resume_wait: float = 0.5,
        close_timeout: float = 2.0,
        publisher: Publisher | None = None,
        max_sockets_per_user: int | None = None,
        resume_burst: int = 5,
        resume_per_second: float = 0.5,
    ) -> None:
        if send_buffer_bytes < max_event_bytes:
            # Else one large event could close every client that receives it.
            raise ValueError("send_buffer_bytes must be at least max_event_bytes")
        if resume_burst < 1 or not resume_per_second > 0:
            raise ValueError("resume_burst and resume_per_second must be positive")
        self.pubsub = pubsub
        self.send_buffer_bytes = send_buffer_bytes
        self.close_timeout = close_timeout
        self.max_event_bytes = max_event_bytes
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.resume_wait = resume_wait
        self.max_sockets_per_user = max_sockets_per_user
        self.resume_burst = resume_burst
        self.resume_per_second = resume_per_second
        self.stats = HubStats()
        # Given by the composition root to set the batch limits too.
        self.publisher = publisher or Publisher(pubsub, max_event_bytes=max_event_bytes)
        self._closing = False
        # Every client being served (`close_all` closes each one).
        self._clients: set[_Client] = set()
        self._sockets: dict[str, int] = {}  # user -> sockets served here
        # The same message reaches many local clients: encode its frame once.
        self._frames: OrderedDict[tuple[str, str, int], Frame] = OrderedDict()
        self._frame_bytes = 0
        # Set while `run` runs: the clients' occasional work (replays, pings) runs here.
        self._tasks: TaskGroup | None = None

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """The work every client shares, until cancelled: start it with
        `await task_group.start(hub.run)` before `serve`.

        One loop pings every client when its time comes (after asking whether its session
        is still valid) and closes those whose pong is overdue; replays, repairs and pings
        run as short tasks here, only while there is something to do. An idle client thus
        costs no task of its own besides the one serving it.
        """
        if self._tasks is not None:
            raise RuntimeError("NotificationHub.run is already running")
        tick = min(1.0, self.ping_interval / 2, self.ping_timeout / 2)
        try:
            async with anyio.create_task_group() as self._tasks:
                task_status.started()
                while True:
                    await anyio.sleep(tick)
                    now = anyio.current_time()
                    for client in list(self._clients):
                        client.tick(now)
        finally:
            self._tasks = None

    # -- publishing ------------------------------------------------------------------------

    async def publish(
        self, user_id: str, type: str, data: Any = None, *, id: str | None = None
    ) -> Position:
        """Publish an event to every client of `user_id`; `id` makes it idempotent."""
        return await self.publisher.publish(user_id, type, data, id=id)

    async def end_session(self, user_id: str, session: str) -> None:
        """Close that session's clients on every instance (after logout)."""
        await self.publisher.end_session(user_id, session)

    def close_all(self) -> None:
        """Close every client with 1012 (shutdown); new clients are closed so from now on."""
        self._closing = True
        for client in list(self._clients):
            client.close(CloseCode.RESTART, "server shutting down")

    @property
    def closing(self) -> bool:
        return self._closing

    # -- serving a client ------------------------------------------------------------------

    async def serve(
        self,
        client: ClientConnection,
        user_id: str,
        session: str,
        *,
        session_valid: Callable[[], Awaitable[bool]] | None = None,
    ) -> int:
        """Serve one connected client until it leaves or is closed; the close code.

        `session_valid` is asked once the live subscription is open (a logout just before
        it is not missed) and before every ping.
        """
        code, reason = await self._serve(client, user_id, session, session_valid)
        if code != CloseCode.NORMAL or reason:
            await self._close(client, code, reason)
        return code

    async def _close(self, client: ClientConnection, code: int, reason: str) -> None:
        """Send the close; a client that stopped reading takes no close frame either: after
        `close_timeout`, drop the connection and whatever it still holds.

        The drop comes from a task of its own, not by cancelling the close: a server may
        shield its write of the close frame from cancellation (hypercorn's trio worker
        does), and only dropping the connection ends that write."""

        async def drop_when_late(closing: anyio.CancelScope) -> None:
            await anyio.sleep(self.close_timeout)
            client.abort()
            closing.cancel()

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(drop_when_late, tasks.cancel_scope)
            await client.close(code, reason)
            tasks.cancel_scope.cancel()

    async def _serve(
        self,
        client: ClientConnection,
        user_id: str,
        session: str,
        session_valid: Callable[[], Awaitable[bool]] | None,
    ) -> tuple[int, str]:
        if self._tasks is None:
            raise RuntimeError("NotificationHub.serve needs run() running")
        if self.closing:
            return CloseCode.RESTART, "server shutting down"
        sockets = self._sockets.get(user_id, 0)
        if self.max_sockets_per_user is not None and sockets >= self.max_sockets_per_user:
            return CloseCode.TOO_MANY_SOCKETS, (
                f"too many sockets: at most {self.max_sockets_per_user} per user"
            )
        self._sockets[user_id] = sockets + 1
        self.stats.connections += 1
        served = _Client(self, client, user_id, session, session_valid)
        try:
            self._clients.add(served)
            return await served.run()
        except OndokiError as exc:
            # Before streaming (the anchor position): same answer as a failure later on.
            log.warning("closing a client of %s: %s", user_id, exc)
            return CloseCode.INTERNAL, _OUTAGE
        finally:
            self._clients.discard(served)
            self.stats.connections -= 1
            left = self._sockets[user_id] - 1
            if left:
                self._sockets[user_id] = left
            else:
                del self._sockets[user_id]

    def start(self, work: Callable[[], Coroutine[Any, Any, None]]) -> bool:
        """Start `work` in the hub's task group; False when `run` is not running."""
        if self._tasks is None:
            return False
        self._tasks.start_soon(work)
        return True

    def forward(self, delivery: Message | Gap, session: str, outbox: Outbox) -> None:
        """Put what `delivery` means for a client of `session` in its outbox: a
        notification (one frame per message per process), a resync, or nothing (another
        session's logout). Raises ClientClosed: the client's own logout, or too slow."""
        if isinstance(delivery, Gap):
            self.stats.resyncs += 1
            position = delivery.position
            outbox.put(text_frame(ResyncMessage(position.epoch, position.offset)))
            return
        frame = self._frame(delivery, session)
        if frame is not None:
            outbox.put(frame)

    def _frame(self, message: Message, session: str) -> Frame | None:
        key = (message.channel, message.position.epoch, message.position.offset)
        frame = self._frames.get(key)
        if frame is not None:
            return frame
        payload = message.payload
        try:
            envelope = decode_envelope(payload)
            if not payload.isascii():
                payload.decode()  # its data goes out as it is: text frames must be UTF-8
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
            log.warning("dropping an undecodable message on %s at %s", message.channel, key[1:])
            return None
        if isinstance(envelope, EndSession):
            if envelope.session == session:
                raise ClientClosed(CloseCode.SESSION_ENDED, "session ended")
            return None
        event = ShownEvent(envelope.type, envelope.data)
        frame = text_frame(NotificationMessage(key[1], key[2], event))
        self._frames[key] = frame
        self._frame_bytes += len(frame.data)
        # Fan-out reads a frame within moments of its first encoding: a small cache, bounded
        # in bytes, serves it; large events must not pin megabytes here.
        while self._frame_bytes > _FRAME_CACHE_BYTES or len(self._frames) > 256:
            _, dropped = self._frames.popitem(last=False)
            self._frame_bytes -= len(dropped.data)
        return frame


_OUTAGE = "backend unavailable; reconnect and resume"
# One ping frame for every client (its wire bytes are kept on it once written).
_PING_FRAME = Frame(PING)


class _State(Enum):
    """Where a client is in its life; each step only goes forward."""

    CONNECTING = "connecting"  # waiting (up to `resume_wait`) for a first `resume`
    STREAMING = "streaming"  # its stream runs; a `resume` restarts it
    CLOSED = "closed"  # a close code is chosen (the first one wins); serving ends


class _Client:
    """One client while the hub serves it: its state, and the work that serves it.

    The serving task (`run`) subscribes and takes the client's messages. Live events go
    from the subscription straight to the outbox (`_live`); whatever must be read first
    (a replay, a gap, a repair) is drained by a short task in the hub's task group
    (`_drain`), at the client's pace; the hub's loop pings (`tick`). An idle client has no
    task but the serving one: idle memory per socket is what matters at scale.
    """

    __slots__ = (
        "client",
        "closed",
        "drain_scope",
        "hub",
        "outbox",
        "ping_due",
        "pinging",
        "pong_due",
        "position",
        "resume_at",
        "resume_tokens",
        "scope",
        "sender_scope",
        "session",
        "session_valid",
        "state",
        "subscription",
        "user_id",
    )

    def __init__(
        self,
        hub: NotificationHub,
        client: ClientConnection,
        user_id: str,
        session: str,
        session_valid: Callable[[], Awaitable[bool]] | None,
    ) -> None:
        self.hub = hub
        self.client = client
        self.user_id = user_id
        self.session = session
        self.session_valid = session_valid
        self.state = _State.CONNECTING
        self.closed: tuple[int, str] = (CloseCode.NORMAL, "")
        self.position: Position | None = None  # where the next subscription starts
        self.subscription: Subscription | None = None
        self.scope: anyio.CancelScope | None = None  # the serving task's
        self.drain_scope: anyio.CancelScope | None = None  # set while a drain is under way
        self.sender_scope: anyio.CancelScope | None = None  # a queued outbox's sender
        self.ping_due = math.inf
        self.pong_due = math.inf  # when the oldest unanswered ping times out
        self.pinging = False  # a session check and ping are under way
        self.resume_tokens = float(hub.resume_burst)
        self.resume_at = 0.0
        writer = client.writer()
        self.outbox: Outbox = (
            QueuedOutbox(client, hub.send_buffer_bytes, hub.stats)
            if writer is None
            else DirectOutbox(writer, hub.send_buffer_bytes, hub.stats, self._start)
        )

    # -- the life of a client --------------------------------------------------------------

    async def run(self) -> tuple[int, str]:
        """Serve the client; the close code and reason."""
        hub = self.hub
        direct = isinstance(self.outbox, DirectOutbox)
        hub.stats.direct += direct
        try:
            with anyio.CancelScope() as self.scope:
                if hub.closing:  # began while this client was connecting
                    self.close(CloseCode.RESTART, "server shutting down")
                if self.state is not _State.CLOSED:  # (closed before this scope existed)
                    await self._guarded(self._serve)
        finally:
            self.close(CloseCode.NORMAL, "")  # ends the side work, if nothing else did
            hub.stats.direct -= direct
            self.outbox.close()
        return self.closed

    def close(self, code: int, reason: str) -> None:
        """End serving with this code (unless one was chosen already)."""
        if self.state is _State.CLOSED:
            return
        if code == CloseCode.SLOW_CLIENT:
            self.hub.stats.slow_closes += 1
        self.state, self.closed = _State.CLOSED, (code, reason)
        for scope in (self.scope, self.drain_scope, self.sender_scope):
            if scope is not None:
                scope.cancel()

    async def _guarded(self, work: Callable[[], Awaitable[None]]) -> None:
        """Run one piece of work; what ends it chooses the close code."""
        try:
            await work()
        except ClientClosed as exc:
            self.close(exc.code, exc.reason)
        except OndokiError as exc:
            # Only the backend gets here: a client's message never raises past `parse_client`.
            log.warning("closing a client of %s: %s", self.user_id, exc)
            self.close(CloseCode.INTERNAL, _OUTAGE)

    async def _side(self, work: Callable[[], Awaitable[None]]) -> None:
        """Side work in the hub's task group: whatever happens stays with this client."""
        try:
            await self._guarded(work)
        except Exception:
            log.exception("closing a client of %s after an unexpected error", self.user_id)
            self.close(CloseCode.INTERNAL, "internal error; reconnect and resume")

    def _start(self, work: Callable[[], Awaitable[None]]) -> None:
        async def side() -> None:
            await self._side(work)

        if not self.hub.start(side):  # the hub stopped: so does every client
            self.close(CloseCode.RESTART, "server shutting down")

    async def _serve(self) -> None:
        hub = self.hub
        # Anchor at the current position: whatever is published from now on is replayed
        # from history even if the live subscription starts after the first message.
        self.position = await hub.pubsub.position(self.user_id)
        await self._first_message()
        self.state = _State.STREAMING
        self.ping_due = anyio.current_time() + hub.ping_interval
        if isinstance(self.outbox, QueuedOutbox):
            self.sender_scope = anyio.CancelScope()
            self._start(self._send_queued)
        checked = False
        while True:  # a `resume` ends one subscription and starts the next
            async with hub.pubsub.subscribe(self.user_id, since=self.position) as subscription:
                self.subscription = subscription
                subscription.hand_over(self._live)
                subscription.on_pending(self._wake)
                self._wake()  # a replay may be queued already
                if not checked:
                    # A logout published before the subscription was live is in no
                    # stream this client reads: ask the session store once it is.
                    await self._check_session()
                    checked = True
                try:
                    await self._read()
                finally:
                    subscription.hand_over(None)
                    subscription.on_pending(None)
                    self.subscription = None
                    if self.drain_scope is not None:
                        self.drain_scope.cancel()
                        self.drain_scope = None

    # -- the client's messages -------------------------------------------------------------

    async def _first_message(self) -> None:
        with anyio.move_on_after(self.hub.resume_wait):
            data = await self.client.receive()
            if data is None:
                raise ClientClosed(CloseCode.NORMAL, "")
            message, error = parse_client(data)
            if isinstance(message, Resume):
                self.position = Position(message.epoch, message.offset)
            elif error is not None:
                await self.client.send(error)

    async def _read(self) -> None:
        """Take the client's messages; return when a `resume` restarts the stream."""
        while True:
            data = await self.client.receive()
            if data is None:
                raise ClientClosed(CloseCode.NORMAL, "")
            if self._handle(data):
                return

    def _handle(self, data: str | bytes) -> bool:
        """Act on one message; True when it is a `resume` that restarts the stream."""
        message, error = parse_client(data)
        if error is not None:
            self.outbox.put(error)
        elif isinstance(message, Pong):
            self.pong_due = math.inf
        elif isinstance(message, Resume):
            if not self._may_resume(anyio.current_time()):
                self.outbox.put(
                    text_frame(ErrorMessage("rate_limited", "too many resume messages; wait"))
                )
                return False
            # A late resume restarts the stream from there: it may repeat offsets the
            # client already has (resume first to avoid that).
            self.position = Position(message.epoch, message.offset)
            return True
        return False

    def _may_resume(self, now: float) -> bool:
        hub = self.hub
        refill = (now - self.resume_at) * hub.resume_per_second
        self.resume_tokens = min(float(hub.resume_burst), self.resume_tokens + refill)
        self.resume_at = now
        if self.resume_tokens < 1:
            return False
        self.resume_tokens -= 1
        return True

    # -- pings (the hub's loop calls `tick`) ------------------------------------------------

    def tick(self, now: float) -> None:
        """Close the client if its pong is overdue; start a ping when one is due."""
        if self.state is not _State.STREAMING:
            return
        if now >= self.pong_due:
            self.close(CloseCode.PONG_TIMEOUT, "no pong")
        elif now >= self.ping_due and not self.pinging:
            self.pinging = True
            self._start(self._ping)

    async def _ping(self) -> None:
        try:
            await self._check_session()
        finally:
            self.pinging = False
        if self.state is not _State.STREAMING:
            return
        now = anyio.current_time()
        if self.pong_due == math.inf:  # the oldest unanswered ping keeps its deadline
            self.pong_due = now + self.hub.ping_timeout
        self.ping_due = now + self.hub.ping_interval
        self.outbox.put(_PING_FRAME)

    async def _check_session(self) -> None:
        if self.session_valid is not None and not await self.session_valid():
            raise ClientClosed(CloseCode.SESSION_ENDED, "session ended")

    # -- the stream of events --------------------------------------------------------------

    def _live(self, message: Message) -> None:
        # In the task that received the message (the one pub/sub reader, or the
        # publisher): nothing here may wait or raise.
        if self.state is not _State.STREAMING:
            return
        try:
            self.hub.forward(message, self.session, self.outbox)
        except ClientClosed as exc:
            self.close(exc.code, exc.reason)

    def _wake(self) -> None:
        """The subscription has something queued: drain it, unless a drain is under way."""
        if self.drain_scope is not None or self.state is not _State.STREAMING:
            return
        subscription = self.subscription
        if subscription is None or not subscription.pending():
            return
        scope = self.drain_scope = anyio.CancelScope()

        async def drain() -> None:
            await self._drain(subscription, scope)

        self._start(drain)

    async def _drain(self, subscription: Subscription, scope: anyio.CancelScope) -> None:
        """Forward what the subscription has queued, at the client's pace (a replay is read
        page by page as the client takes it); end when nothing is left."""
        hub = self.hub
        try:
            with scope:
                while subscription.pending():
                    # Room first, then take and forward with no wait between: a delivery
                    # held while waiting would leave the subscription looking empty, and a
                    # live message coming then would go out ahead of it.
                    await self.outbox.room(hub.ping_timeout)
                    delivery = await subscription.next_pending()
                    if delivery is None:
                        return
                    hub.forward(delivery, self.session, self.outbox)
        finally:
            if self.drain_scope is scope:
                self.drain_scope = None
                # Queued after the last look (no await since): drain again.
                if self.subscription is subscription:
                    self._wake()

    async def _send_queued(self) -> None:
        assert isinstance(self.outbox, QueuedOutbox) and self.sender_scope is not None
        with self.sender_scope:
            await self.outbox.run()
