"""Frames written under ASGI (adapters/ondoki_adapters/web/direct.py): their bytes, when the
path is used, and on trio, how partial writes and hypercorn's own writes share a socket.

That `ondoki serve` finds hypercorn's transport on both loops, and that clients read what it
writes, is shown end to end in tests/e2e/test_notifications.py
(`..._straight_to_the_transport...`) and tests/e2e/test_ws_limits.py (`..._interleave_...`).
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any, cast

import pytest
import trio
import trio.testing
from hypercorn.config import Config
from hypercorn.events import RawData
from hypercorn.trio.tcp_server import TCPServer as TrioTCPServer
from starlette.types import Receive, Scope, Send
from wsproto.connection import Connection, ConnectionType
from wsproto.events import CloseConnection, Ping
from wsproto.frame_protocol import FrameProtocol, Opcode

from ondoki.domain.notifications import Frame
from ondoki.errors import ConfigError
from ondoki_adapters.web.app import serve_app
from ondoki_adapters.web.direct import (
    HYPERCORN_SERIES,
    DirectFrames,
    DirectWriter,
    TrioTransport,
    Underneath,
    check_hypercorn,
    find_transport,
    text_frame,
    trio_transport,
    writer,
)


def parse_as_client(data: bytes) -> list[tuple[Opcode, str]]:
    """What a client's RFC 6455 parser (wsproto's) makes of `data`."""
    protocol = FrameProtocol(client=True, extensions=[])
    protocol.receive_bytes(data)
    return [(frame.opcode, str(frame.payload)) for frame in protocol.received_frames()]


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65_535, 65_536, 200_000])
def test_text_frames_parse_back_at_every_length_boundary(size: int) -> None:
    text = "é" * (size // 2) + "x" * (size % 2)  # two bytes per é: lengths count bytes
    assert len(text.encode()) == size
    assert parse_as_client(text_frame(text.encode())) == [(Opcode.TEXT, text)]


def test_consecutive_frames_stay_apart() -> None:
    data = text_frame(b"one") + text_frame(b"two" * 100) + text_frame(b"three")
    assert parse_as_client(data) == [
        (Opcode.TEXT, "one"),
        (Opcode.TEXT, "two" * 100),
        (Opcode.TEXT, "three"),
    ]


class FakeTransport:
    def __init__(self, *, closing: bool = False) -> None:
        self.closing = closing
        self.data: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.data.append(data)

    def get_write_buffer_size(self) -> int:
        return sum(map(len, self.data))

    def is_closing(self) -> bool:
        return self.closing

    def abort(self) -> None:
        self.closing = True


def accepted(transport: FakeTransport) -> tuple[Callable[[Frame], int | None], Connection]:
    """A direct writer's `write` over `transport`, as for a WebSocket hypercorn accepted."""
    connection = Connection(ConnectionType.SERVER)
    found = writer(Underneath(SimpleNamespace(connection=connection), transport))
    assert found is not None
    return found.write, connection


def test_a_frame_is_encoded_once_for_every_connection() -> None:
    frame = Frame(b'{"type":"ping"}')
    first, second = FakeTransport(), FakeTransport()
    assert accepted(first)[0](frame) == len(text_frame(frame.data))
    wire = frame.wire
    assert wire is not None
    accepted(second)[0](frame)
    assert frame.wire is wire and second.data == [wire]


def test_nothing_is_written_to_a_closing_transport() -> None:
    gone = FakeTransport(closing=True)
    assert accepted(gone)[0](Frame(b"{}")) is None
    assert gone.data == []


def test_no_frame_follows_a_close() -> None:
    transport = FakeTransport()
    write, connection = accepted(transport)
    write(Frame(b'{"n":1}'))
    connection.send(CloseConnection(code=1012))  # what hypercorn does on websocket.close
    assert write(Frame(b'{"n":2}')) is None
    assert transport.data == [text_frame(b'{"n":1}')]


def test_a_stream_not_yet_accepted_gets_no_writer() -> None:
    assert writer(Underneath(SimpleNamespace(), FakeTransport())) is None


async def some_send(message: object) -> None:
    pass


class NotHypercorn:
    async def app_send(self, message: object) -> None:
        pass


@pytest.mark.parametrize("send", [some_send, NotHypercorn().app_send, None])
def test_other_servers_get_no_transport(send: object) -> None:
    # The hub then queues frames and awaits ASGI sends (the in-process TestClient is such a
    # server: every /ws test in tests/web runs that way).
    assert find_transport(send) is None


