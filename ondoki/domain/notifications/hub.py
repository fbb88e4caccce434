"""The notification hub: serves each connected client its user's events."""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol

import anyio
import msgspec

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
    decode_envelope,
    encode,
    parse_client,
    text_frame,
)
from ondoki.domain.notifications.publishing import Publisher
from ondoki.errors import OndokiError
from ondoki.models import Gap, Message, Position
from ondoki.ports.pubsub import PubSub

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
        self.publisher = Publisher(pubsub, max_event_bytes=max_event_bytes)
        self._closing = False
        # Every client being served (`close_all` closes each one).
        self._clients: set[_Client] = set()
        self._sockets: dict[str, int] = {}  # user -> sockets served here
        # The same message reaches many local clients: encode its frame once.
        self._frames: OrderedDict[tuple[str, str, int], Frame] = OrderedDict()
        self._frame_bytes = 0

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
            # A client that stopped reading takes no close frame either: after
            # `close_timeout`, drop the connection and whatever it still holds.
            with anyio.move_on_after(self.close_timeout) as waiting:
                await client.close(code, reason)
            if waiting.cancelled_caught:
                client.abort()
        return code

    async def _serve(
        self,
        client: ClientConnection,
        user_id: str,
        session: str,
        session_valid: Callable[[], Awaitable[bool]] | None,
    ) -> tuple[int, str]:
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
            return await served.run()
        except OndokiError as exc:
            # Before streaming (the anchor position): same answer as a failure later on.
            log.warning("closing a client of %s: %s", user_id, exc)
            return CloseCode.INTERNAL, _OUTAGE
        finally:
            self.stats.connections -= 1
            left = self._sockets[user_id] - 1
            if left:
                self._sockets[user_id] = left
            else:
                del self._sockets[user_id]

    def _forward(self, delivery: Message | Gap, session: str, outbox: Outbox) -> None:
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
        try:
            envelope = decode_envelope(message.payload)
        except msgspec.DecodeError:
            log.warning("dropping an undecodable message on %s at %s", message.channel, key[1:])
            return None
        if isinstance(envelope, EndSession):
            if envelope.session == session:
                raise ClientClosed(CloseCode.SESSION_ENDED, "session ended")
            return None
        event = msgspec.Raw(encode({"type": envelope.type, "data": envelope.data}))
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


class _State(Enum):
    """Where a client is in its life; each step only goes forward."""

    CONNECTING = "connecting"  # waiting (up to `resume_wait`) for a first `resume`
    STREAMING = "streaming"  # its stream runs; a `resume` restarts it
    CLOSED = "closed"  # a close code is chosen (the first one wins); serving ends


