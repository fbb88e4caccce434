"""The notification hub's protocol with a fake client over MemoryPubSub, on both backends.

Every test runs three times: against a client whose frames the hub queues and `send`s one
by one, against one that writes frames itself at once (`ClientConnection.writer`, the web
adapter's fast path, as on asyncio), and against one whose writer keeps what the client does
not take waiting for the hub's flush task (the same path on trio), so that both outboxes keep
the same protocol.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any, ClassVar, Literal

import anyio
import anyio.abc
import pytest

from ondoki.domain.notifications import CloseCode, Frame, NotificationHub
from ondoki.errors import InvalidInput, PubSubError, TooLarge
from ondoki.models import Position
from ondoki_adapters.memory.pubsub import MemoryPubSub

pytestmark = pytest.mark.anyio


class FakeClient:
    """A client connection: frames the server sent, and a way to talk back or stall.

    `kind` "direct" gives the hub a writer: a stalled client's frames then pile up as
    unsent bytes, as in a transport's buffer; "flushed" too, but they wait for the hub's
    `flush`, as on a trio socket; "queued" has none, and `send` blocks instead.
    """

    made: ClassVar[list[FakeClient]] = []
    kind: ClassVar[Literal["queued", "direct", "flushed"]] = "queued"

    def __init__(self) -> None:
        FakeClient.made.append(self)
        self.held: list[Frame] = []
        self.written: list[Frame] = []
        self.aborted = False
        self.dropped = anyio.Event()  # set by abort
        self.shields_close = False  # its stalled close ignores cancellation, as on trio
        self.to_server_send, self.to_server = anyio.create_memory_object_stream[str | bytes | None](
            16
        )
        self.frames_send, self.frames = anyio.create_memory_object_stream[dict[str, Any]](10_000)
        self.stalled = anyio.Event()
        self.stall = False
        self.reading = anyio.Event()  # set when a stalled client reads again
        self.flushes = 0  # flushes that wrote everything that waited
        self.flush_cancelled = False
        self.closed: tuple[int, str] | None = None
        self.closed_event = anyio.Event()
        self.finished = anyio.Event()  # set when the hub's serve() returned

    async def send(self, frame: Frame) -> None:
        if self.stall:
            self.stalled.set()
            await anyio.sleep_forever()
        self.written.append(frame)
        await self.frames_send.send(json.loads(frame.text))

    def writer(self) -> FakeClient | None:
        return None if self.kind == "queued" else self

    def write(self, frame: Frame) -> int:
        self.written.append(frame)
        if self.stall or self.held:
            self.held.append(frame)
        else:
            self.frames_send.send_nowait(json.loads(frame.text))
        return self.unsent()

    def unsent(self) -> int:
        return sum(len(f.data) for f in self.held)

    def waiting(self) -> bool:
        return self.kind == "flushed" and bool(self.held)

    async def flush(self) -> None:
        assert self.kind == "flushed", "flush called where nothing can wait"
        try:
            while self.held:
                if self.stall:
                    await self.reading.wait()
                self._deliver_held()
        except anyio.get_cancelled_exc_class():
            self.flush_cancelled = True
            raise
        self.flushes += 1

    def release(self) -> None:
        """A stalled (direct) client reads again: it takes what it held (on its own, or by
        the hub's flush), and what comes."""
        self.stall = False
        self.reading.set()
        if self.kind == "direct":
            self._deliver_held()

    def _deliver_held(self) -> None:
        for frame in self.held:
            self.frames_send.send_nowait(json.loads(frame.text))
        self.held.clear()

    async def receive(self) -> str | bytes | None:
        return await self.to_server.receive()

    async def close(self, code: int, reason: str = "") -> None:
        self.closed = (code, reason)
        self.closed_event.set()
        if self.stall:  # its close frame waits behind what it never took
            with anyio.CancelScope(shield=self.shields_close):
                await self.dropped.wait()

    def abort(self) -> None:
        self.aborted = True
        self.dropped.set()

    async def wait_closed(self) -> tuple[int, str]:
        with anyio.fail_after(3):
            await self.closed_event.wait()
        assert self.closed is not None
        return self.closed

    def dispose(self) -> None:
        for stream in (self.to_server_send, self.to_server, self.frames_send, self.frames):
            stream.close()

    async def say(self, message: dict[str, Any]) -> None:
        await self.to_server_send.send(json.dumps(message))

    async def next(self, within: float = 3.0) -> dict[str, Any]:
        with anyio.fail_after(within):
            return await self.frames.receive()

    async def notifications(self, count: int) -> list[dict[str, Any]]:
        frames = [await self.next() for _ in range(count)]
        assert all(f["type"] == "notification" for f in frames), frames
        return frames


@pytest.fixture(autouse=True, params=["queued", "direct", "flushed"])
def client_kind(request: pytest.FixtureRequest) -> Iterator[None]:
    FakeClient.kind = request.param
    yield
    FakeClient.kind = "queued"
    for client in FakeClient.made:
        client.dispose()
    FakeClient.made.clear()


@pytest.fixture
async def pubsub() -> AsyncIterator[MemoryPubSub]:
    adapter = MemoryPubSub(history_size=50, history_ttl=60)
    async with anyio.create_task_group() as tasks:
        await tasks.start(adapter.run)
        yield adapter
        tasks.cancel_scope.cancel()
    await adapter.aclose()


Serve = Callable[..., Awaitable[FakeClient]]


@asynccontextmanager
async def running(hub: NotificationHub) -> AsyncIterator[NotificationHub]:
    async with anyio.create_task_group() as tasks:
        await tasks.start(hub.run)
        yield hub
        tasks.cancel_scope.cancel()


@pytest.fixture
async def hub(pubsub: MemoryPubSub) -> AsyncIterator[NotificationHub]:
    # About six frames of a few dozen bytes may wait for a client.
    hub = NotificationHub(
        pubsub,
        send_buffer_bytes=512,
        max_event_bytes=512,
        resume_wait=0.05,
        ping_interval=60,
        close_timeout=0.2,
    )
    async with running(hub):
        yield hub


@pytest.fixture
async def serve(hub: NotificationHub) -> AsyncIterator[Serve]:
    results: dict[int, int] = {}
    async with anyio.create_task_group() as tasks:

        async def serve(
            user: str = "alice",
            session: str = "s1",
            *,
            first: dict[str, Any] | None = None,
            **kw: Any,
        ) -> FakeClient:
            client = FakeClient()
            if first is not None:
                await client.say(first)

            async def run(*, task_status: anyio.abc.TaskStatus[None]) -> None:
                task_status.started()
                results[id(client)] = await hub.serve(client, user, session, **kw)
                client.finished.set()

            await tasks.start(run)
            await anyio.sleep(0.1)  # past resume_wait: the live subscription is open
            return client

        yield serve
        tasks.cancel_scope.cancel()


async def test_delivers_events_in_order_with_positions(hub: NotificationHub, serve: Serve) -> None:
    client = await serve()
    positions = [await hub.publish("alice", "greeting", {"n": n}) for n in range(5)]
    frames = await client.notifications(5)
    assert [f["event"] for f in frames] == [
        {"type": "greeting", "data": {"n": n}} for n in range(5)
    ]
    assert [(f["epoch"], f["offset"]) for f in frames] == [(p.epoch, p.offset) for p in positions]


async def test_other_users_events_never_arrive(hub: NotificationHub, serve: Serve) -> None:
    alice = await serve("alice")
    await hub.publish("bob", "secret", {"for": "bob"})
    await hub.publish("alice", "hello")
    assert (await alice.next())["event"]["type"] == "hello"


async def test_resume_replays_exactly_what_was_missed(hub: NotificationHub, serve: Serve) -> None:
    seen = [await hub.publish("alice", "old", n) for n in range(3)]
    missed = [await hub.publish("alice", "missed", n) for n in range(4)]
    last = seen[-1]
    client = await serve(first={"type": "resume", "epoch": last.epoch, "offset": last.offset})
    await hub.publish("alice", "live", 99)
    frames = await client.notifications(5)
    assert [f["offset"] for f in frames] == [p.offset for p in missed] + [missed[-1].offset + 1]
    assert frames[-1]["event"] == {"type": "live", "data": 99}


async def test_a_late_resume_restarts_the_stream_from_there(
    hub: NotificationHub, serve: Serve
) -> None:
    client = await serve()  # streaming live already: the resume window is over
    positions = [await hub.publish("alice", "first", n) for n in range(3)]
    assert [f["offset"] for f in await client.notifications(3)] == [p.offset for p in positions]
    await client.say({"type": "resume", "epoch": positions[0].epoch, "offset": positions[0].offset})
    replayed = await client.notifications(2)
    assert [f["offset"] for f in replayed] == [p.offset for p in positions[1:]]
    await hub.publish("alice", "after")
    assert (await client.next())["event"]["type"] == "after"


async def test_unknown_epoch_gets_resync_then_live(hub: NotificationHub, serve: Serve) -> None:
    await hub.publish("alice", "before")
    client = await serve(first={"type": "resume", "epoch": "gone", "offset": 3})
    resync = await client.next()
    assert resync["type"] == "resync"
    assert resync["offset"] == 0
    # What the current epoch holds follows the resync, then live events.
    assert (await client.next())["event"]["type"] == "before"
    await hub.publish("alice", "after")
    assert (await client.next())["event"]["type"] == "after"


async def test_messages_published_while_connecting_are_not_lost(
    hub: NotificationHub, pubsub: MemoryPubSub
) -> None:
    # A client that never resumes still gets what was published between accept and the
    # start of its live subscription (the resume window).
    hub.resume_wait = 0.3
    client = FakeClient()
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(hub.serve, client, "alice", "s1")
        await anyio.sleep(0.05)
        await hub.publish("alice", "early")
        assert (await client.next())["event"]["type"] == "early"
        tasks.cancel_scope.cancel()


async def test_stalled_client_is_closed_without_slowing_others(
    hub: NotificationHub, serve: Serve
) -> None:
    slow, fast = await serve(session="slow"), await serve(session="fast")
    slow.stall = True
    for n in range(30):
        await hub.publish("alice", "tick", n)
        assert (await fast.next(within=1))["event"]["data"] == n
    assert (await slow.wait_closed())[0] == CloseCode.SLOW_CLIENT
    assert fast.closed is None
    assert hub.stats.slow_closes == 1
    # It takes no close frame either: after close_timeout its connection is dropped.
    with anyio.fail_after(3):
        await slow.finished.wait()
    assert slow.aborted and not fast.aborted


async def test_a_close_the_server_shields_ends_when_the_connection_is_dropped(
    hub: NotificationHub, serve: Serve
) -> None:
    # hypercorn's trio worker shields its write of a close frame from cancellation: only
    # dropping the connection ends it (cancelling the close alone waited forever).
    slow = await serve()
    slow.stall = slow.shields_close = True
    for n in range(30):
        await hub.publish("alice", "tick", n)
    assert (await slow.wait_closed())[0] == CloseCode.SLOW_CLIENT
    with anyio.fail_after(3):
        await slow.finished.wait()
    assert slow.aborted


# Only a writer that keeps frames waiting needs a flush:
only_flushed = pytest.mark.parametrize("client_kind", ["flushed"], indirect=True)


@only_flushed
async def test_frames_left_waiting_are_flushed_by_a_task_that_ends_when_none_wait(
    hub: NotificationHub, serve: Serve
) -> None:
    client = await serve()
    client.stall = True
    for n in range(3):
        await hub.publish("alice", "tick", n)
    await anyio.sleep(0.05)
    assert client.unsent() > 0 and client.frames.statistics().current_buffer_used == 0
    client.release()  # the flush task writes them, in order, then ends
    assert [f["event"]["data"] for f in await client.notifications(3)] == [0, 1, 2]
    await anyio.sleep(0.05)
    assert client.flushes == 1
    await hub.publish("alice", "tick", 3)  # nothing waits: written at once, no flush
    assert (await client.next())["event"]["data"] == 3
    assert client.flushes == 1 and client.closed is None


@only_flushed
async def test_a_flush_ends_with_its_client(hub: NotificationHub, serve: Serve) -> None:
    client = await serve()
    client.stall = True
    await hub.publish("alice", "tick", 0)
    await anyio.sleep(0.05)
    assert client.waiting()
    await client.to_server_send.send(None)  # it leaves: what waits is the transport's
    with anyio.fail_after(3):
        await client.finished.wait()
    await anyio.sleep(0.05)
    assert client.flush_cancelled and client.flushes == 0


async def test_one_large_frame_alone_never_closes_a_client(
    hub: NotificationHub, serve: Serve
) -> None:
    # A frame larger than the send buffer (event + envelope > 512 bytes): what counts is
    # what still waits *ahead* of a new frame, so a client that keeps up is never closed.
    client = await serve()
    client.stall = True
    await hub.publish("alice", "big", "x" * 440)
    await anyio.sleep(0.1)
    assert client.closed is None
    await hub.publish("alice", "next")  # now 500+ bytes wait ahead of it: too slow
    assert (await client.wait_closed())[0] == CloseCode.SLOW_CLIENT


async def test_a_send_buffer_smaller_than_an_event_is_refused(pubsub: MemoryPubSub) -> None:
    with pytest.raises(ValueError, match="max_event_bytes"):
        NotificationHub(pubsub, send_buffer_bytes=1000, max_event_bytes=2000)


async def test_a_message_is_one_frame_for_every_local_client(
    hub: NotificationHub, serve: Serve
) -> None:
    # Encoded once per process, and (direct) its wire bytes kept on it for every socket.
    clients = [await serve(session=str(n)) for n in range(3)]
    await hub.publish("alice", "shared")
    for client in clients:
        assert (await client.next())["event"]["type"] == "shared"
    first, *others = (client.written[-1] for client in clients)
    assert all(frame is first for frame in others)


async def test_no_pong_closes_and_pong_keeps_open(pubsub: MemoryPubSub) -> None:
    hub = NotificationHub(pubsub, resume_wait=0.01, ping_interval=0.05, ping_timeout=0.1)
    silent, polite = FakeClient(), FakeClient()
    async with running(hub), anyio.create_task_group() as tasks:
        tasks.start_soon(hub.serve, silent, "alice", "a")
        tasks.start_soon(hub.serve, polite, "alice", "b")
        with anyio.fail_after(3):
            for _ in range(4):
                assert (await polite.next())["type"] == "ping"
                await polite.say({"type": "pong"})
        assert (await silent.wait_closed())[0] == CloseCode.PONG_TIMEOUT
        assert polite.closed is None
        tasks.cancel_scope.cancel()


async def test_expired_session_is_closed_at_the_next_ping(pubsub: MemoryPubSub) -> None:
    hub = NotificationHub(pubsub, resume_wait=0.01, ping_interval=0.05)
    answers = [True]  # valid when the subscription starts, then expired

    async def valid() -> bool:
        return answers.pop() if answers else False

    client = FakeClient()
    async with running(hub):
        with anyio.fail_after(3):
            code = await hub.serve(client, "alice", "s", session_valid=valid)
    assert code == CloseCode.SESSION_ENDED
    assert not any(frame.data == b'{"type":"ping"}' for frame in client.written)


async def test_a_logout_before_the_subscription_starts_is_not_missed(
    pubsub: MemoryPubSub,
) -> None:
    # The logout marker went out between accept and the subscription (no stream holds it
    # for this client): the session is asked again once the subscription is live.
    hub = NotificationHub(pubsub, resume_wait=0.01, ping_interval=60)

    async def ended() -> bool:
        return False

    client = FakeClient()
    async with running(hub):
        with anyio.fail_after(3):
            code = await hub.serve(client, "alice", "s", session_valid=ended)
    assert code == CloseCode.SESSION_ENDED
    assert client.closed == (CloseCode.SESSION_ENDED, "session ended")


async def test_logout_closes_only_that_sessions_sockets(hub: NotificationHub, serve: Serve) -> None:
    gone, kept = await serve(session="gone"), await serve(session="kept")
    await hub.end_session("alice", "gone")
    await hub.publish("alice", "after-logout")
    assert (await kept.next())["event"]["type"] == "after-logout"
    assert (await gone.wait_closed())[0] == CloseCode.SESSION_ENDED
    assert kept.closed is None


async def test_shutdown_closes_every_client_with_1012(hub: NotificationHub, serve: Serve) -> None:
    clients = [await serve(session=str(n)) for n in range(3)]
    hub.close_all()
    assert {(await c.wait_closed())[0] for c in clients} == {CloseCode.RESTART}
    late = FakeClient()
    assert await hub.serve(late, "alice", "late") == CloseCode.RESTART


async def test_shutdown_while_a_client_connects_closes_it_too(pubsub: MemoryPubSub) -> None:
    hub = NotificationHub(pubsub, resume_wait=0.3, ping_interval=60)
    client = FakeClient()
    async with running(hub), anyio.create_task_group() as tasks:
        tasks.start_soon(hub.serve, client, "alice", "s")
        await anyio.sleep(0.05)  # inside the resume window, before streaming
        hub.close_all()
        assert (await client.wait_closed())[0] == CloseCode.RESTART


@pytest.mark.parametrize(
    "message",
    [
        "not json",
        '{"type": "dance"}',
        '{"type": "resume", "epoch": "e", "offset": "seven"}',
        '{"type": "resume", "epoch": "e", "offset": -1}',
        '{"type": "resume", "offset": 1}',
        '{"type": "resume", "epoch": "e", "offset": ' + "[" * 3000 + "]" * 3000 + "}",
        '{"type": "resume", "epoch": "e", "offset": 123456789012345678901234567890}',
        b'{"type": "pong", "x": [1, 2',
    ],
)
async def test_bad_client_messages_get_an_error_frame_and_the_socket_stays(
    hub: NotificationHub, serve: Serve, message: str | bytes
) -> None:
    client = await serve()
    await client.to_server_send.send(message)
    error = await client.next()
    assert error["type"] == "error" and error["code"] == "bad_message"
    await hub.publish("alice", "still-here")
    assert (await client.next())["event"]["type"] == "still-here"


async def test_client_leaving_ends_serve(hub: NotificationHub, serve: Serve) -> None:
    client = await serve()
    await client.to_server_send.send(None)
    with anyio.fail_after(3):
        await client.finished.wait()
    assert hub.stats.connections == 0
    assert client.closed is None  # the client left; there was nothing to close


@pytest.mark.parametrize(
    ("user", "type", "data", "error"),
    [
        ("has space", "t", None, InvalidInput),
        ("alice", "", None, InvalidInput),
        ("alice", "x" * 65, None, InvalidInput),
        ("alice", "t", "x" * 70_000, TooLarge),
    ],
)
async def test_bad_events_are_refused(
    hub: NotificationHub, user: str, type: str, data: Any, error: type[Exception]
) -> None:
    with pytest.raises(error):
        await hub.publish(user, type, data)


async def test_idempotent_publish_delivers_once(hub: NotificationHub, serve: Serve) -> None:
    client = await serve()
    first = await hub.publish("alice", "once", id="evt-1")
    again = await hub.publish("alice", "once", id="evt-1")
    assert first == again
    await hub.publish("alice", "next")
    assert [f["event"]["type"] for f in await client.notifications(2)] == ["once", "next"]


class BrokenPubSub(MemoryPubSub):
    async def position(self, channel: str) -> Position:
        raise PubSubError("pubsub position: cannot reach Redis")


async def test_backend_failure_before_streaming_closes_with_1011() -> None:
    hub = NotificationHub(BrokenPubSub(), resume_wait=0.01)
    client = FakeClient()
    async with running(hub):
        with anyio.fail_after(3):
            assert await hub.serve(client, "alice", "s") == CloseCode.INTERNAL
    assert client.closed is not None and client.closed[0] == CloseCode.INTERNAL
    assert hub.stats.connections == 0


@pytest.mark.parametrize("message", [b"\xff\xfe", b'{"type": "resume", "epoch": "\xc3"}', "\ud800"])
async def test_a_message_that_is_not_utf8_closes_with_1007_not_1011(
    hub: NotificationHub, serve: Serve, message: str | bytes
) -> None:
    client = await serve()
    await client.to_server_send.send(message)
    assert await client.wait_closed() == (CloseCode.INVALID_DATA, "messages must be UTF-8")


async def test_resume_messages_are_rate_limited_per_socket(
    pubsub: MemoryPubSub,
) -> None:
    hub = NotificationHub(pubsub, resume_wait=0.01, resume_burst=3, resume_per_second=0.01)
    position = await hub.publish("alice", "first")
    resume = {"type": "resume", "epoch": position.epoch, "offset": 0}
    client = FakeClient()
    async with running(hub), anyio.create_task_group() as tasks:
        tasks.start_soon(hub.serve, client, "alice", "s")
        await anyio.sleep(0.05)
        for _ in range(3):  # the burst: each replays the one event
            await client.say(resume)
            assert (await client.next())["event"]["type"] == "first"
        await client.say(resume)
        refused = await client.next()
        assert refused["type"] == "error" and refused["code"] == "rate_limited"
        await hub.publish("alice", "still-here")
        assert (await client.next())["event"]["type"] == "still-here"
        tasks.cancel_scope.cancel()


async def test_sockets_per_user_are_bounded_with_4029(pubsub: MemoryPubSub) -> None:
    hub = NotificationHub(pubsub, resume_wait=0.01, max_sockets_per_user=2)
    first, second, third, other = FakeClient(), FakeClient(), FakeClient(), FakeClient()
    left = anyio.Event()

    async def serve_first() -> None:
        await hub.serve(first, "alice", "a")
        left.set()

    async with running(hub), anyio.create_task_group() as tasks:
        tasks.start_soon(serve_first)
        tasks.start_soon(hub.serve, second, "alice", "b")
        await anyio.sleep(0.05)
        with anyio.fail_after(3):
            assert await hub.serve(third, "alice", "c") == CloseCode.TOO_MANY_SOCKETS
        assert third.closed == (CloseCode.TOO_MANY_SOCKETS, "too many sockets: at most 2 per user")
        tasks.start_soon(hub.serve, other, "bob", "d")  # another user is not counted with her
        await first.to_server_send.send(None)  # one leaves: a place is free again
        with anyio.fail_after(3):
            await left.wait()
        again = FakeClient()
        tasks.start_soon(hub.serve, again, "alice", "e")
        await anyio.sleep(0.05)
        await hub.publish("alice", "hello")
        assert (await again.next())["event"]["type"] == "hello"
        assert other.closed is None
        tasks.cancel_scope.cancel()


@pytest.mark.parametrize(("old", "size"), [(4, 60), (5, 60), (6, 60), (2, 250)])
async def test_a_live_event_during_the_tail_of_a_replay_goes_out_after_it(
    pubsub: MemoryPubSub, old: int, size: int
) -> None:
    # A replay waiting for the client to take what it was sent held its next event while
    # it waited; when that was the last one, the subscription looked empty, so a live event
    # coming then went out first (offsets 1-4, 6), and the client was closed with 4008
    # before the held one was sent: resuming from 6, it had lost 5 for good.
    hub = NotificationHub(pubsub, send_buffer_bytes=512, max_event_bytes=512, resume_wait=0.3)
    start = await pubsub.position("alice")
    for _ in range(old):  # (2 of 250: the replay waits for room before sending the last)
        await hub.publish("alice", "old", "x" * size)
    client = FakeClient()
    client.stall = FakeClient.kind != "queued"  # a transport that takes nothing for now
    async with running(hub), anyio.create_task_group() as tasks:
        await client.say({"type": "resume", "epoch": start.epoch, "offset": 0})
        tasks.start_soon(hub.serve, client, "alice", "s")
        await anyio.sleep(0.3)  # the replay has sent what the buffer takes, and waits
        await hub.publish("alice", "live")
        await anyio.sleep(0.05)
        client.release()
        frames = await client.notifications(old + 1)
        assert [f["offset"] for f in frames] == list(range(1, old + 2))
        assert client.closed is None
        tasks.cancel_scope.cancel()


async def test_a_long_replay_is_sent_at_the_clients_pace_not_closed(pubsub: MemoryPubSub) -> None:
    # 40 events of ~100 bytes (4 KB) behind a 512-byte send buffer: the replay waits for the
    # client instead of closing it (4008) or holding the history in memory.
    hub = NotificationHub(pubsub, send_buffer_bytes=512, max_event_bytes=512, resume_wait=0.3)
    start = await pubsub.position("alice")
    sent = [await hub.publish("alice", "old", "x" * 60) for _ in range(40)]
    client = FakeClient()
    client.stall = FakeClient.kind != "queued"  # a transport that takes nothing for now
    async with running(hub), anyio.create_task_group() as tasks:
        await client.say({"type": "resume", "epoch": start.epoch, "offset": 0})
        tasks.start_soon(hub.serve, client, "alice", "s")
        if client.stall:
            await anyio.sleep(0.3)
            assert 0 < client.unsent() <= 512 + 200, "the replay did not wait for the client"
            assert client.closed is None
            client.release()
        frames = await client.notifications(40)
        assert [f["offset"] for f in frames] == [p.offset for p in sent]
        assert client.closed is None
        tasks.cancel_scope.cancel()
