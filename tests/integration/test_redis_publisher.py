"""The publisher library (`RedisPublisher`, `SyncRedisPublisher`) against a real Redis,
with `RedisPubSub` subscribers standing in for a running service."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import anyio
import anyio.lowlevel
import msgspec
import pytest

from ondoki.domain.notifications import Event, UserEvent
from ondoki.errors import InvalidInput, PubSubError
from ondoki.models import Delivery, Message, Position
from ondoki.ports.pubsub import Publication
from ondoki.support.deadline import budget
from ondoki_adapters.redis.driver import open_driver
from ondoki_adapters.redis.publisher import RedisChannels, RedisPublisher, SyncRedisPublisher
from ondoki_adapters.redis.pubsub import RedisPubSub
from tests.redis_server import RedisServer
from tests.waits import take, until

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


@pytest.fixture
async def service(redis_server: RedisServer) -> AsyncIterator[RedisPubSub]:
    """What an `ondoki serve` instance subscribes with, on a clean server."""
    redis_server.flushall()
    pubsub = RedisPubSub(redis_server.url(0), timeout=2.0)
    async with anyio.create_task_group() as tasks:
        await tasks.start(pubsub.run)
        yield pubsub
        tasks.cancel_scope.cancel()
    await pubsub.aclose()


def script_calls(server: RedisServer) -> int:
    """How many times scripts ran on the server (EVALSHA and EVAL) since it started."""
    with server.client() as client:
        stats = client.info("commandstats")
    return sum(
        int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("evalsha", "eval")
    )


def messages(deliveries: list[Delivery]) -> list[Message]:
    assert all(isinstance(d, Message) for d in deliveries), deliveries
    return [d for d in deliveries if isinstance(d, Message)]


def event(message: Message) -> Event:
    return msgspec.json.decode(message.payload, type=Event)


async def test_async_publisher_positions_are_the_services(
    service: RedisPubSub, redis_server: RedisServer
) -> None:
    async with RedisPublisher(redis_server.url(0)) as publisher:
        start = await service.position("alice")
        async with service.subscribe("alice") as alice:
            first = await publisher.publish("alice", "job.progress", {"p": 0.5})
            batch = await publisher.publish_many(
                [UserEvent("alice", "a", 1), UserEvent("bob", "b"), UserEvent("alice", "a", 2)]
            )
            [message] = messages(await take(alice, 1))
            assert message.position == first == Position(start.epoch, 1)
            assert event(message) == Event("job.progress", {"p": 0.5})
            assert [m.position for m in messages(await take(alice, 2))] == [batch[0], batch[2]]
        # Resume from what the library answered replays the rest.
        async with service.subscribe("alice", since=first) as resumed:
            assert [event(m).data for m in messages(await take(resumed, 2))] == [1, 2]
        assert await publisher.publish("alice", "done", id="k") == await publisher.publish(
            "alice", "done", id="k"
        )


async def test_a_batch_and_a_broadcast_are_one_script_call_each(
    service: RedisPubSub, redis_server: RedisServer
) -> None:
    async with RedisPublisher(redis_server.url(0)) as publisher:
        await publisher.publish("warm-up", "t")  # loads the script
        before = script_calls(redis_server)
        await publisher.publish_many([UserEvent(f"u{n}", "t", n) for n in range(200)])
        await publisher.broadcast([f"u{n}" for n in range(200)], "announce", "x" * 1000)
        assert script_calls(redis_server) == before + 2
        assert (await service.position("u199")).offset == 2


async def test_sync_publisher_shares_positions_and_idempotency(
    service: RedisPubSub, redis_server: RedisServer
) -> None:
    with SyncRedisPublisher(redis_server.url(0)) as publisher:
        async with service.subscribe("carol") as carol:
            position = await anyio.to_thread.run_sync(
                lambda: publisher.publish("carol", "hello", {"n": 1}, id="hello-1")
            )
            [message] = messages(await take(carol, 1))
            assert message.position == position
            assert event(message) == Event("hello", {"n": 1})
        assert publisher.publish("carol", "hello", {"n": 1}, id="hello-1") == position
        got = publisher.broadcast(["carol", "dave"], "announce", id="ann")
        assert [p.offset for p in got] == [2, 1]
        assert publisher.broadcast(["carol", "dave"], "announce", id="ann") == got
        with pytest.raises(InvalidInput, match=re.escape("events[1]: user_id")):
            publisher.publish_many([UserEvent("dave", "t"), UserEvent("no such user!", "t")])
        assert (await service.position("dave")).offset == 1


async def test_an_unreachable_redis_is_a_pubsub_error() -> None:
    async with RedisPublisher("redis://127.0.0.1:1/0", timeout=0.5) as publisher:
        with pytest.raises(PubSubError, match="pubsub publish 'alice'"):
            await publisher.publish("alice", "t")
    with (
        SyncRedisPublisher("redis://127.0.0.1:1/0", timeout=0.5) as sync,
        pytest.raises(PubSubError, match=r"pubsub publish \(2 messages\)"),
    ):
        sync.broadcast(["a", "b"], "t", id="x")


async def test_concurrent_single_publishes_share_calls_when_every_slot_is_busy(
    service: RedisPubSub, redis_server: RedisServer
) -> None:
    driver = open_driver(redis_server.url(0))  # the test's event loop's
    channels = RedisChannels(driver, max_in_flight=1)
    got: dict[int, Position] = {}

    async def one(n: int) -> None:
        got[n] = await channels.publish(
            f"g{n % 5}", b"%d" % n, idempotency_key=f"k{n}" if n % 2 else None
        )

    try:
        async with service.subscribe("g0") as g0:
            async with anyio.create_task_group() as tasks:
                for n in range(100):
                    tasks.start_soon(one, n)
            assert channels.script_calls < 100 and channels.gathered > 0
            # Every publish stored once, with its own position: 20 per channel, 1 to 20.
            for channel in range(5):
                offsets = sorted(got[n].offset for n in range(channel, 100, 5))
                assert offsets == list(range(1, 21))
            delivered = messages(await take(g0, 20))
            assert {m.position for m in delivered} == {got[n] for n in range(0, 100, 5)}
            assert [m.position.offset for m in delivered] == list(range(1, 21))
        # Retrying the keyed ones stores nothing new.
        assert await channels.publish("g1", b"1", idempotency_key="k1") == got[1]
    finally:
        await driver.aclose()


class _HeldScript:
    """A stand-in driver whose publish script holds every call of one item until `release`
    is set; it records how many items each call carries."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.release = anyio.Event()
        self.batch = anyio.Event()

    def script(self, source: str) -> Callable[..., Awaitable[list[Any]]]:
        return self._run

    async def _run(self, keys: Sequence[Any], args: Sequence[Any]) -> list[Any]:
        count, first = int(args[3]), sum(self.calls) + 1
        self.calls.append(count)
        if count == 1:
            await self.release.wait()
        else:
            self.batch.set()
            await anyio.lowlevel.checkpoint()  # as a real call's I/O would
        return [value for n in range(count) for value in (b"e", first + n)]


