"""WebSocket frames written straight to the connection's transport, under the ASGI server.

Fan-out sends each notification to many sockets. Through ASGI, every frame is a
`websocket.send` per socket, which hypercorn turns into a wsproto event, a frame and a write,
awaiting each layer: measured, that was most of the CPU fan-out cost. Server frames are not
masked (RFC 6455, section 5.1), so a text frame is the same bytes for every client: it is
encoded once per process (kept on the hub's `Frame`) and handed to each `transport.write`.

ASGI does not expose the transport. `DirectFrames` finds it by following hypercorn's own
objects from the `send` callable hypercorn gives the app (HTTP/1.1 on asyncio or uvloop, as
`ondoki serve` runs it) and leaves it in the scope. Anything else (trio, HTTP/2, another
server, a hypercorn laid out differently) finds nothing, and the socket falls back to ASGI
sends: slower, same bytes on the wire. Frames stop as soon as hypercorn's wsproto connection
leaves OPEN (a Close sent or received), so no data frame ever follows a Close. The e2e test
`test_frames_go_straight_to_the_transport_where_the_server_allows` pins that the shipped
hypercorn is found; tests/web/test_direct.py covers the rest.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from starlette.types import ASGIApp, Receive, Scope, Send
from wsproto.connection import Connection, ConnectionState

from ondoki.domain.notifications import Frame

SCOPE_KEY = "ondoki.transport"


@runtime_checkable
class Transport(Protocol):
    """What is used of an asyncio (or uvloop) transport."""

    def write(self, data: bytes) -> None: ...

    def get_write_buffer_size(self) -> int: ...

    def is_closing(self) -> bool: ...

    def abort(self) -> None: ...


def text_frame(payload: bytes) -> bytes:
    """One unmasked, unfragmented text frame (RFC 6455, section 5.2) of UTF-8 `payload`:
    FIN and opcode 1, then the payload length in 7, 7+16 or 7+64 bits, then the payload."""
    size = len(payload)
    if size < 126:
        head = bytes((0x81, size))
    elif size < 1 << 16:
        head = bytes((0x81, 126)) + size.to_bytes(2, "big")
    else:
        head = bytes((0x81, 127)) + size.to_bytes(8, "big")
    return head + payload


@dataclass(frozen=True)
class Underneath:
    """What hypercorn has under one WebSocket: its stream object and the transport."""

    stream: Any  # hypercorn's WSStream; its wsproto `connection` exists once accepted
    transport: Transport


def find_transport(send: Any) -> Underneath | None:
    """The transport under a WebSocket that hypercorn serves over HTTP/1.1, from the ASGI
    `send` it gave the app; None for any other server, protocol or layout."""
    # hypercorn: WSStream.app_send -> H11Protocol.stream_send -> TCPServer.protocol_send,
    # whose StreamWriter holds the transport.
    stream = getattr(send, "__self__", None)
    if type(stream).__name__ != "WSStream":
        return None
    protocol = getattr(getattr(stream, "send", None), "__self__", None)
    if type(protocol).__name__ != "H11Protocol":
        return None
    server = getattr(getattr(protocol, "send", None), "__self__", None)
    transport = getattr(getattr(server, "writer", None), "transport", None)
    return Underneath(stream, transport) if isinstance(transport, Transport) else None


def writer(found: Underneath) -> Callable[[Frame], int | None] | None:
    """The hub's direct writer for one accepted connection (see `ClientConnection.writer`);
    None when hypercorn holds no wsproto connection for it."""
    connection = getattr(found.stream, "connection", None)
    if not isinstance(connection, Connection):
        return None
    transport = found.transport

    def write(frame: Frame) -> int | None:
        if connection.state is not ConnectionState.OPEN or transport.is_closing():
            # Closing or gone: no data frame may follow a Close (RFC 6455, section 5.5.1);
            # the hub hears of the end from the socket's receive side.
            return None
        wire = frame.wire
        if wire is None:
            wire = frame.wire = text_frame(frame.data)
        transport.write(wire)
        return transport.get_write_buffer_size()

    return write


class DirectFrames:
    """Leaves each WebSocket's transport in its scope (`SCOPE_KEY`), when it can be found.

    It must see the server's own `send`: install it outside every middleware that wraps it.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            scope[SCOPE_KEY] = find_transport(send)
        await self.app(scope, receive, send)