def test_wsproto_sees_a_close_frame_after_direct_frames() -> None:
    # Hypercorn's own frames (here, a close) follow ours on the same byte stream.
    server = FrameProtocol(client=False, extensions=[])
    data = text_frame(b"last") + server.close(1012, "restart")
    client = FrameProtocol(client=True, extensions=[])
    client.receive_bytes(data)
    frames = list(client.received_frames())
    assert [(f.opcode, f.payload) for f in frames] == [
        (Opcode.TEXT, "last"),
        (Opcode.CLOSE, (1012, "restart")),
    ]


def test_the_installed_hypercorn_is_the_series_direct_frames_follow() -> None:
    # Fails loudly on a hypercorn upgrade: re-check find_transport's path, then the series.
    check_hypercorn()
    assert HYPERCORN_SERIES == "0.18"


@pytest.mark.parametrize("installed", ["0.19.0", "0.17.3", "1.18.0"])
def test_another_hypercorn_series_is_refused_naming_the_setting(installed: str) -> None:
    with pytest.raises(ConfigError, match=r"ONDOKI_WS_DIRECT_FRAMES.*hypercorn"):
        check_hypercorn(installed)


def test_unsent_is_what_the_transport_holds() -> None:
    transport = FakeTransport()
    found = writer(
        Underneath(SimpleNamespace(connection=Connection(ConnectionType.SERVER)), transport)
    )
    assert found is not None
    found.write(Frame(b"abc"))
    assert found.unsent() == len(text_frame(b"abc"))


def test_serve_app_wraps_the_whole_app_unless_direct_frames_are_off() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        pass

    wrapped = serve_app(app, direct_frames=True)
    assert isinstance(wrapped, DirectFrames) and wrapped.app is app
    assert serve_app(app, direct_frames=False) is app


# -- trio: hypercorn's trio worker, over a socket pair with small buffers ------------------


def hypercorn_trio_server(stream: trio.SocketStream) -> TrioTCPServer:
    """hypercorn's trio TCPServer for one connection, over `stream` (it is typed for TLS
    alone; without TLS, hypercorn hands it a plain SocketStream)."""
    none: Any = None
    return TrioTCPServer(none, Config(), none, none, cast(Any, stream))


class Trio:
    """hypercorn's trio TCPServer over one end of a socket pair (as `find_transport` reaches
    it from the ASGI `send`), our transport installed, a direct writer over an accepted
    wsproto connection; `peer` is the client's end (a plain non-blocking socket), which
    reads only when told."""

    def __init__(self) -> None:
        ours, self.peer = self.sockets = socket.socketpair()
        self.peer.setblocking(False)
        # Small buffers: a 100 kB frame is written in parts.
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        self.peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.server = hypercorn_trio_server(trio.SocketStream(trio.socket.from_stdlib_socket(ours)))
        found = trio_transport(self.server)
        assert found is not None
        self.transport = found
        self.connection = Connection(ConnectionType.SERVER)
        written = writer(Underneath(SimpleNamespace(connection=self.connection), found))
        assert written is not None
        self.writer = written
        self.received = bytearray()

    async def hypercorn_sends(self, data: bytes) -> None:
        """What hypercorn does to write its own frames (pongs, closes, ...)."""
        await self.server.protocol_send(RawData(data))

    async def read_to(self, total: int) -> None:
        """Read as the client, as bytes come, until it has read `total` in all."""
        while len(self.received) < total:
            if not self.take(total - len(self.received)):
                await trio.lowlevel.wait_readable(self.peer)

    def take(self, size: int) -> int:
        """Read at most `size` bytes as the client, of what is there now (no task runs
        meanwhile); how many."""
        try:
            data = self.peer.recv(size)
        except BlockingIOError:
            return 0
        assert data, "the connection closed"
        self.received += data
        return len(data)

    def close(self) -> None:
        for end in self.sockets:
            end.close()

    def frames(self) -> list[tuple[Opcode, object]]:
        protocol = FrameProtocol(client=True, extensions=[])
        protocol.receive_bytes(bytes(self.received))
        return [(frame.opcode, frame.payload) for frame in protocol.received_frames()]


def on_trio(test: Callable[[Trio], Awaitable[None]]) -> Callable[[], None]:
    """Run `test` in a trio run of its own, with a fresh `Trio`."""

    def run() -> None:
        async def main() -> None:
            ends = Trio()
            try:
                await test(ends)
            finally:
                ends.close()

        trio.run(main)

    run.__name__ = test.__name__
    return run


BIG = "b" * 100_000