async def test_a_burst_of_publishes_goes_in_one_call_without_waiting_for_the_calls_in_flight() -> (
    None
):
    held = _HeldScript()
    channels = RedisChannels(held, max_in_flight=4)  # type: ignore[arg-type]
    got: dict[int, Position] = {}

    async def one(n: int) -> None:
        got[n] = await channels.publish(f"u{n}", b"x")

    async with anyio.create_task_group() as tasks:
        for n in range(10):
            tasks.start_soon(one, n)
        with anyio.fail_after(5):
            await held.batch.wait()
        # Two went alone; the eight made in the same turn went together, while those two
        # are still unanswered (they are released only now).
        assert held.calls == [1, 1, 8] and len(got) <= 8
        held.release.set()
    assert sorted(position.offset for position in got.values()) == list(range(1, 11))
    assert channels.script_calls == 3 and channels.gathered == 7


class _HeldCalls(_HeldScript):
    """`_HeldScript` holding batches too, until `release` is set; it counts the calls
    running at once (`peak`)."""

    def __init__(self) -> None:
        super().__init__()
        self.running = self.peak = 0

    async def _run(self, keys: Sequence[Any], args: Sequence[Any]) -> list[Any]:
        count, first = int(args[3]), sum(self.calls) + 1
        self.calls.append(count)
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await self.release.wait()
        finally:
            self.running -= 1
        return [value for n in range(count) for value in (b"e", first + n)]


