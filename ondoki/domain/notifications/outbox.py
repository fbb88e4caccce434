"""Frames on their way to one client, bounded in bytes (see `Outbox`)."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Protocol

import anyio

from ondoki.domain.notifications.protocol import ClientClosed, CloseCode, Frame

if TYPE_CHECKING:
    from ondoki.domain.notifications.hub import ClientConnection, HubStats

# How often a stream waiting for its client to take what it holds looks again (only while
# a replay is ahead of the client; live frames never wait).
_ROOM_POLL = 0.01


class FrameWriter(Protocol):
    """Hands frames to a transport at once, never waiting (see `ClientConnection.writer`)."""

    def write(self, frame: Frame) -> int | None:
        """Write one frame; the bytes the connection then holds unsent (None: not written,
        the connection is closing)."""
        ...

    def unsent(self) -> int:
        """The bytes the connection holds unsent."""
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
        """Wait until the client has taken enough that what waits is within the limit;
        raises ClientClosed (too slow) if that takes longer than `within` seconds.

        A replay waits here between frames, so history is read and sent at the client's
        pace, holding at most the limit unsent, instead of closing the client."""
        if self.unsent() <= self.limit:
            return
        with anyio.move_on_after(within):
            # A transport says nothing when its buffer drains: look again, briefly.
            while self.unsent() > self.limit:  # noqa: ASYNC110
                await anyio.sleep(_ROOM_POLL)
            return
        raise self.too_slow()

    @staticmethod
    def too_slow() -> ClientClosed:
        return ClientClosed(CloseCode.SLOW_CLIENT, "too slow: resume from your last offset")


class DirectOutbox(Outbox):
    """The transport's own buffer is the outbox: frames are written as they come, with no
    task switch and no copy per client (the fast path of fan-out)."""

    def __init__(self, writer: FrameWriter, limit: int, stats: HubStats) -> None:
        super().__init__(limit, stats)
        self.writer = writer

    async def run(self) -> None:
        """Nothing to do (returns at once): `put` writes frames as they come."""

    def close(self) -> None:
        """Nothing is queued here: the transport holds what is unsent."""

    def unsent(self) -> int:
        return self.writer.unsent()

    def put(self, frame: Frame) -> None:
        unsent = self.writer.write(frame)
        if unsent is None:
            return  # closing: the receive side ends the client
        self.stats.delivered += 1
        # What the transport holds beyond (at most) this frame was waiting ahead of it.
        if unsent - len(frame.data) > self.limit:
            raise self.too_slow()


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
