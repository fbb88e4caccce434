"""Frames written under ASGI (adapters/ondoki_adapters/web/direct.py): their bytes, and when the path is used.

That `ondoki serve` finds hypercorn's transport, and that clients read what it writes, is
shown end to end in tests/e2e/test_notifications.py (`..._straight_to_the_transport...`).
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

import pytest
from starlette.types import Receive, Scope, Send
from wsproto.connection import Connection, ConnectionType
from wsproto.events import CloseConnection
from wsproto.frame_protocol import FrameProtocol, Opcode

from ondoki.domain.notifications import Frame
from ondoki.errors import ConfigError
from ondoki_adapters.web.app import serve_app
from ondoki_adapters.web.direct import (
    HYPERCORN_SERIES,
    DirectFrames,
    Underneath,
    check_hypercorn,
    find_transport,
    text_frame,
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