async def test_batches_take_call_slots_and_a_publish_finding_none_fails_unsent() -> None:
    held = _HeldCalls()
    channels = RedisChannels(held, max_in_flight=2, timeout=0.5)  # type: ignore[arg-type]
    batch = [Publication("u", b"x", None)] * 2
    outcomes: list[str] = []

    async def many() -> None:
        try:
            await channels.publish_many(batch)
            outcomes.append("published")
        except PubSubError as exc:
            outcomes.append("busy" if "nothing was sent" in str(exc) else "no answer")

    async with anyio.create_task_group() as tasks:
        for _ in range(3):
            tasks.start_soon(many)
        await until(lambda: len(held.calls) == 2)
        # Two calls hold both slots and the third batch waits for one. A single publish
        # waits too, but (before) with no deadline: as long as batches kept Redis busy.
        started = anyio.current_time()
        with pytest.raises(PubSubError, match=r"stayed busy .*; nothing was sent"):
            await channels.publish("alone", b"x")
        assert anyio.current_time() - started < 3
    # The two held calls got no answer in time; the third batch was never sent (sent with
    # a few milliseconds left, it could have been stored and still reported as failed).
    assert sorted(outcomes) == ["busy", "no answer", "no answer"]
    assert held.calls == [2, 2] and held.peak == 2  # never over max_in_flight (3 before)
    held.release.set()
    # Nothing leaked a slot: the next publishes go at once.
    assert len(await channels.publish_many(batch)) == 2
    assert (await channels.publish("after", b"x")).offset > 0


async def test_a_gathered_call_is_not_bound_by_the_budget_of_the_publish_leading_it() -> None:
    held = _HeldScript()
    channels = RedisChannels(held, max_in_flight=1)  # type: ignore[arg-type]
    got: dict[str, Position] = {}
    left: dict[str, float | None] = {}

    async def one(name: str, spent: bool, key: str | None = None) -> None:
        with budget() as request:
            if spent:  # a request that used its whole budget on earlier calls
                request.begin(5.0)
                request.spend(5.0)
            got[name] = await channels.publish(name, b"x", idempotency_key=key)
            left[name] = request.left

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(one, "first", False)  # alone: holds the one slot
        await until(lambda: held.calls == [1])
        tasks.start_soon(one, "leader", True)
        await until(lambda: bool(channels._waiting))  # it leads a group, waiting for a slot
        tasks.start_soon(one, "follower-1", False)
        tasks.start_soon(one, "follower-2", False)
        await until(lambda: channels.gathered == 2)
        # Publishes with an idempotency key gather apart; this one leads its group as its
        # request's first backend call.
        tasks.start_soon(one, "keyed-leader", False, "k")
        await until(lambda: len(channels._waiting) == 2)
        held.release.set()
    # Before, the group's call ran on the leader's empty budget: all three failed "within 0 s".
    assert set(got) == {"first", "leader", "follower-1", "follower-2", "keyed-leader"}
    assert sorted(held.calls) == [1, 1, 3]
    # Each publish spent its wait from its own request's budget (a leader's was not
    # started before, when the publish was its request's first call).
    assert left["leader"] == 0.0
    assert all(value is not None and value < 5.0 for value in left.values()), left


