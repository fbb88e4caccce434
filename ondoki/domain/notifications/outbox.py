"""Frames on their way to one client, bounded in bytes (see `Outbox`)."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol

import anyio

from ondoki.domain.notifications.protocol import ClientClosed, CloseCode, Frame

if TYPE_CHECKING:
    from ondoki.domain.notifications.hub import ClientConnection, HubStats

# How often a stream waiting for its client to take what it holds looks again (only while
# a replay is ahead of the client; live frames never wait).
_ROOM_POLL = 0.01


class FrameWriter(Protocol):
    """Hands frames to a transport at once, never waiting (see `ClientConnection.writer`).

    A transport that writes in the background (asyncio's) takes every frame whole. One that
    does not (a trio socket) writes what the kernel takes at once and keeps the rest
    *waiting*, for `flush` to write as the client takes it."""

    def write(self, frame: Frame) -> int | None:
        """Write one frame; the bytes the connection then holds unsent (None: not written,
        the connection is closing)."""
        ...

    def unsent(self) -> int:
        """The bytes the connection holds unsent."""
        ...

    def waiting(self) -> bool:
        """Whether bytes wait for `flush` (never, where the transport writes them itself)."""
        ...

    async def flush(self) -> None:
        """Write what waits, as fast as the client takes it; return when nothing waits."""
        ...


class Outbox(ABC):
    """Frames on their way to one client, bounded in bytes: `put` never waits. A client
    that still has more than `limit` bytes to take when a new frame comes is too slow: it
    is closed with 4008 and resumes from its last offset. (Counting what waits *ahead* of
    the new frame means one frame alone, however large, never closes a client that keeps
    up.)"""

    def __init__(self, limit: int, stats: HubStats) -> None:
        self.limit = limit
        self.stats = stats

    @abstractmethod
    def put(self, frame: Frame) -> None:
        """Take a frame for the client at once; raises ClientClosed when it is too slow."""

    @abstractmethod
    async def run(self) -> None:
        """The outbox's own work, for as long as the client is served."""

    @abstractmethod
    def close(self) -> None:
        """Drop what is still queued."""

    @abstractmethod
    def unsent(self) -> int:
        """The bytes waiting for the client."""

    async def room(self, within: float) -> None:
        """Wait until the client has taken enough that at most half the limit waits;
        raises ClientClosed (too slow) if that takes longer than `within` seconds.

        A replay waits here between frames, so history is read and sent at the client's
        pace instead of closing the client. It keeps at most half the limit (and one frame)
        unsent, so that live frames coming meanwhile find room: filled to the limit, the
        first of them would close a client that keeps up."""
        target = self.limit // 2
        if self.unsent() <= target:
            return
        with anyio.move_on_after(within):
            # A transport says nothing when its buffer drains: look again, briefly.
            while self.unsent() > target:  # noqa: ASYNC110
                await anyio.sleep(_ROOM_POLL)
            return
        raise self.too_slow()

    @staticmethod
    def too_slow() -> ClientClosed:
        return ClientClosed(CloseCode.SLOW_CLIENT, "too slow: resume from your last offset")


class DirectOutbox(Outbox):
    """The transport's own buffer is the outbox: frames are written as they come, with no
    task switch and no copy per client (the fast path of fan-out).

    When the writer keeps bytes waiting (`FrameWriter.waiting`), `start` runs a short task
    that flushes them, and ends when nothing waits: a client that keeps up costs no task.
    """

    def __init__(
        self,
        writer: FrameWriter,
        limit: int,
        stats: HubStats,
        start: Callable[[Callable[[], Awaitable[None]]], None],
    ) -> None:
        super().__init__(limit, stats)
        self.writer = writer
        self.start = start
        self.flushing: anyio.CancelScope | None = None  # while a flush runs

    async def run(self) -> None:
        """Nothing to do (returns at once): `put` writes frames as they come."""

    def close(self) -> None:
        """Stop flushing: what is unsent stays with the transport, and a close frame sent
        after this goes out behind it."""
        if self.flushing is not None:
            self.flushing.cancel()

    def unsent(self) -> int:
        return self.writer.unsent()

    def put(self, frame: Frame) -> None:
        writer = self.writer
        unsent = writer.write(frame)
        if unsent is None:
            return  # closing: the receive side ends the client
        self.stats.delivered += 1
        # What the transport holds beyond (at most) this frame was waiting ahead of it.
        if unsent - len(frame.data) > self.limit:
            raise self.too_slow()
        if unsent and self.flushing is None and writer.waiting():
            self.flushing = anyio.CancelScope()
            self.start(self._flush)

    async def _flush(self) -> None:
        scope = self.flushing
        assert scope is not None
        try:
            with scope:
                await self.writer.flush()
        finally:
            self.flushing = None


class QueuedOutbox(Outbox):
    """A queue of frames that `run` sends one by one, for transports that must be awaited."""

    def __init__(self, client: ClientConnection, limit: int, stats: HubStats) -> None:
        super().__init__(limit, stats)
        self.client = client
        self.queued = 0  # bytes waiting or being sent
        self.send, self.receive = anyio.create_memory_object_stream[Frame](math.inf)

    def put(self, frame: Frame) -> None:
        if self.queued > self.limit:
            raise self.too_slow()
        self.queued += len(frame.data)
        self.send.send_nowait(frame)

    async def run(self) -> None:
        async for frame in self.receive:
            await self.client.send(frame)
            self.queued -= len(frame.data)
            self.stats.delivered += 1

    def close(self) -> None:
        self.send.close()
        self.receive.close()

    def unsent(self) -> int:
        return self.queued