class _Client:
    """One client while the hub serves it: its state, and the two pieces of work that serve
    it. `stream` (its own task) feeds the outbox from the user's subscription; `read` (the
    serving task) takes the client's messages, and pings it when the line goes quiet. No
    other task is made per client: idle memory per socket is what matters at scale.
    """

    __slots__ = (
        "client",
        "closed",
        "hub",
        "outbox",
        "ping_due",
        "pong_due",
        "position",
        "restarting",
        "resume_at",
        "resume_tokens",
        "scope",
        "session",
        "session_valid",
        "state",
        "stream_scope",
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
        self.position: Position | None = None  # where the stream (re)starts
        # Between a resume and the restarted stream: the old one's live messages are dropped
        # (the new stream replays from the resumed position).
        self.restarting = False
        self.scope: anyio.CancelScope | None = None  # everything serving this client
        self.stream_scope: anyio.CancelScope | None = None
        self.ping_due = math.inf
        self.pong_due = math.inf  # when the oldest unanswered ping times out
        self.resume_tokens = float(hub.resume_burst)
        self.resume_at = 0.0
        writer = client.writer()
        self.outbox: Outbox = (
            QueuedOutbox(client, hub.send_buffer_bytes, hub.stats)
            if writer is None
            else DirectOutbox(writer, hub.send_buffer_bytes, hub.stats)
        )

    # -- the life of a client --------------------------------------------------------------

    async def run(self) -> tuple[int, str]:
        """Serve the client; the close code and reason."""
        hub = self.hub
        direct = isinstance(self.outbox, DirectOutbox)
        hub.stats.direct += direct
        hub._clients.add(self)
        try:
            # Anchor at the current position: whatever is published from now on is replayed
            # from history even if the live subscription starts after the first message.
            self.position = await hub.pubsub.position(self.user_id)
            with anyio.CancelScope() as self.scope:
                if hub.closing:  # began while this client was connecting
                    self.close(CloseCode.RESTART, "server shutting down")
                await self._guarded(self._first_message)
                if self.state is _State.CLOSED:
                    return self.closed
                self.state = _State.STREAMING
                self.ping_due = anyio.current_time() + hub.ping_interval
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(self._guarded, self._stream)
                    if isinstance(self.outbox, QueuedOutbox):
                        tasks.start_soon(self._guarded, self.outbox.run)
                    await self._guarded(self._read)
        finally:
            hub._clients.discard(self)
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
        if self.scope is not None:
            self.scope.cancel()

    async def _guarded(self, work: Callable[[], Awaitable[None]]) -> None:
        """Run one piece of work; what ends it chooses the close code."""
        try:
            await work()
        except ClientClosed as exc:
            self.close(exc.code, exc.reason)
        except OndokiError as exc:
            # Only the backend gets here: a client's message never raises past `_receive`.
            log.warning("closing a client of %s: %s", self.user_id, exc)
            self.close(CloseCode.INTERNAL, _OUTAGE)

    # -- the client's messages -------------------------------------------------------------

    async def _first_message(self) -> None:
        with anyio.move_on_after(self.hub.resume_wait):
            data = await self.client.receive()
            if data is None:
                self.close(CloseCode.NORMAL, "")
                return
            message, error = parse_client(data)
            if isinstance(message, Resume):
                self.position = Position(message.epoch, message.offset)
            elif error is not None:
                await self.client.send(error)

    async def _read(self) -> None:
        """Take the client's messages; between them, ping it on time."""
        while True:
            now = anyio.current_time()
            if now >= min(self.ping_due, self.pong_due):
                await self._tick(now)
                continue
            with anyio.move_on_after(min(self.ping_due, self.pong_due) - now) as waiting:
                data = await self.client.receive()
            if waiting.cancelled_caught:
                continue
            if data is None:
                self.close(CloseCode.NORMAL, "")
                return
            self._handle(data)

    def _handle(self, data: str | bytes) -> None:
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
                return
            # A late resume restarts the stream from there: it may repeat offsets the
            # client already has (resume first to avoid that).
            self.position, self.restarting = Position(message.epoch, message.offset), True
            if self.stream_scope is not None:
                self.stream_scope.cancel()

    def _may_resume(self, now: float) -> bool:
        hub = self.hub
        refill = (now - self.resume_at) * hub.resume_per_second
        self.resume_tokens = min(float(hub.resume_burst), self.resume_tokens + refill)
        self.resume_at = now
        if self.resume_tokens < 1:
            return False
        self.resume_tokens -= 1
        return True

    async def _tick(self, now: float) -> None:
        """A ping or a pong is due: time the client out, or check its session and ping."""
        hub = self.hub
        if now >= self.pong_due:
            raise ClientClosed(CloseCode.PONG_TIMEOUT, "no pong")
        await self._check_session()
        if self.pong_due == math.inf:  # the oldest unanswered ping keeps its deadline
            self.pong_due = now + hub.ping_timeout
        self.ping_due = now + hub.ping_interval
        self.outbox.put(Frame(PING))

    async def _check_session(self) -> None:
        if self.session_valid is not None and not await self.session_valid():
            raise ClientClosed(CloseCode.SESSION_ENDED, "session ended")

    # -- the stream of events --------------------------------------------------------------

    async def _stream(self) -> None:
        hub, checked = self.hub, False
        while True:
            with anyio.CancelScope() as self.stream_scope:
                position, self.restarting = self.position, False
                async with hub.pubsub.subscribe(self.user_id, since=position) as subscription:
                    subscription.hand_over(self._live)
                    if not checked:
                        # A logout published before the subscription was live is in no
                        # stream this client reads: ask the session store once it is.
                        await self._check_session()
                        checked = True
                    async for delivery in subscription:
                        # Replays, repairs and backlog: at the client's pace.
                        await self.outbox.room(hub.ping_timeout)
                        hub._forward(delivery, self.session, self.outbox)
                await anyio.sleep_forever()  # the adapter closed: only a resume restarts

    def _live(self, message: Message) -> None:
        # In the task that received the message (the one pub/sub reader, or the
        # publisher): nothing here may wait or raise.
        if self.state is not _State.STREAMING or self.restarting:
            return
        try:
            self.hub._forward(message, self.session, self.outbox)
        except ClientClosed as exc:
            self.close(exc.code, exc.reason)