async def test_a_gathered_publish_waits_within_its_own_budget() -> None:
    held = _HeldScript()
    channels = RedisChannels(held, max_in_flight=1)  # type: ignore[arg-type]
    errors: list[str] = []

    async def follower() -> None:
        with budget() as request:
            request.begin(0.3)
            try:
                await channels.publish("follower", b"x")
            except PubSubError as exc:
                errors.append(str(exc))

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(channels.publish, "first", b"x")
        await until(lambda: held.calls == [1])
        tasks.start_soon(channels.publish, "leader", b"x")
        await until(lambda: bool(channels._waiting))
        tasks.start_soon(follower)
        await until(lambda: bool(errors))
        assert errors == ["pubsub publish 'follower': no answer from Redis within 0.3 s"]
        held.release.set()


async def test_gathered_publishes_all_get_the_error() -> None:
    driver = open_driver("redis://127.0.0.1:1/0", timeout=0.5)
    channels = RedisChannels(driver, max_in_flight=1)
    errors: list[str] = []

    async def one(n: int) -> None:
        try:
            await channels.publish("alice", b"x")
        except PubSubError as exc:
            errors.append(str(exc))

    try:
        async with anyio.create_task_group() as tasks:
            for n in range(10):
                tasks.start_soon(one, n)
    finally:
        await driver.aclose()
    assert len(errors) == 10 and all("cannot reach Redis" in e for e in errors), errors


def kill_clients(server: RedisServer, name: str) -> None:
    with server.client() as admin:
        for client in admin.client_list():
            if client.get("name") == name:
                admin.client_kill_filter(_id=client["id"])


async def test_a_lost_connection_loses_nothing(
    service: RedisPubSub, redis_server: RedisServer
) -> None:
    async with RedisPublisher(redis_server.url(0)) as publisher:
        first = await publisher.publish("erin", "t", id="e-1")
        kill_clients(redis_server, "ondoki-publisher")
        # The pooled connection is dead: an item with an id is sent again on a new one.
        assert (await publisher.publish("erin", "t", id="e-2")).offset == first.offset + 1
        kill_clients(redis_server, "ondoki-publisher")
        # An item without an id is never sent twice (a lost reply may mean it was stored);
        # the pool notices a connection the server closed before it sends anything on it,
        # so once the close has arrived, nothing is lost either.
        await anyio.sleep(0.2)
        assert (await publisher.publish("erin", "t")).offset == first.offset + 2
    # redis-py's blocking pool notices a closed idle connection before it sends anything
    # on it (and opens another): nothing is lost, with or without ids.
    with SyncRedisPublisher(redis_server.url(0)) as sync:
        sync.publish("erin", "t", id="e-3")
        kill_clients(redis_server, "ondoki-publisher")
        batch = sync.publish_many([UserEvent("erin", "t", id="e-4"), UserEvent("erin", "t")])
        assert [p.offset for p in batch] == [first.offset + 4, first.offset + 5]
    assert (await service.position("erin")).offset == first.offset + 5


async def test_cancelled_publishers_do_not_strand_the_others_gathered_with_them(
    service: RedisPubSub, redis_server: RedisServer
) -> None:
    driver = open_driver(redis_server.url(0))  # the test's event loop's
    channels = RedisChannels(driver, max_in_flight=1)
    got: dict[int, Position] = {}

    async def one(n: int) -> None:
        got[n] = await channels.publish("cancel", b"%d" % n)

    try:
        async with anyio.create_task_group() as tasks:
            scopes = []
            for n in range(30):
                scope = anyio.CancelScope()
                scopes.append(scope)

                async def run(n: int = n, scope: anyio.CancelScope = scope) -> None:
                    with scope:
                        await one(n)

                tasks.start_soon(run)
            await anyio.lowlevel.checkpoint()
            for scope in scopes[::3]:  # leaders and followers alike
                scope.cancel()
        assert channels.gathered > 0
        # Everyone not cancelled got a position; cancelled ones may still have published.
        assert {n for n in range(30) if n % 3} <= set(got)
        latest = await service.position("cancel")
        assert len(set(got.values())) == len(got)
        assert len(got) <= latest.offset <= 30
        # And the channel still takes publishes (no call slot was lost).
        assert (await channels.publish("cancel", b"after")).offset == latest.offset + 1
    finally:
        await driver.aclose()
