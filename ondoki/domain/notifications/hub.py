"""The notification hub: serves each connected client its user's events."""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
import msgspec

from ondoki.domain.notifications.outbox import ClientClosed, DirectOutbox, Outbox, QueuedOutbox
from ondoki.domain.notifications.protocol import (
    PING,
    CloseCode,
    EndSession,
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

    def writer(self) -> Callable[[Frame], int | None] | None:
        """A function that hands a frame to the transport at once, never waiting, and
        returns the bytes the connection then holds unsent (None: not written, the
        connection is closing); None when the transport cannot do that (the hub then queues
        frames and `send`s them one by one)."""
        ...

    def abort(self) -> None:
        """Drop the connection at once with whatever it holds unsent, if the transport
        allows (a client that stopped reading would never take its close frame)."""
        ...

    async def receive(self) -> str | None:
        """The next text message; None when the client has gone."""
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
    else or growing memory. Live messages are handed from the subscription straight to the
    client's transport where it allows (see `ClientConnection.writer`): no task switch and
    one encoding per message per process, however many local clients get it.
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
    ) -> None:
        if send_buffer_bytes < max_event_bytes:
            # Else one large event could close every client that receives it.
            raise ValueError("send_buffer_bytes must be at least max_event_bytes")
        self.pubsub = pubsub
        self.send_buffer_bytes = send_buffer_bytes
        self.close_timeout = close_timeout
        self.max_event_bytes = max_event_bytes
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.resume_wait = resume_wait
        self.stats = HubStats()
        # Given by the composition root to set the batch limits too.
        self.publisher = publisher or Publisher(pubsub, max_event_bytes=max_event_bytes)
        self._closing = False
        # How to close each client being served (`close_all` calls every one).
        self._closers: set[Callable[[int, str], None]] = set()
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
        """Close every client with 1012 (shutdown); new clients are refused from now on."""
        self._closing = True
        for close in list(self._closers):
            close(CloseCode.RESTART, "server shutting down")

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
        """Serve one connected client until it leaves or is closed; the close code."""
        if self.closing:
            await client.close(CloseCode.RESTART, "server shutting down")
            return CloseCode.RESTART
        self.stats.connections += 1
        try:
            code, reason = await self._serve(client, user_id, session, session_valid)
        except OndokiError as exc:
            # Before the tasks start (the anchor position, the first message): same answer
            # as a failure later on.
            log.warning("closing a client of %s: %s", user_id, exc)
            code, reason = CloseCode.INTERNAL, "backend unavailable; reconnect and resume"
        finally:
            self.stats.connections -= 1
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
        # Anchor at the current position: whatever is published from now on is replayed from
        # history even if the live subscription starts after the client's first message.
        start = await self.pubsub.position(user_id)
        since = start
        pending: str | None = None
        with anyio.move_on_after(self.resume_wait):
            pending = await client.receive()
            if pending is None:
                return CloseCode.NORMAL, ""
        if pending is not None:
            since, error = self._parse_first(pending, start)
            if error is not None:
                await client.send(error)

        stream = _Restarts(since)
        pongs = _PongClock()
        closed: list[tuple[int, str]] = []

        def close(code: int, reason: str) -> None:
            if code == CloseCode.SLOW_CLIENT and not closed:
                self.stats.slow_closes += 1
            closed.append((code, reason))
            tasks.cancel_scope.cancel()

        write = client.writer()
        outbox: Outbox = (
            QueuedOutbox(client, self.send_buffer_bytes, self.stats)
            if write is None
            else DirectOutbox(write, self.send_buffer_bytes, self.stats)
        )
        enqueue = outbox.put

        async def guarded(task: Callable[[], Awaitable[None]]) -> None:
            try:
                await task()
            except ClientClosed as exc:
                close(exc.code, exc.reason)
            except OndokiError as exc:
                log.warning("closing a client of %s: %s", user_id, exc)
                close(CloseCode.INTERNAL, "backend unavailable; reconnect and resume")

        def live(message: Message) -> None:
            # In the task that received the message (the one pub/sub reader, or the
            # publisher): nothing here may wait or raise.
            if closed or stream.restarting:
                return
            try:
                self._forward(message, session, enqueue)
            except ClientClosed as exc:
                close(exc.code, exc.reason)

        async def pump() -> None:
            while True:
                with anyio.CancelScope() as stream.scope:
                    position, stream.restarting = stream.position, False
                    async with self.pubsub.subscribe(user_id, since=position) as subscription:
                        subscription.hand_over(live)
                        async for delivery in subscription:
                            self._forward(delivery, session, enqueue)
                    await anyio.sleep_forever()  # the adapter closed: only a resume restarts

        async def reader() -> None:
            while True:
                text = await client.receive()
                if text is None:
                    close(CloseCode.NORMAL, "")
                    return
                message, error = parse_client(text)
                if error is not None:
                    enqueue(error)
                elif isinstance(message, Pong):
                    pongs.answered()
                elif isinstance(message, Resume):
                    # A late resume restarts the stream from there: it may repeat offsets the
                    # client already has (resume first to avoid that; see docs/websocket.md).
                    stream.restart(Position(message.epoch, message.offset))

        async def pinger() -> None:
            while True:
                await anyio.sleep(self.ping_interval)
                if session_valid is not None and not await session_valid():
                    raise ClientClosed(CloseCode.SESSION_ENDED, "session ended")
                pongs.pinged(anyio.current_time())
                enqueue(Frame(PING))
                await anyio.sleep(self.ping_timeout)
                if pongs.overdue(anyio.current_time(), self.ping_timeout):
                    raise ClientClosed(CloseCode.PONG_TIMEOUT, "no pong")

        self.stats.direct += write is not None
        try:
            async with anyio.create_task_group() as tasks:
                self._closers.add(close)
                if self._closing:  # began while this client was connecting
                    close(CloseCode.RESTART, "server shutting down")
                tasks.start_soon(guarded, outbox.run)
                tasks.start_soon(guarded, pump)
                tasks.start_soon(guarded, reader)
                tasks.start_soon(guarded, pinger)
        finally:
            self._closers.discard(close)
            self.stats.direct -= write is not None
            outbox.close()
        return closed[0] if closed else (CloseCode.NORMAL, "")

    def _parse_first(self, text: str, start: Position) -> tuple[Position, Frame | None]:
        message, error = parse_client(text)
        if isinstance(message, Resume):
            return Position(message.epoch, message.offset), None
        return start, error

    def _forward(
        self, delivery: Message | Gap, session: str, enqueue: Callable[[Frame], None]
    ) -> None:
        if isinstance(delivery, Gap):
            self.stats.resyncs += 1
            position = delivery.position
            enqueue(text_frame(ResyncMessage(position.epoch, position.offset)))
            return
        frame = self._frame(delivery, session)
        if frame is not None:
            enqueue(frame)

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


class _Restarts:
    """Where a client's stream (re)starts: a late `resume` cancels the one under way."""

    def __init__(self, position: Position | None) -> None:
        self.position = position
        self.scope: anyio.CancelScope | None = None
        # Between a resume and the new stream: the old one's live messages are dropped
        # (the new stream replays from the resumed position).
        self.restarting = False

    def restart(self, position: Position) -> None:
        self.position, self.restarting = position, True
        if self.scope is not None:
            self.scope.cancel()


class _PongClock:
    """When the oldest unanswered ping was sent (None when every ping was answered)."""

    def __init__(self) -> None:
        self.waiting_since: float | None = None

    def pinged(self, now: float) -> None:
        if self.waiting_since is None:
            self.waiting_since = now

    def answered(self) -> None:
        self.waiting_since = None

    def overdue(self, now: float, timeout: float) -> bool:
        return self.waiting_since is not None and now - self.waiting_since >= timeout
