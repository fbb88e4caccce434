"""Frames on their way to one client, bounded in bytes (see `Outbox`)."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING

import anyio

from ondoki.domain.notifications.protocol import CloseCode, Frame

if TYPE_CHECKING:
    from ondoki.domain.notifications.hub import ClientConnection, HubStats


class ClientClosed(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


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

    @staticmethod
    def too_slow() -> ClientClosed:
        return ClientClosed(CloseCode.SLOW_CLIENT, "too slow: resume from your last offset")


class DirectOutbox(Outbox):
    """The transport's own buffer is the outbox: frames are written as they come, with no
    task switch and no copy per client (the fast path of fan-out)."""

    def __init__(self, write: Callable[[Frame], int | None], limit: int, stats: HubStats) -> None:
        super().__init__(limit, stats)
        self.write = write

    async def run(self) -> None:
        """Nothing to do (returns at once): `put` writes frames as they come."""

    def close(self) -> None:
        """Nothing is queued here: the transport holds what is unsent."""

    def put(self, frame: Frame) -> None:
        unsent = self.write(frame)
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