@on_trio
async def test_trio_what_the_socket_does_not_take_waits_for_flush(trio_: Trio) -> None:
    first = Frame(BIG.encode())
    unsent = trio_.writer.write(first)
    assert unsent is not None and 0 < unsent < len(text_frame(first.data))  # partly written
    assert trio_.writer.waiting() and trio_.writer.unsent() == unsent
    # A frame written now waits behind the rest of the first, never between its parts.
    assert trio_.writer.write(Frame(b"small")) == unsent + len(text_frame(b"small"))
    async with trio.open_nursery() as tasks:
        tasks.start_soon(trio_.writer.flush)
        await trio_.read_to(len(text_frame(first.data)) + len(text_frame(b"small")))
    assert trio_.frames() == [(Opcode.TEXT, BIG), (Opcode.TEXT, "small")]
    assert not trio_.writer.waiting() and trio_.writer.unsent() == 0
    # Nothing waits: the next frame goes straight to the socket.
    assert trio_.writer.write(Frame(b"next")) == 0


@on_trio
async def test_trio_hypercorns_own_frames_come_between_whole_frames(trio_: Trio) -> None:
    # A pong: hypercorn takes its send lock (ours), which first finishes the frame partly
    # written; a frame written while hypercorn holds the lock goes after its pong.
    pong = bytes(FrameProtocol(client=False, extensions=[]).pong(b"p"))
    trio_.writer.write(Frame(BIG.encode()))
    async with trio.open_nursery() as tasks:
        tasks.start_soon(trio_.hypercorn_sends, pong)
        await trio.testing.wait_all_tasks_blocked()
        assert trio_.transport.lock.locked()  # hypercorn waits for the client to read
        trio_.writer.write(Frame(b"after the pong"))
        tasks.start_soon(trio_.writer.flush)
        await trio_.read_to(
            len(text_frame(BIG.encode())) + len(pong) + len(text_frame(b"after the pong"))
        )
    assert trio_.frames() == [
        (Opcode.TEXT, BIG),
        (Opcode.PONG, b"p"),
        (Opcode.TEXT, "after the pong"),
    ]


