"""`BufferedSubscription`'s adapter-facing API, on a minimal adapter of its own."""

from __future__ import annotations

import pytest

from ondoki.adapterkit.cursor import Cursor
from ondoki.adapterkit.subscription import BufferedSubscription
from ondoki.models import Message, Position
from tests.waits import take

pytestmark = pytest.mark.anyio


class _History(BufferedSubscription):
    """Repairs from a list that stands for the backend's history."""

    def __init__(self, history: list[bytes], buffer: int, buffer_bytes: int = 1 << 20) -> None:
        super().__init__(Cursor("c", "e", 0), buffer, buffer_bytes)
        self.history = history
        self.repairs = 0

    async def _repair(self) -> None:
        self.repairs += 1
        self._stale = False
        entries = list(enumerate(self.history, start=1))
        self._queue_ready(self._cursor.catch_up("e", len(self.history), entries), len(entries))


def message(offset: int) -> Message:
    return Message("c", Position("e", offset), b"m%d" % offset)


def test_the_base_class_is_abstract() -> None:
    with pytest.raises(TypeError, match="_repair"):
        BufferedSubscription(Cursor("c", "e", 0), 1, 1)  # type: ignore[abstract]


async def test_pushed_messages_arrive_in_order() -> None:
    subscription = _History([], buffer=4)
    subscription.push(message(1))
    subscription.push(message(2))
    assert await take(subscription, 2) == [message(1), message(2)]
    assert subscription.repairs == 0


async def test_a_lost_buffer_is_refilled_from_history() -> None:
    history = [b"m1", b"m2", b"m3"]
    subscription = _History(history, buffer=4)
    subscription.push(message(1))
    subscription.lose_buffer()  # m1 dropped, m2 and m3 never pushed: all come from history
    subscription.push(message(3))
    assert await take(subscription, 3) == [message(1), message(2), message(3)]
    assert subscription.repairs == 1


async def test_an_overflowing_buffer_loses_itself_rather_than_block() -> None:
    subscription = _History([b"m%d" % n for n in range(1, 6)], buffer=2)
    for offset in range(1, 6):
        subscription.push(message(offset))  # never waits, though nobody reads
    assert [m.position.offset for m in await take(subscription, 5)] == [1, 2, 3, 4, 5]
    assert subscription.repairs == 1


async def test_a_buffer_past_its_bytes_loses_itself_too() -> None:
    # Bounded in messages only, 1,024 live events of 60 KB each could wait for one
    # replaying subscriber (60 MB); in bytes, the buffer holds about one replay page.
    history = [b"x" * 100 for _ in range(6)]
    subscription = _History(history, buffer=1024, buffer_bytes=250)
    subscription.hand_over(lambda message: None)
    subscription.lose_buffer()  # a replay is due: live messages queue behind it
    for offset in range(1, 7):
        subscription.push(Message("c", Position("e", offset), history[offset - 1]))
        assert subscription._inbox_bytes <= 250
    assert [m.position.offset for m in await take(subscription, 6)] == [1, 2, 3, 4, 5, 6]
    assert subscription._inbox_bytes == 0


async def test_close_ends_iteration_and_drops_the_live_buffer() -> None:
    subscription = _History([b"m1"], buffer=4)
    subscription.push(message(1))
    subscription.close()
    assert [delivery async for delivery in subscription] == []
    assert subscription.repairs == 0
