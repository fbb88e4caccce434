"""The benchmarks' own WebSocket client (tests/bench/wsclient.py) reads what servers send.

The fan-out figures are only as true as the client's frame counting: framing at every length,
frames split across reads and many in one read, fragments, control frames and refusals.
"""

from __future__ import annotations

import asyncio
import os
import struct

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

from tests.bench.wsclient import HandshakeError, WebSocket, _accept

pytestmark = pytest.mark.anyio

Received = list[tuple[bytes, bool]]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # an asyncio Protocol


class FakeTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = self.aborted = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True


def frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bool = False) -> bytes:
    first = (0x80 if fin else 0) | opcode
    masked = 0x80 if mask else 0
    if len(payload) < 126:
        head = bytes((first, masked | len(payload)))
    elif len(payload) < 1 << 16:
        head = bytes((first, masked | 126)) + struct.pack("!H", len(payload))
    else:
        head = bytes((first, masked | 127)) + struct.pack("!Q", len(payload))
    if mask:
        key = os.urandom(4)
        payload = key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return head + payload


def unmask(data: bytes) -> tuple[int, bytes]:
    assert data[1] & 0x80, "client frames must be masked"
    key = data[2:6]
    return data[0], bytes(b ^ key[i % 4] for i, b in enumerate(data[6 : 6 + (data[1] & 0x7F)]))


async def opened() -> tuple[WebSocket, FakeTransport, Received, list[int]]:
    ws = WebSocket("ws://127.0.0.1:1234/ws?x=1", "tok")
    transport = FakeTransport()
    ws.connection_made(transport)  # type: ignore[arg-type]
    request = transport.written[0].decode()
    assert request.startswith("GET /ws?x=1 HTTP/1.1\r\nHost: 127.0.0.1:1234\r\n"), request
    assert "Authorization: Bearer tok\r\n" in request
    key = request.split("Sec-WebSocket-Key: ")[1].split("\r\n")[0]
    answer = (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {_accept(key)}\r\n\r\n"
    ).encode()
    early = frame(1, b"early")  # right behind the answer, split too: kept until start()
    ws.data_received(answer[:10])
    assert not ws.opened.done()
    ws.data_received(answer[10:] + early[:3])
    assert ws.opened.done() and ws.opened.exception() is None
    ws.data_received(early[3:])
    messages: Received = []
    closes: list[int] = []
    ws.start(lambda payload, text: messages.append((payload, text)), closes.append)
    assert messages == [(b"early", True)]
    messages.clear()
    return ws, transport, messages, closes


async def test_frames_at_every_length_split_or_together() -> None:
    ws, transport, messages, closes = await opened()
    small, mid, big = b"a" * 125, b"b" * 300, b"c" * 70_000
    ws.data_received(frame(1, small) + frame(1, mid) + frame(1, big) + frame(2, b"bin"))
    assert messages == [(small, True), (mid, True), (big, True), (b"bin", False)]
    messages.clear()
    data = frame(1, mid) + frame(1, big[:200]) + frame(1, b"x")
    for i in range(len(data)):  # byte by byte
        ws.data_received(data[i : i + 1])
    assert messages == [(mid, True), (big[:200], True), (b"x", True)]
    messages.clear()
    # Fragments with a ping between them: the ping is answered with a masked pong.
    data = frame(1, b"hel", fin=False) + frame(0, b"lo ", fin=False) + frame(9, b"pp")
    ws.data_received(data + frame(0, b"world"))
    assert messages == [(b"hello world", True)]
    assert unmask(transport.written[-1]) == (0x8A, b"pp")
    # A close: its code is kept and echoed; what follows is ignored.
    ws.data_received(frame(8, struct.pack("!H", 1011) + b"bye") + frame(1, b"after"))
    assert ws.close_code == 1011 and transport.closed
    assert unmask(transport.written[-1]) == (0x88, struct.pack("!H", 1011))
    assert messages == [(b"hello world", True)]
    ws.connection_lost(None)
    assert closes == [1011]


async def test_protocol_errors_and_lost_connections_are_recorded() -> None:
    ws, transport, messages, closes = await opened()
    ws.data_received(frame(1, b"ok") + frame(1, b"masked", mask=True) + frame(1, b"no"))
    assert messages == [(b"ok", True)] and transport.aborted
    ws.connection_lost(None)
    assert closes == [1002]
    ws, transport, messages, closes = await opened()
    ws.connection_lost(ConnectionResetError())
    assert closes == [1006]


async def test_against_a_real_server() -> None:
    # The `websockets` server checks our handshake, masking and close; we read its frames.
    async def handler(connection: ServerConnection) -> None:
        assert connection.request is not None
        assert connection.request.headers["Authorization"] == "Bearer t"
        await connection.send('{"type":"notification","a":1}')
        await connection.send("x" * 70_000)
        await connection.send(iter(["frag", "mented"]))
        await connection.send(b"binary")
        await (await connection.ping(b"hi"))
        await connection.close(4001, "done")

    messages: Received = []
    ended: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    async with serve(handler, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        ws = await WebSocket.open(f"ws://127.0.0.1:{port}/ws/x", "t")
        ws.start(lambda payload, text: messages.append((payload, text)), ended.set_result)
        assert await asyncio.wait_for(ended, 5) == 4001
    assert messages == [
        (b'{"type":"notification","a":1}', True),
        (b"x" * 70_000, True),
        (b"fragmented", True),
        (b"binary", False),
    ]

    def refuse(connection: ServerConnection, request: Request) -> Response:
        return connection.respond(403, "no\n")

    async with serve(handler, "127.0.0.1", 0, process_request=refuse) as server:
        port = server.sockets[0].getsockname()[1]
        with pytest.raises(HandshakeError, match="403"):
            await WebSocket.open(f"ws://127.0.0.1:{port}/nope", None)