@on_trio
async def test_trio_frames_wait_while_hypercorn_writes(trio_: Trio) -> None:
    # hypercorn is partway through a large frame of its own (its send_all waits for the
    # client), and the client has just made room: a frame of ours must not go into it.
    own = bytes(FrameProtocol(client=False, extensions=[]).send_data(b"h" * 100_000, fin=True))
    async with trio.open_nursery() as tasks:
        tasks.start_soon(trio_.hypercorn_sends, own)
        await trio.testing.wait_all_tasks_blocked()
        assert trio_.take(len(own) // 2) > 0  # (hypercorn has not run since)
        unsent = trio_.writer.write(Frame(b"ours"))
        tasks.start_soon(trio_.writer.flush)
        await trio_.read_to(len(own) + len(text_frame(b"ours")))
    assert unsent == len(text_frame(b"ours"))  # all of it waited
    assert trio_.frames() == [(Opcode.BINARY, b"h" * 100_000), (Opcode.TEXT, "ours")]


@on_trio
async def test_trio_a_close_comes_after_the_frames_waiting_and_nothing_after_it(
    trio_: Trio,
) -> None:
    frames = [Frame(f"{n}{BIG}".encode()) for n in range(3)]
    for frame in frames:
        trio_.writer.write(frame)
    assert trio_.writer.waiting()
    # What hypercorn does on websocket.close: wsproto leaves OPEN, then the close is sent.
    close = trio_.connection.send(CloseConnection(code=1012, reason="restart"))
    assert trio_.writer.write(Frame(b"too late")) is None
    async with trio.open_nursery() as tasks:
        tasks.start_soon(trio_.hypercorn_sends, close)
        await trio_.read_to(sum(len(text_frame(f.data)) for f in frames) + len(close))
    assert trio_.frames() == [
        *[(Opcode.TEXT, f.data.decode()) for f in frames],
        (Opcode.CLOSE, (1012, "restart")),
    ]
    assert trio_.writer.unsent() == 0


@on_trio
async def test_trio_a_cancelled_flush_loses_nothing(trio_: Trio) -> None:
    frames = [Frame(f"{n}{BIG}".encode()) for n in range(3)]
    for frame in frames:
        trio_.writer.write(frame)
    size = sum(len(text_frame(f.data)) for f in frames)
    async with trio.open_nursery() as tasks:
        tasks.start_soon(trio_.writer.flush)
        await trio_.read_to(size // 2)  # it has written part of what waited...
        await trio.testing.wait_all_tasks_blocked()
        tasks.cancel_scope.cancel()  # ...and is cancelled while it waits for the client
    assert trio_.writer.waiting() and not trio_.transport.lock.locked()
    async with trio.open_nursery() as tasks:
        tasks.start_soon(trio_.writer.flush)
        await trio_.read_to(size)
    assert trio_.frames() == [(Opcode.TEXT, f.data.decode()) for f in frames]


@on_trio
async def test_trio_abort_closes_the_socket_and_drops_what_waits(trio_: Trio) -> None:
    trio_.writer.write(Frame(BIG.encode()))
    async with trio.open_nursery() as tasks:
        tasks.start_soon(trio_.writer.flush)
        await trio.testing.wait_all_tasks_blocked()
        trio_.transport.abort()  # the flush waiting for the client ends quietly
    assert trio_.writer.unsent() == 0 and not trio_.writer.waiting()
    assert trio_.transport.is_closing() and trio_.writer.write(Frame(b"{}")) is None
    assert trio_.take(1 << 20) > 0  # what the kernel took is still delivered


@on_trio
async def test_trio_a_client_that_went_away_breaks_nothing(trio_: Trio) -> None:
    trio_.peer.close()
    trio_.writer.write(Frame(BIG.encode()))  # the kernel refuses: nothing waits, no error
    assert not trio_.writer.waiting() and trio_.writer.unsent() == 0
    async with trio_.transport:  # hypercorn's next write finds nothing of ours to write
        pass


@on_trio
async def test_trio_a_client_that_goes_away_while_bytes_wait_breaks_nothing(trio_: Trio) -> None:
    # Tried: the client leaves with part of a frame waiting, then our flush, or hypercorn's
    # own next write (a pong, its close), or a flush waiting for the lock while hypercorn
    # closes the socket. Each once raised BufferError (what waits was dropped while a view
    # of it was open): out of hypercorn's reader, that ended the whole trio worker.
    trio_.writer.write(Frame(BIG.encode()))
    assert trio_.writer.waiting()
    trio_.peer.close()
    await trio_.writer.flush()
    assert not trio_.writer.waiting() and trio_.writer.unsent() == 0
    trio_.writer.write(Frame(BIG.encode()))  # nothing is taken now, nothing waits
    async with trio_.transport:
        pass
    assert not trio_.writer.waiting()


@on_trio
async def test_trio_hypercorn_writing_after_the_client_left_breaks_nothing(trio_: Trio) -> None:
    trio_.writer.write(Frame(BIG.encode()))
    trio_.peer.close()
    async with trio_.transport:  # hypercorn's next write: ours are dropped, no error
        pass
    assert not trio_.writer.waiting()


@on_trio
async def test_trio_the_socket_closed_while_a_flush_waits_for_the_lock(trio_: Trio) -> None:
    trio_.writer.write(Frame(BIG.encode()))
    await trio_.transport.lock.acquire()  # hypercorn is writing
    async with trio.open_nursery() as tasks:
        tasks.start_soon(trio_.writer.flush)
        await trio.testing.wait_all_tasks_blocked()
        trio_.transport.socket.close()  # hypercorn's own close (it takes no lock)
        trio_.transport.lock.release()
    assert not trio_.writer.waiting()


@on_trio
async def test_trio_the_transport_is_installed_once_as_hypercorns_send_lock(trio_: Trio) -> None:
    assert trio_.server.send_lock is cast(Any, trio_.transport)
    assert trio_transport(trio_.server) is trio_.transport
    # hypercorn writes under it (here with nothing of ours waiting).
    ping = trio_.connection.send(Ping(b"x"))
    await trio_.hypercorn_sends(ping)
    await trio_.read_to(len(ping))
    assert trio_.frames() == [(Opcode.PING, b"x")]


def test_trio_no_transport_while_hypercorn_writes_or_over_tls() -> None:
    async def main() -> None:
        ours, peer = trio.socket.socketpair()
        peer.close()
        stream = trio.SocketStream(ours)
        server = hypercorn_trio_server(stream)
        lock = server.send_lock
        async with lock:  # hypercorn is writing: taking its lock over now could interleave
            assert trio_transport(server) is None
        assert server.send_lock is lock
        server.stream = trio.SSLStream(stream, ssl.create_default_context())
        assert trio_transport(server) is None
        assert server.send_lock is lock
        ours.close()

    trio.run(main)


def test_asyncio_writers_never_keep_anything_waiting() -> None:
    transport = FakeTransport()
    found = writer(
        Underneath(SimpleNamespace(connection=Connection(ConnectionType.SERVER)), transport)
    )
    assert type(found) is DirectWriter and not isinstance(found.transport, TrioTransport)
    found.write(Frame(b"abc"))
    assert found.unsent() > 0 and not found.waiting()
