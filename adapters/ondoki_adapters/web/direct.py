"""WebSocket frames written straight to the connection's transport, under the ASGI server.

Fan-out sends each notification to many sockets. Through ASGI, every frame is a
`websocket.send` per socket, which hypercorn turns into a wsproto event, a frame and a write,
awaiting each layer: measured, that was most of the CPU fan-out cost. Server frames are not
masked (RFC 6455, section 5.1), so a text frame is the same bytes for every client: it is
encoded once per process (kept on the hub's `Frame`) and handed to each `transport.write`.

ASGI does not expose the transport. `DirectFrames` finds it by following hypercorn's own
objects (checked with `isinstance` against hypercorn's classes) from the `send` callable
hypercorn gives the app (HTTP/1.1 on asyncio or uvloop, as `ondoki serve` runs it) and leaves
it in the scope. Anything else (trio, HTTP/2, another server) finds nothing, and the socket
falls back to ASGI sends: slower, same bytes on the wire. Frames stop as soon as hypercorn's
wsproto connection leaves OPEN (a Close sent or received), so no data frame ever follows a
Close; hypercorn's own frames (pongs, closes) go to the same transport whole, so frames never
interleave mid-frame.

This follows hypercorn's internal layout, which is not an API: `check_hypercorn` refuses to
start on a hypercorn minor version it was not written against (`ONDOKI_WS_DIRECT_FRAMES=false`
turns the path off, and the check with it). The e2e tests pin that the shipped hypercorn is
found and that pings, pongs and closes interleave correctly under load; tests/web/
test_direct.py covers the rest.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any, Protocol, runtime_checkable

from hypercorn.asyncio.tcp_server import TCPServer
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.protocol.ws_stream import WSStream
from starlette.types import ASGIApp, Receive, Scope, Send
from wsproto.connection import Connection, ConnectionState

from ondoki.domain.notifications import Frame
from ondoki.errors import ConfigError

SCOPE_KEY = "ondoki.transport"

#: The hypercorn minor version whose layout `find_transport` follows.
HYPERCORN_SERIES = "0.18"


def check_hypercorn(installed: str | None = None) -> None:
    """Raise ConfigError (one line, exit 2 from `ondoki serve`) unless the installed
    hypercorn is of `HYPERCORN_SERIES`."""
    installed = installed or version("hypercorn")
    if installed.split(".")[:2] != HYPERCORN_SERIES.split("."):
        raise ConfigError(
            "ONDOKI_WS_DIRECT_FRAMES",
            f"direct frames follow hypercorn {HYPERCORN_SERIES}.x's internals, but hypercorn "
            f"{installed} is installed: install hypercorn~={HYPERCORN_SERIES}.0, or set it "
            "to false",
        )


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
    """The transport under a WebSocket that hypercorn serves over HTTP/1.1 on asyncio, from
    the ASGI `send` it gave the app; None for any other server, protocol or layout."""
    # hypercorn: WSStream.app_send -> H11Protocol.stream_send -> TCPServer.protocol_send,
    # whose asyncio StreamWriter holds the transport.
    stream = getattr(send, "__self__", None)
    if not isinstance(stream, WSStream):
        return None
    protocol = getattr(stream.send, "__self__", None)
    if not isinstance(protocol, H11Protocol):
        return None
    server = getattr(protocol.send, "__self__", None)
    if not isinstance(server, TCPServer) or not isinstance(server.writer, asyncio.StreamWriter):
        return None
    transport = server.writer.transport
    return Underneath(stream, transport) if isinstance(transport, Transport) else None


class DirectWriter:
    """Writes the hub's frames straight to one accepted connection's transport (see
    `ClientConnection.writer`)."""

    __slots__ = ("connection", "transport")

    def __init__(self, connection: Connection, transport: Transport) -> None:
        self.connection = connection
        self.transport = transport

    def write(self, frame: Frame) -> int | None:
        transport = self.transport
        if self.connection.state is not ConnectionState.OPEN or transport.is_closing():
            # Closing or gone: no data frame may follow a Close (RFC 6455, section 5.5.1);
            # the hub hears of the end from the socket's receive side.
            return None
        wire = frame.wire
        if wire is None:
            wire = frame.wire = text_frame(frame.data)
        transport.write(wire)
        return transport.get_write_buffer_size()

    def unsent(self) -> int:
        return self.transport.get_write_buffer_size()


def writer(found: Underneath) -> DirectWriter | None:
    """The hub's direct writer for one accepted connection; None when hypercorn holds no
    wsproto connection for it."""
    connection = getattr(found.stream, "connection", None)
    if not isinstance(connection, Connection):
        return None
    return DirectWriter(connection, found.transport)


class DirectFrames:
    """Leaves each WebSocket's transport in its scope (`SCOPE_KEY`), when it can be found.

    It must see the server's own `send`: it wraps the whole ASGI app (`ondoki serve` installs
    it around the Starlette app, never inside its middleware stack).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            scope[SCOPE_KEY] = find_transport(send)
        await self.app(scope, receive, send)
