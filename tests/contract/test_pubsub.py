"""The PubSub port's contract, run against every adapter (see conftest.py)."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest

from ondoki.errors import InvalidInput, PubSubError
from ondoki.models import Delivery, Gap, Message, Position, PubSubStats
from ondoki.ports.pubsub import Publication, Subscription
from tests.contract.conftest import InspectablePubSub, PubSubFactory
from tests.waits import take

pytestmark = pytest.mark.anyio


async def take_handed(
    subscription: Subscription, count: int, *, within: float = 5.0
) -> tuple[list[Delivery], int]:
    """The next `count` deliveries with a receiver handed the live ones, in the order they
    came by either way; and how many came through the receiver."""
    got: list[Delivery] = []
    handed = 0
    done = anyio.Event()

    def receive(message: Message) -> None:
        nonlocal handed
        handed += 1
        got.append(message)
        if len(got) >= count:
            done.set()

    subscription.hand_over(receive)
    try:
        with anyio.fail_after(within):
            async with anyio.create_task_group() as tasks:

                async def iterate() -> None:
                    async for delivery in subscription:
                        got.append(delivery)
                        if len(got) >= count:
                            done.set()

                tasks.start_soon(iterate)
                await done.wait()
                tasks.cancel_scope.cancel()
    finally:
        subscription.hand_over(None)
    return got, handed


async def quiet(subscription: Subscription, *, within: float = 0.2) -> bool:
    """True when nothing is delivered for `within` seconds."""
    with anyio.move_on_after(within):
        async for delivery in subscription:
            pytest.fail(f"unexpected delivery {delivery!r}")
    return True


def payloads(deliveries: list[Delivery]) -> list[bytes]:
    assert all(isinstance(d, Message) for d in deliveries), deliveries
    return [d.payload for d in deliveries if isinstance(d, Message)]


def numbered(first: int, last: int) -> list[bytes]:
    return [b"m%d" % n for n in range(first, last + 1)]


async def publish_numbered(
    pubsub: InspectablePubSub, channel: str, first: int, last: int
) -> list[Position]:
    return [await pubsub.publish(channel, payload) for payload in numbered(first, last)]


async def publish_soon(pubsub: InspectablePubSub, channel: str, first: int, last: int) -> None:
    """`publish_numbered` once the caller has had a moment to start reading."""
    await anyio.sleep(0.05)
    await publish_numbered(pubsub, channel, first, last)


# -- statistics ----------------------------------------------------------------------------


async def test_stats_start_at_zero_and_normal_delivery_repairs_nothing(
    pubsub: InspectablePubSub,
) -> None:
    assert pubsub.stats == PubSubStats()
    async with pubsub.subscribe("calm") as subscription:
        await publish_numbered(pubsub, "calm", 1, 3)
        assert payloads(await take(subscription, 3)) == numbered(1, 3)
    assert pubsub.stats == PubSubStats()


# -- positions -----------------------------------------------------------------------------


async def test_offsets_increase_by_one_in_one_epoch(pubsub: InspectablePubSub) -> None:
    positions = await publish_numbered(pubsub, "user-1", 1, 5)
    assert [p.offset for p in positions] == [1, 2, 3, 4, 5]
    assert len({p.epoch for p in positions}) == 1
    assert positions[0].epoch != ""
    assert await pubsub.position("user-1") == positions[-1]


async def test_position_of_a_new_channel_starts_its_epoch(pubsub: InspectablePubSub) -> None:
    start = await pubsub.position("fresh")
    assert start.offset == 0 and start.epoch != ""
    assert await pubsub.position("fresh") == start
    first = await pubsub.publish("fresh", b"hello")
    assert first == Position(start.epoch, 1)
    # A client that took the position before anything was published resumes without a Gap.
    async with pubsub.subscribe("fresh", since=start) as subscription:
        [message] = await take(subscription, 1)
    assert message == Message("fresh", first, b"hello")


# -- live delivery -------------------------------------------------------------------------


async def test_live_messages_arrive_in_order_with_their_positions(
    pubsub: InspectablePubSub,
) -> None:
    async with pubsub.subscribe("live") as subscription:
        positions = await publish_numbered(pubsub, "live", 1, 20)
        got = await take(subscription, 20)
    assert got == [
        Message("live", position, payload)
        for position, payload in zip(positions, numbered(1, 20), strict=True)
    ]


async def test_every_subscriber_gets_every_message(pubsub: InspectablePubSub) -> None:
    async with (
        pubsub.subscribe("shared") as first,
        pubsub.subscribe("shared") as second,
    ):
        assert pubsub.local_subscribers("shared") == 2
        await publish_numbered(pubsub, "shared", 1, 10)
        assert payloads(await take(first, 10)) == numbered(1, 10)
        assert payloads(await take(second, 10)) == numbered(1, 10)


async def test_channels_are_isolated(pubsub: InspectablePubSub) -> None:
    async with pubsub.subscribe("alice") as alice, pubsub.subscribe("bob") as bob:
        await pubsub.publish("alice", b"for alice")
        await pubsub.publish("bob", b"for bob")
        await pubsub.publish("alice:suffix", b"for nobody here")
        assert payloads(await take(alice, 1)) == [b"for alice"]
        assert payloads(await take(bob, 1)) == [b"for bob"]
        assert await quiet(alice)
        assert await quiet(bob)
    alice_offset = (await pubsub.position("alice")).offset
    assert alice_offset == 1


async def test_without_since_only_later_messages_arrive(pubsub: InspectablePubSub) -> None:
    await publish_numbered(pubsub, "later", 1, 3)
    async with pubsub.subscribe("later") as subscription:
        fourth = await pubsub.publish("later", b"m4")
        [message] = await take(subscription, 1)
        assert message == Message("later", fourth, b"m4")
        assert await quiet(subscription)


async def test_payload_bytes_round_trip_exactly(pubsub: InspectablePubSub) -> None:
    samples = [b"", bytes(range(256)), b"\x00" * 3, "ünïcode ✓".encode(), bytes(100_000)]
    async with pubsub.subscribe("bytes") as subscription:
        positions = [await pubsub.publish("bytes", sample) for sample in samples]
        assert payloads(await take(subscription, len(samples))) == samples
    before = Position(positions[0].epoch, 0)
    async with pubsub.subscribe("bytes", since=before) as replay:
        assert payloads(await take(replay, len(samples))) == samples


# -- resuming ------------------------------------------------------------------------------


async def test_resume_replays_what_was_missed_then_continues_live(
    pubsub: InspectablePubSub,
) -> None:
    positions = await publish_numbered(pubsub, "resume", 1, 4)
    async with pubsub.subscribe("resume", since=positions[1]) as subscription:
        replayed = await take(subscription, 2)
        assert replayed == [
            Message("resume", positions[2], b"m3"),
            Message("resume", positions[3], b"m4"),
        ]
        await publish_numbered(pubsub, "resume", 5, 6)
        assert payloads(await take(subscription, 2)) == numbered(5, 6)
        assert await quiet(subscription)


async def test_resume_at_the_latest_position_waits_for_new_messages(
    pubsub: InspectablePubSub,
) -> None:
    positions = await publish_numbered(pubsub, "caught-up", 1, 3)
    async with pubsub.subscribe("caught-up", since=positions[-1]) as subscription:
        assert await quiet(subscription)
        await pubsub.publish("caught-up", b"m4")
        assert payloads(await take(subscription, 1)) == [b"m4"]


@pytest.mark.parametrize("handed", [False, True], ids=["iterated", "handed-over"])
async def test_resume_seam_has_no_gap_and_no_duplicate_while_publishing(
    make_pubsub: PubSubFactory, handed: bool
) -> None:
    total, starts = 240, range(0, 240, 30)
    async with make_pubsub(history_size=1000) as pubsub:
        published: list[Position] = []
        reached = {start: anyio.Event() for start in starts}
        received: dict[int, list[Delivery]] = {}

        async def publisher() -> None:
            for n in range(1, total + 1):
                position = await pubsub.publish("seam", b"m%d" % n)
                published.append(position)
                if n - 1 in reached:
                    reached[n - 1].set()

        async def resumer(start: int) -> None:
            # Each subscriber resumes from a different point while messages keep coming, so
            # the history read and the live stream overlap differently each time.
            with anyio.fail_after(10):
                await reached[start].wait()
            async with pubsub.subscribe("seam", since=published[start]) as subscription:
                count = total - start - 1
                if handed:
                    received[start], _ = await take_handed(subscription, count, within=10)
                else:
                    received[start] = await take(subscription, count, within=10)
                assert await quiet(subscription, within=0.05)

        async with anyio.create_task_group() as tasks:
            for start in starts:
                tasks.start_soon(resumer, start)
            tasks.start_soon(publisher)

    for start in starts:
        assert payloads(received[start]) == numbered(start + 2, total), start


async def test_trimmed_history_gives_a_gap_then_live(make_pubsub: PubSubFactory) -> None:
    async with make_pubsub(history_size=5) as pubsub:
        positions = await publish_numbered(pubsub, "trim", 1, 10)
        async with pubsub.subscribe("trim", since=positions[1]) as subscription:
            [gap] = await take(subscription, 1)
            assert isinstance(gap, Gap)
            assert gap.channel == "trim"
            assert gap.position == positions[-1]
            assert "offset 3" in gap.reason
            await pubsub.publish("trim", b"m11")
            assert payloads(await take(subscription, 1)) == [b"m11"]
        # The oldest offset history still holds is replayed without a gap.
        async with pubsub.subscribe("trim", since=positions[5]) as subscription:
            assert payloads(await take(subscription, 5)) == numbered(7, 11)


# An empty epoch is as unknown as any other (Redis's adapter took it for "no position" and
# started at the latest offset, skipping the history the memory adapter replayed).
@pytest.mark.parametrize("unknown", ["not-an-epoch", ""])
async def test_unknown_epoch_gives_a_gap_then_the_new_epoch_then_live(
    pubsub: InspectablePubSub, unknown: str
) -> None:
    positions = await publish_numbered(pubsub, "epochs", 1, 3)
    async with pubsub.subscribe("epochs", since=Position(unknown, 2)) as subscription:
        [gap] = await take(subscription, 1)
        assert isinstance(gap, Gap)
        assert gap.position == Position(positions[0].epoch, 0)
        assert "epoch" in gap.reason
        # Everything the current epoch holds from its start follows the gap.
        assert payloads(await take(subscription, 3)) == numbered(1, 3)
        await pubsub.publish("epochs", b"m4")
        [message] = await take(subscription, 1)
        assert message == Message("epochs", Position(positions[0].epoch, 4), b"m4")


async def test_offset_from_the_future_gives_a_gap(pubsub: InspectablePubSub) -> None:
    positions = await publish_numbered(pubsub, "future", 1, 2)
    ahead = Position(positions[0].epoch, 7)
    async with pubsub.subscribe("future", since=ahead) as subscription:
        [gap] = await take(subscription, 1)
        assert isinstance(gap, Gap)
        assert gap.position == positions[-1]
        assert "ahead" in gap.reason
        await pubsub.publish("future", b"m3")
        assert payloads(await take(subscription, 1)) == [b"m3"]


async def test_negative_offset_is_refused(pubsub: InspectablePubSub) -> None:
    epoch = (await pubsub.position("neg")).epoch
    with pytest.raises(InvalidInput):
        async with pubsub.subscribe("neg", since=Position(epoch, -1)):
            pass
    assert pubsub.local_subscribers("neg") == 0


async def test_expired_history_starts_a_new_epoch(make_pubsub: PubSubFactory) -> None:
    async with make_pubsub(history_ttl=0.3) as pubsub:
        first = await pubsub.publish("brief", b"old")
        await anyio.sleep(0.5)
        second = await pubsub.publish("brief", b"new")
        assert second.epoch != first.epoch
        assert second.offset == 1
        async with pubsub.subscribe("brief", since=first) as subscription:
            gap, message = await take(subscription, 2)
            assert isinstance(gap, Gap)
            assert gap.position == Position(second.epoch, 0)
            assert message == Message("brief", second, b"new")


async def test_history_lives_while_publishing_continues(make_pubsub: PubSubFactory) -> None:
    async with make_pubsub(history_ttl=0.4) as pubsub:
        first = await pubsub.publish("busy", b"m1")
        for _ in range(4):
            await anyio.sleep(0.15)
            latest = await pubsub.publish("busy", b"more")
            # Each publish extends the channel's life: it is 0.6 s old by now, one epoch.
            assert latest.epoch == first.epoch


async def test_subscriber_sees_a_new_epoch_after_expiry_without_a_gap(
    make_pubsub: PubSubFactory,
) -> None:
    async with (
        make_pubsub(history_ttl=0.3) as pubsub,
        pubsub.subscribe("renewed") as subscription,
    ):
        old = await pubsub.publish("renewed", b"old")
        await anyio.sleep(0.5)
        new = await pubsub.publish("renewed", b"new")
        # Everything of the old epoch was delivered live; nothing is missing.
        assert await take(subscription, 2) == [
            Message("renewed", old, b"old"),
            Message("renewed", new, b"new"),
        ]


# -- idempotency ---------------------------------------------------------------------------


async def test_idempotent_publish_stores_and_delivers_once(pubsub: InspectablePubSub) -> None:
    async with pubsub.subscribe("idem") as subscription:
        first = await pubsub.publish("idem", b"once", idempotency_key="k1")
        again = await pubsub.publish("idem", b"twice?", idempotency_key="k1")
        assert again == first
        other = await pubsub.publish("idem", b"other", idempotency_key="k2")
        assert other.offset == first.offset + 1
        assert payloads(await take(subscription, 2)) == [b"once", b"other"]
        assert await quiet(subscription)
    assert await pubsub.position("idem") == other
    # Keys are per channel.
    elsewhere = await pubsub.publish("idem-2", b"once", idempotency_key="k1")
    assert elsewhere.offset == 1


async def test_idempotent_publish_under_concurrency_has_one_winner(
    pubsub: InspectablePubSub,
) -> None:
    positions: list[Position] = []

    async def publish() -> None:
        positions.append(await pubsub.publish("race", b"x", idempotency_key="same"))

    async with anyio.create_task_group() as tasks:
        for _ in range(10):
            tasks.start_soon(publish)
    assert len(set(positions)) == 1
    assert (await pubsub.position("race")).offset == 1


async def test_idempotency_key_expires_with_history(make_pubsub: PubSubFactory) -> None:
    async with make_pubsub(history_ttl=0.3) as pubsub:
        first = await pubsub.publish("idem-ttl", b"x", idempotency_key="k")
        await anyio.sleep(0.5)
        second = await pubsub.publish("idem-ttl", b"x", idempotency_key="k")
        assert second != first


# -- slow consumers ------------------------------------------------------------------------


async def test_slow_consumer_gets_every_message_while_history_covers(
    make_pubsub: PubSubFactory,
) -> None:
    async with (
        make_pubsub(buffer=4, history_size=50) as pubsub,
        pubsub.subscribe("slow") as subscription,
    ):
        # Far more than the buffer, less than history, without reading; the buffer
        # overflows several times and still holds some messages at the end.
        await publish_numbered(pubsub, "slow", 1, 32)
        await anyio.sleep(0.1)
        assert payloads(await take(subscription, 32)) == numbered(1, 32)
        await pubsub.publish("slow", b"m33")
        assert payloads(await take(subscription, 1)) == [b"m33"]
        assert await quiet(subscription)
        # The overflowed buffer held at most 4 of the 32: the rest came from history.
        assert pubsub.stats.repaired >= 32 - 4
        assert pubsub.stats.unrepaired_gaps == 0


async def test_slow_consumer_beyond_history_gets_a_gap(make_pubsub: PubSubFactory) -> None:
    async with (
        make_pubsub(buffer=2, history_size=5) as pubsub,
        pubsub.subscribe("slower") as subscription,
    ):
        positions = await publish_numbered(pubsub, "slower", 1, 20)
        await anyio.sleep(0.1)
        [gap] = await take(subscription, 1)
        assert isinstance(gap, Gap)
        assert gap.position == positions[-1]
        await pubsub.publish("slower", b"m21")
        assert payloads(await take(subscription, 1)) == [b"m21"]
        assert pubsub.stats.unrepaired_gaps == 1


async def test_slow_consumer_does_not_hold_back_others(make_pubsub: PubSubFactory) -> None:
    async with (
        make_pubsub(buffer=2, history_size=100) as pubsub,
        pubsub.subscribe("mixed") as slow,
        pubsub.subscribe("mixed") as fast,
    ):
        got: list[Delivery] = []

        async def consume() -> None:
            got.extend(await take(fast, 40))

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(consume)
            with anyio.fail_after(5):
                await publish_numbered(pubsub, "mixed", 1, 40)
        assert payloads(got) == numbered(1, 40)
        assert payloads(await take(slow, 40)) == numbered(1, 40)


# -- unsubscribing and closing -------------------------------------------------------------


async def test_leaving_the_context_unsubscribes(pubsub: InspectablePubSub) -> None:
    async with pubsub.subscribe("gone") as subscription:
        assert pubsub.local_subscribers("gone") == 1
        await pubsub.publish("gone", b"m1")
        assert payloads(await take(subscription, 1)) == [b"m1"]
    assert pubsub.local_subscribers("gone") == 0
    async with pubsub.subscribe("gone") as witness:
        await pubsub.publish("gone", b"m2")
        assert payloads(await take(witness, 1)) == [b"m2"]
    # The closed subscription got nothing more: it just ends.
    assert [d async for d in subscription] == []
    assert pubsub.local_subscribers("gone") == 0


async def test_subscribe_and_leave_repeatedly_while_publishing(
    pubsub: InspectablePubSub,
) -> None:
    stop = anyio.Event()

    async def publisher() -> None:
        while not stop.is_set():
            await pubsub.publish("churn", b"tick")
            await anyio.sleep(0.001)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(publisher)
        for _ in range(30):
            async with pubsub.subscribe("churn"):
                await anyio.lowlevel.checkpoint()
        # After all that churn, a new subscriber is live and gets what comes next.
        async with pubsub.subscribe("churn") as subscription:
            [delivery] = await take(subscription, 1)
            assert isinstance(delivery, Message)
        stop.set()
    assert pubsub.local_subscribers("churn") == 0


async def test_closing_the_adapter_ends_subscriptions(make_pubsub: PubSubFactory) -> None:
    async with make_pubsub() as pubsub, pubsub.subscribe("closing") as subscription:
        await pubsub.aclose()
        with anyio.fail_after(2):
            assert [d async for d in subscription] == []
        with pytest.raises(PubSubError):
            await pubsub.publish("closing", b"late")
        with pytest.raises(PubSubError):
            async with pubsub.subscribe("closing"):
                pass


async def test_subscribe_needs_run(make_pubsub: PubSubFactory) -> None:
    async with make_pubsub(run=False) as pubsub:
        # Publishing needs no background work; subscribing does.
        await pubsub.publish("idle", b"x")
        with pytest.raises(PubSubError, match="not running"):
            async with pubsub.subscribe("idle"):
                pass
        assert pubsub.local_subscribers("idle") == 0


async def test_ping_answers(pubsub: InspectablePubSub) -> None:
    await pubsub.ping()


async def test_unknown_epoch_whose_start_is_trimmed_gives_a_gap_at_the_latest(
    make_pubsub: PubSubFactory,
) -> None:
    async with make_pubsub(history_size=3) as pubsub:
        positions = await publish_numbered(pubsub, "trimmed-epoch", 1, 6)
        async with pubsub.subscribe("trimmed-epoch", since=Position("gone", 9)) as subscription:
            [gap] = await take(subscription, 1)
            assert isinstance(gap, Gap)
            assert gap.position == positions[-1]
            await pubsub.publish("trimmed-epoch", b"m7")
            assert payloads(await take(subscription, 1)) == [b"m7"]


async def test_idempotency_keys_are_per_channel_even_with_colons(
    pubsub: InspectablePubSub,
) -> None:
    first = await pubsub.publish("a", b"to a", idempotency_key="b:c")
    second = await pubsub.publish("a:b", b"to a:b", idempotency_key="c")
    assert first.offset == 1 and second.offset == 1
    assert second.epoch != first.epoch
    assert (await pubsub.position("a:b")).offset == 1


# -- handing live messages over ------------------------------------------------------------


async def test_handed_over_live_messages_follow_the_replay_in_order(
    pubsub: InspectablePubSub,
) -> None:
    positions = await publish_numbered(pubsub, "handed", 1, 4)
    async with pubsub.subscribe("handed", since=positions[1]) as subscription:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(publish_soon, pubsub, "handed", 5, 9)
            got, handed = await take_handed(subscription, 7)
        assert payloads(got) == numbered(3, 9)
        # The replay came through iteration; live messages with nothing ahead were handed.
        assert handed >= 1
        assert await quiet(subscription)


async def test_handed_over_after_an_overflow_history_fills_the_hole(
    make_pubsub: PubSubFactory,
) -> None:
    # The buffer overflows while nobody reads: live messages must not be handed over past
    # the hole; history refills it, in order, before anything newer.
    async with (
        make_pubsub(buffer=2, history_size=50) as pubsub,
        pubsub.subscribe("overflow") as subscription,
    ):
        await publish_numbered(pubsub, "overflow", 1, 6)
        await anyio.sleep(0.1)
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(publish_soon, pubsub, "overflow", 7, 9)
            got, _ = await take_handed(subscription, 9)
        assert payloads(got) == numbered(1, 9)


async def test_handed_over_after_an_overflow_and_an_epoch_change_gets_a_gap(
    make_pubsub: PubSubFactory,
) -> None:
    # The new epoch's first message would pass the cursor on its own (offset 1): only the
    # stale buffer says the old epoch's last messages were lost, and the Gap must say so.
    async with (
        make_pubsub(buffer=2, history_ttl=0.3) as pubsub,
        pubsub.subscribe("lost") as subscription,
    ):
        await publish_numbered(pubsub, "lost", 1, 3)  # the third overflows: the buffer is empty
        await anyio.sleep(0.5)  # the old epoch's history expires
        handed: list[Message] = []
        subscription.hand_over(handed.append)
        new = await pubsub.publish("lost", b"new")
        with anyio.fail_after(5):
            async for delivery in subscription:
                assert isinstance(delivery, Gap), delivery
                assert delivery.position == Position(new.epoch, 0)
                break
        assert payloads(await take(subscription, 1)) == [b"new"]
        assert handed == []


async def test_a_queued_message_is_never_overtaken_by_a_handed_over_one(
    make_pubsub: PubSubFactory,
) -> None:
    # "old" waits in the buffer (no receiver yet, nobody iterating); then the epoch expires,
    # so "new" (offset 1 of a new epoch) would pass the cursor on its own if handed over.
    async with (
        make_pubsub(history_ttl=0.3) as pubsub,
        pubsub.subscribe("queued") as subscription,
    ):
        await pubsub.publish("queued", b"old")
        await anyio.sleep(0.5)
        handed: list[Message] = []
        subscription.hand_over(handed.append)
        await pubsub.publish("queued", b"new")
        await anyio.sleep(0.1)
        assert handed == []
        assert payloads(await take(subscription, 2)) == [b"old", b"new"]


async def test_a_receiver_that_raises_ends_iteration_with_its_error(
    pubsub: InspectablePubSub,
) -> None:
    def broken(message: Message) -> None:
        raise LookupError("receiver bug")

    async with pubsub.subscribe("broken") as subscription:
        subscription.hand_over(broken)
        await pubsub.publish("broken", b"m1")
        with anyio.fail_after(5), pytest.raises(LookupError, match="receiver bug"):
            async for _ in subscription:
                pass


async def test_handing_over_none_returns_live_messages_to_iteration(
    pubsub: InspectablePubSub,
) -> None:
    handed: list[Message] = []
    arrived = anyio.Event()

    def receive(message: Message) -> None:
        handed.append(message)
        arrived.set()

    async with pubsub.subscribe("back") as subscription:
        subscription.hand_over(receive)
        await pubsub.publish("back", b"m1")
        with anyio.fail_after(5):
            await arrived.wait()
        subscription.hand_over(None)
        await pubsub.publish("back", b"m2")
        assert payloads(await take(subscription, 1)) == [b"m2"]
    assert payloads(list(handed)) == [b"m1"]


# -- batches -------------------------------------------------------------------------------


async def test_a_batch_gets_each_items_position_in_order(pubsub: InspectablePubSub) -> None:
    before = await pubsub.publish("batch-a", b"before")
    async with pubsub.subscribe("batch-a") as a, pubsub.subscribe("batch-b") as b:
        positions = await pubsub.publish_many(
            [
                Publication("batch-a", b"a1"),
                Publication("batch-b", b"b1"),
                Publication("batch-a", b"a2"),
                Publication("batch-b", b"b2"),
                Publication("batch-a", b"a3"),
            ]
        )
        assert [p.offset for p in positions] == [2, 1, 3, 2, 4]
        assert {positions[0].epoch} == {p.epoch for p in positions[0::2]} == {before.epoch}
        got_a = await take(a, 3)
        got_b = await take(b, 2)
    assert got_a == [
        Message("batch-a", positions[i], payload)
        for i, payload in ((0, b"a1"), (2, b"a2"), (4, b"a3"))
    ]
    assert got_b == [
        Message("batch-b", positions[1], b"b1"),
        Message("batch-b", positions[3], b"b2"),
    ]
    # History holds them as a single publish would have stored them: resume replays them.
    async with pubsub.subscribe("batch-a", since=before) as replay:
        assert payloads(await take(replay, 3)) == [b"a1", b"a2", b"a3"]


async def test_a_batch_interleaves_with_single_publishes(pubsub: InspectablePubSub) -> None:
    await pubsub.publish("mixed", b"m1")
    await pubsub.publish_many([Publication("mixed", b"m2"), Publication("mixed", b"m3")])
    fourth = await pubsub.publish("mixed", b"m4")
    assert fourth.offset == 4
    async with pubsub.subscribe("mixed", since=Position(fourth.epoch, 0)) as replay:
        assert payloads(await take(replay, 4)) == numbered(1, 4)


async def test_idempotency_is_per_item_of_a_batch(pubsub: InspectablePubSub) -> None:
    earlier = await pubsub.publish("idem-batch", b"first", idempotency_key="k1")
    async with pubsub.subscribe("idem-batch") as subscription:
        positions = await pubsub.publish_many(
            [
                Publication("idem-batch", b"again", "k1"),  # published before the batch
                Publication("idem-batch", b"new", "k2"),
                Publication("idem-batch", b"k2 again", "k2"),  # earlier in this batch
                Publication("idem-batch", b"no key"),
                Publication("idem-other", b"same key, other channel", "k1"),
            ]
        )
        assert positions[0] == earlier
        assert positions[1] == positions[2] == Position(earlier.epoch, 2)
        assert positions[3] == Position(earlier.epoch, 3)
        assert positions[4].offset == 1
        assert payloads(await take(subscription, 2)) == [b"new", b"no key"]
        assert await quiet(subscription)
    # The whole batch again stores nothing new (but the item without a key).
    again = await pubsub.publish_many(
        [Publication("idem-batch", b"new", "k2"), Publication("idem-other", b"x", "k1")]
    )
    assert again == [positions[1], positions[4]]


async def test_a_broadcast_payload_reaches_every_channel(pubsub: InspectablePubSub) -> None:
    payload = b'{"kind":"event","type":"announce"}'
    channels = [f"fan-{n}" for n in range(50)]
    await pubsub.publish("fan-7", b"earlier")
    async with pubsub.subscribe("fan-0") as first, pubsub.subscribe("fan-49") as last:
        positions = await pubsub.publish_many([Publication(c, payload, "once") for c in channels])
        assert [p.offset for p in positions] == [1] * 7 + [2] + [1] * 42
        assert payloads(await take(first, 1)) == [payload]
        assert payloads(await take(last, 1)) == [payload]
    repeated = await pubsub.publish_many([Publication(c, payload, "once") for c in channels])
    assert repeated == positions


async def test_an_empty_batch_publishes_nothing(pubsub: InspectablePubSub) -> None:
    assert await pubsub.publish_many([]) == []


# -- replay in pages, and draining without a task --------------------------------------------


async def test_a_long_replay_comes_whole_and_in_order_in_small_pages(
    make_pubsub: PubSubFactory,
) -> None:
    async with make_pubsub(replay_page_bytes=100) as pubsub:
        start = await pubsub.position("paged")
        blobs = [b"%02d" % n + b"x" * 38 for n in range(30)]  # 40 bytes: two to a page
        for blob in blobs:
            await pubsub.publish("paged", blob)
        async with pubsub.subscribe("paged", since=start) as subscription:
            assert payloads(await take(subscription, 30)) == blobs
            await pubsub.publish("paged", b"live")
            assert payloads(await take(subscription, 1)) == [b"live"]


async def test_history_is_read_a_page_at_a_time_as_it_is_taken(
    make_pubsub: PubSubFactory,
) -> None:
    # Read lazily: what is trimmed between two pages is a gap, never held in memory ahead
    # of the subscriber (a subscriber far behind holds one page, not the whole history).
    async with make_pubsub(history_size=20, replay_page_bytes=100) as pubsub:
        start = await pubsub.position("lazy")
        first = [await pubsub.publish("lazy", b"%02d" % n + b"x" * 38) for n in range(20)]
        async with pubsub.subscribe("lazy", since=start) as subscription:
            taken = [await subscription.next_pending() for _ in range(2)]
            assert [d.position for d in taken if isinstance(d, Message)] == first[:2]
            later = [await pubsub.publish("lazy", b"later") for _ in range(20)]
            gap = await subscription.next_pending()
            assert isinstance(gap, Gap) and gap.position == later[-1]
            assert await subscription.next_pending() is None  # the live ones were replayed


async def test_next_pending_never_waits_and_on_pending_tells_when_to_ask(
    pubsub: InspectablePubSub,
) -> None:
    positions = await publish_numbered(pubsub, "pending", 1, 2)
    told = anyio.Event()
    async with pubsub.subscribe("pending", since=positions[0]) as subscription:
        subscription.on_pending(told.set)
        assert subscription.pending()
        got = await subscription.next_pending()
        assert isinstance(got, Message) and got.payload == b"m2"
        assert not subscription.pending()
        assert await subscription.next_pending() is None
        await pubsub.publish("pending", b"m3")  # nothing handed over: queued, and told
        with anyio.fail_after(5):
            await told.wait()
        assert subscription.pending()
        got = await subscription.next_pending()
        assert isinstance(got, Message) and got.payload == b"m3"
