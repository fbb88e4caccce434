"""Batches and broadcasts of users' events (`Publisher`), on every PubSub adapter."""

from __future__ import annotations

import msgspec
import pytest

from ondoki.domain.notifications import Event, Publisher, UserEvent
from ondoki.errors import InvalidInput, TooLarge
from ondoki.models import Delivery, Message, Position
from tests.contract.conftest import InspectablePubSub
from tests.waits import take

pytestmark = pytest.mark.anyio


def events_of(deliveries: list[Delivery]) -> list[Event]:
    assert all(isinstance(d, Message) for d in deliveries), deliveries
    return [
        msgspec.json.decode(d.payload, type=Event) for d in deliveries if isinstance(d, Message)
    ]


async def positions(pubsub: InspectablePubSub, *users: str) -> list[Position]:
    return [await pubsub.position(user) for user in users]


async def test_a_batch_keeps_each_users_order(pubsub: InspectablePubSub) -> None:
    publisher = Publisher(pubsub)
    batch = [UserEvent(f"u{n % 3}", "step", {"n": n}) for n in range(12)]
    async with pubsub.subscribe("u0") as u0, pubsub.subscribe("u2") as u2:
        got = await publisher.publish_many(batch)
        assert [p.offset for p in got] == [1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]
        assert [e.data["n"] for e in events_of(await take(u0, 4))] == [0, 3, 6, 9]
        assert [e.data["n"] for e in events_of(await take(u2, 4))] == [2, 5, 8, 11]
    assert publisher.published == 12


async def test_a_batch_is_idempotent_per_item(pubsub: InspectablePubSub) -> None:
    publisher = Publisher(pubsub)
    batch = [UserEvent("alice", "a", id="a-1"), UserEvent("bob", "b"), UserEvent("alice", "c")]
    first = await publisher.publish_many(batch)
    again = await publisher.publish_many(batch)
    assert again[0] == first[0]  # the item with an id is not stored twice
    assert again[1].offset == first[1].offset + 1
    assert again[2].offset == first[2].offset + 1


@pytest.mark.parametrize(
    ("bad", "named"),
    [
        (UserEvent("no spaces allowed", "t"), "events[2]: user_id"),
        (UserEvent("carol", "bad type!"), "events[2]: type"),
        (UserEvent("carol", "t", id=""), "events[2]: id"),
        # A lone surrogate: no UTF-8 encodes it (Redis's client raised UnicodeEncodeError
        # while sending, failing every publish that shared the call).
        (UserEvent("carol", "t", id="\ud800"), "events[2]: id"),
        (UserEvent("carol", "t", {"text": "\ud800"}), "events[2]: data cannot be encoded"),
        (UserEvent("carol", "t", {"when": object()}), "events[2]: data cannot be encoded"),
        (UserEvent("carol", "t", {(1, 2): "tuple key"}), "events[2]: data cannot be encoded"),
    ],
)
async def test_a_bad_item_refuses_the_whole_batch_naming_it(
    pubsub: InspectablePubSub, bad: UserEvent, named: str
) -> None:
    publisher = Publisher(pubsub)
    before = await positions(pubsub, "alice", "bob")
    with pytest.raises(InvalidInput) as refused:
        await publisher.publish_many([UserEvent("alice", "t"), UserEvent("bob", "t"), bad])
    assert str(refused.value).startswith(named)
    assert refused.value.fields["index"] == 2
    assert await positions(pubsub, "alice", "bob") == before
    assert publisher.published == 0


async def test_data_nested_past_the_encoders_depth_is_invalid_input(
    pubsub: InspectablePubSub,
) -> None:
    publisher = Publisher(pubsub)
    deep: list[object] = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(InvalidInput, match="data cannot be encoded as JSON"):
        await publisher.publish("alice", "t", deep)
    assert [p.offset for p in await positions(pubsub, "alice")] == [0]


async def test_a_batch_past_its_limits_is_refused_naming_the_limit(
    pubsub: InspectablePubSub,
) -> None:
    publisher = Publisher(pubsub, max_event_bytes=100, max_batch_events=3, max_batch_bytes=200)
    with pytest.raises(TooLarge, match="4 items; the limit is 3"):
        await publisher.publish_many([UserEvent("alice", "t")] * 4)
    with pytest.raises(TooLarge, match=r"events\[1\]: event is \d+ bytes; the limit is 100"):
        await publisher.publish_many([UserEvent("alice", "t"), UserEvent("bob", "t", "x" * 100)])
    with pytest.raises(TooLarge, match="over 200 bytes"):
        await publisher.publish_many([UserEvent("alice", "t", "x" * 60)] * 3)
    with pytest.raises(TooLarge, match="4 items; the limit is 3"):
        await publisher.broadcast(["a", "b", "c", "d"], "t")
    assert [p.offset for p in await positions(pubsub, "alice", "bob", "a")] == [0, 0, 0]


async def test_a_broadcast_reaches_every_user_once(pubsub: InspectablePubSub) -> None:
    publisher = Publisher(pubsub)
    users = [f"viewer-{n}" for n in range(20)]
    await publisher.publish("viewer-3", "earlier")
    async with pubsub.subscribe("viewer-0") as first, pubsub.subscribe("viewer-3") as third:
        got = await publisher.broadcast(users, "guide.updated", {"v": 2}, id="guide-v2")
        assert [p.offset for p in got] == [1, 1, 1, 2] + [1] * 16
        assert events_of(await take(first, 1)) == [Event("guide.updated", {"v": 2})]
        assert events_of(await take(third, 1)) == [Event("guide.updated", {"v": 2})]
    # A retried broadcast (same id) publishes to nobody twice.
    assert await publisher.broadcast(users, "guide.updated", {"v": 2}, id="guide-v2") == got
    assert publisher.published == 41


@pytest.mark.parametrize(
    ("users", "named"),
    [(["ok", "not ok"], "user_ids[1]: user_id"), (["a", "b", "a"], "user_ids[2]: 'a' is listed")],
)
async def test_a_broadcast_with_a_bad_user_publishes_nothing(
    pubsub: InspectablePubSub, users: list[str], named: str
) -> None:
    publisher = Publisher(pubsub)
    with pytest.raises(InvalidInput) as refused:
        await publisher.broadcast(users, "t")
    assert str(refused.value).startswith(named)
    assert [p.offset for p in await positions(pubsub, "ok", "a", "b")] == [0, 0, 0]
