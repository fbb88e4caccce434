"""WebSocket frames written straight to the connection's socket, under the ASGI server.

Fan-out sends each notification to many sockets. Through ASGI, every frame is a
`websocket.send` per socket, which hypercorn turns into a wsproto event, a frame and a write,
awaiting each layer: measured, that was most of the CPU fan-out cost. Server frames are not
masked (RFC 6455, section 5.1), so a text frame is the same bytes for every client: it is
encoded once per process (kept on the hub's `Frame`) and handed to each `transport.write`.

ASGI does not expose the socket. `DirectFrames` finds it by following hypercorn's own
objects (checked with `isinstance` against hypercorn's classes) from the `send` callable
hypercorn gives the app, for HTTP/1.1 without TLS in either of hypercorn's workers, and
leaves it in the scope:

- asyncio (or uvloop): the connection's asyncio transport, which takes every write whole
  and writes it in the background;
- trio: the connection's trio socket, as a `TrioTransport`. trio has no buffer of its own:
  `write` hands the kernel what it takes at once (a non-blocking write, no task switch) and
  keeps the rest *waiting*, which the hub's flush task writes as the client reads
  (`FrameWriter.flush`). hypercorn writes its own frames under its connection's send lock,
  which `TrioTransport` replaces and *is*: acquiring it first writes whatever of ours waits,
  and while it is held our frames wait. So no bytes ever come between the parts of a frame.
  (hypercorn ends a connection, EOF and close, without the lock: a frame of ours still
  waiting is then cut off with the connection, which is going anyway.)

Anything else (TLS, HTTP/2, another server) finds nothing, and the socket falls back to ASGI
sends: slower, same bytes on the wire. Frames stop as soon as hypercorn's wsproto connection
leaves OPEN (a Close sent or received), so no data frame ever follows a Close; hypercorn's own
frames (pongs, closes) go to the same transport whole, after the frames written before them.

This follows hypercorn's internal layout, which is not an API: `check_hypercorn` refuses to
start on a hypercorn minor version it was not written against (`ONDOKI_WS_DIRECT_FRAMES=false`
turns the path off, and the check with it). The e2e tests pin that the shipped hypercorn is
found on both loops and that pings, pongs and closes interleave correctly under load;
tests/web/test_direct.py covers the rest, trio's partial writes included.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any, Protocol, runtime_checkable

import trio
from hypercorn.asyncio.tcp_server import TCPServer
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.protocol.ws_stream import WSStream
from hypercorn.trio.tcp_server import TCPServer as TrioTCPServer
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
    """What is used of an asyncio (or uvloop) transport (a `TrioTransport` offers it too)."""

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


class TrioTransport:
    """A trio socket as the part of an asyncio transport that `DirectWriter` uses, and the
    lock hypercorn's trio worker takes around each of its own writes to it.

    `write` never waits: when nothing of ours waits and hypercorn is not writing, it
    writes straight to the (non-blocking) socket; what the kernel does not take then, or
    everything while hypercorn writes, waits in `pending`, for `flush` (the hub's flush
    task) or hypercorn's next write (`__aenter__`), whichever comes first. Bytes are only
    ever written by `write` (with nothing waiting and the lock free: no task is writing,
    none can start before it returns) or under `lock`, oldest first: no bytes can come
    between the parts of a frame.

    Every write is exact (a write that raises wrote nothing), so cancelling a flush loses
    nothing: what is left waits for the next. A write that fails (the client has gone)
    drops what waits; hypercorn's reader finds the connection closed.
    """

    __slots__ = ("lock", "pending", "socket")

    def __init__(self, socket: trio.socket.SocketType, lock: trio.Lock) -> None:
        self.socket = socket
        self.lock = lock  # hypercorn's own, now taken through this object
        self.pending = bytearray()

    # -- an asyncio transport's part ------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.pending or self.lock.locked():
            self.pending += data
            return
        sent = self._send(data)  # (None: the client has gone; nothing waits to drop)
        if sent is not None and sent < len(data):
            self.pending += memoryview(data)[sent:]

    def get_write_buffer_size(self) -> int:
        return len(self.pending)

    def is_closing(self) -> bool:
        socket = self.socket
        return socket.fileno() == -1 or socket.did_shutdown_SHUT_WR

    def abort(self) -> None:
        """Close the socket now, dropping what waits (hypercorn's reader then ends the
        connection)."""
        self.pending.clear()
        self.socket.close()

    # -- hypercorn's send lock ------------------------------------------------------------

    async def __aenter__(self) -> None:
        """hypercorn's `async with send_lock`: once acquired, first write out what waits
        (a frame partly written must be finished before anything else is written)."""
        await self.lock.acquire()
        try:
            await self._write_pending(len(self.pending))
        except BaseException:
            self.lock.release()
            raise

    async def __aexit__(self, *exc_info: object) -> None:
        self.lock.release()

    async def flush(self) -> None:
        """Write what waits, as the client takes it (each pass under the lock, so hypercorn
        takes turns with it); return when nothing waits."""
        while self.pending:
            async with self:
                pass

    # -- writing --------------------------------------------------------------------------

    def _send(self, data: bytes | memoryview) -> int | None:
        """One non-blocking write: the bytes the kernel took; None once the connection is
        closed or broken (the caller drops what waits: `data` may be a view of it, and a
        bytearray cannot be resized while a view is open)."""
        try:
            # os.write on the fd, read each time: once closed it is -1, never another
            # connection's fd. (A write to a broken connection raises BrokenPipeError,
            # not SIGPIPE: Python ignores that signal.)
            return os.write(self.socket.fileno(), data)
        except BlockingIOError:
            return 0
        except OSError:
            return None

    async def _write_pending(self, size: int) -> None:
        """Write the first `size` bytes that wait (under the lock), waiting for the socket
        to take them."""
        pending = self.pending
        while size > 0:
            with memoryview(pending) as view, view[:size] as head:
                sent = self._send(head)
            if sent is None:
                pending.clear()  # gone: hypercorn's reader ends the connection
                return
            del pending[:sent]
            size -= sent
            if size > 0:
                try:
                    await trio.lowlevel.wait_writable(self.socket)
                except (trio.ClosedResourceError, OSError):
                    pending.clear()  # closed under us (an abort, or hypercorn's close)
                    return
                size = min(size, len(pending))  # (a failed write may have dropped it)


@dataclass(frozen=True)
class Underneath:
    """What hypercorn has under one WebSocket: its stream object and the transport."""

    stream: Any  # hypercorn's WSStream; its wsproto `connection` exists once accepted
    transport: Transport


def find_transport(send: Any) -> Underneath | None:
    """The transport under a WebSocket that hypercorn serves over HTTP/1.1 without TLS, on
    asyncio or trio, from the ASGI `send` it gave the app; None for any other server,
    protocol or layout."""
    # hypercorn: WSStream.app_send -> H11Protocol.stream_send -> TCPServer.protocol_send;
    # asyncio's TCPServer has a StreamWriter with the transport, trio's a SocketStream.
    stream = getattr(send, "__self__", None)
    if not isinstance(stream, WSStream):
        return None
    protocol = getattr(stream.send, "__self__", None)
    if not isinstance(protocol, H11Protocol):
        return None
    server = getattr(protocol.send, "__self__", None)
    if isinstance(server, TCPServer):
        streams: object = server.writer
        transport = streams.transport if isinstance(streams, asyncio.StreamWriter) else None
        return Underneath(stream, transport) if isinstance(transport, Transport) else None
    if isinstance(server, TrioTCPServer):
        found = trio_transport(server)
        return None if found is None else Underneath(stream, found)
    return None


def trio_transport(server: TrioTCPServer) -> TrioTransport | None:
    """A `TrioTransport` over the server's socket, installed as its send lock (where
    hypercorn's `protocol_send` takes it); None over TLS, or if hypercorn is writing."""
    lock: object = server.send_lock  # (typed by hypercorn as what it should be)
    if isinstance(lock, TrioTransport):
        return lock
    stream: object = server.stream
    if not isinstance(stream, trio.SocketStream) or type(lock) is not trio.Lock or lock.locked():
        return None
    transport = TrioTransport(stream.socket, lock)
    # Only while nobody holds the lock: from now on every writer takes it through this.
    server.send_lock = transport  # type: ignore[assignment]
    return transport


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

    def waiting(self) -> bool:
        return False  # an asyncio transport writes its buffer in the background

    async def flush(self) -> None:
        """Nothing waits (see `waiting`)."""


class TrioWriter(DirectWriter):
    """A `DirectWriter` over a `TrioTransport`, whose unsent bytes wait for `flush`."""

    __slots__ = ()

    transport: TrioTransport

    def waiting(self) -> bool:
        return bool(self.transport.pending)

    async def flush(self) -> None:
        await self.transport.flush()


def writer(found: Underneath) -> DirectWriter | None:
    """The hub's direct writer for one accepted connection; None when hypercorn holds no
    wsproto connection for it."""
    connection = getattr(found.stream, "connection", None)
    if not isinstance(connection, Connection):
        return None
    if isinstance(found.transport, TrioTransport):
        return TrioWriter(connection, found.transport)
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
