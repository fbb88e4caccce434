"""The bench's own WebSocket client: as little of RFC 6455 as the benchmarks need.

The fan-out benchmark holds 1,000 WebSockets in ONE client process that reads the frames of
a server pushing tens of thousands of frames per second. That client must cost far less per
frame than the servers, else it, not a server, is the limit of the figures: the `websockets`
client spent 10 us and more of Python per frame and filled a core near 100k frames/s. This
one parses frames in the read callback (no task, queue or message object per frame); most of
what it costs now is the kernel's cost of each read. It offers no extension (no compression)
and speaks plain ws:// only.

Kept rather than a maintained fast client such as picows (2.3, whose frame parsing is
compiled): the bench counts every frame in Python whichever client parses it (picows calls a
Python `on_ws_frame` per frame too), so the part of the cost a compiled parser removes is the
small one here, while it would add a compiled dependency to the bench and a second code path
to keep in step with the servers' framing. The fan-out figures report the client process's
busiest round against 90% of a core: if that is ever missed, this choice is the one to revisit.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import struct
from collections.abc import Callable
from typing import cast
from urllib.parse import urlsplit

OPEN_TIMEOUT = 60.0  # seconds, for the TCP connection and the handshake
#: RFC 6455 4.2.2: what the server hashes with the client's key to prove it speaks WebSocket.
_ACCEPT_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_MAX_HEAD = 16 * 1024  # bytes of a handshake answer before giving up on its end
_CONTINUATION, _TEXT, _BINARY, _CLOSE, _PING, _PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_FINAL_TEXT = 0x80 | _TEXT  # a whole message in one frame: nearly every frame the bench gets
_CLOSE_NO_STATUS, _CLOSE_ABNORMAL, _CLOSE_PROTOCOL_ERROR = 1005, 1006, 1002
_U16, _U64 = struct.Struct("!H").unpack_from, struct.Struct("!Q").unpack_from

#: Called with each whole message: its payload and whether it is text (else binary).
OnMessage = Callable[[bytes, bool], None]
#: Called once when a started connection ends, with its close code.
OnClose = Callable[[int], None]


class HandshakeError(Exception):
    """The server did not accept the WebSocket."""


def _accept(key: str) -> str:
    """The `Sec-WebSocket-Accept` a server must answer to `key`."""
    return base64.b64encode(hashlib.sha1(key.encode() + _ACCEPT_GUID).digest()).decode()


def _handshake(url: str, token: str | None, key: str) -> bytes:
    """The opening request: no extension offered, so no frame is ever compressed."""
    parts = urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    lines = [
        f"GET {target} HTTP/1.1",
        f"Host: {parts.netloc}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    if token:
        lines.append(f"Authorization: Bearer {token}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _check_answer(head: bytes, key: str) -> None:
    """Raise HandshakeError unless `head` (the answer up to its blank line) accepts `key`."""
    status, *lines = head.decode("latin-1").split("\r\n")
    if status.split(" ", 2)[1:2] != ["101"]:
        raise HandshakeError(f"the server answered {status!r}")
    headers: dict[str, str] = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("upgrade", "").lower() != "websocket":
        raise HandshakeError(f"101 without `Upgrade: websocket`: {headers.get('upgrade')!r}")
    if headers.get("sec-websocket-accept") != _accept(key):
        raise HandshakeError(f"bad Sec-WebSocket-Accept {headers.get('sec-websocket-accept')!r}")
    if "sec-websocket-extensions" in headers:  # none was offered: RFC 6455 4.1 says fail
        raise HandshakeError(f"an extension not offered: {headers['sec-websocket-extensions']}")


def _client_frame(opcode: int, payload: bytes) -> bytes:
    """A final control frame, masked with a fresh random key as every client frame must be
    (RFC 6455 5.3); control payloads are at most 125 bytes, so the length fits in 7 bits."""
    assert len(payload) <= 125
    key = os.urandom(4)
    masked = bytes(byte ^ key[n & 3] for n, byte in enumerate(payload))
    return bytes((0x80 | opcode, 0x80 | len(payload))) + key + masked


class WebSocket(asyncio.Protocol):
    """One client WebSocket, as little as the bench needs of RFC 6455, parsed in the read
    callback: no task, queue or message object per frame, since the bench's one client process
    receives the frames of several servers at once and must not be what limits them.

    `open()` connects and completes the handshake; frames that come with or after the answer
    wait in the buffer until `start()` says where messages go (the caller learns its slot in
    the group only once the handshake succeeded). `close_code` is None while open.
    """

    def __init__(self, url: str, token: str | None) -> None:
        self._key = base64.b64encode(os.urandom(16)).decode()
        self._request = _handshake(url, token, self._key)
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.close_code: int | None = None
        self.transport: asyncio.Transport | None = None
        # Bytes not parsed yet: the handshake answer, or the start of a frame split across
        # reads. Usually empty: a read of whole frames is parsed where it lies, never copied.
        self._buffer = bytearray()
        self._fragments: list[bytes] | None = None  # a fragmented message so far
        self._fragmented_text = False
        self._on_message: OnMessage | None = None
        self._on_close: OnClose | None = None
        self._lost = False

    @classmethod
    async def open(cls, url: str, token: str | None) -> WebSocket:
        parts = urlsplit(url)
        if parts.scheme != "ws" or not parts.hostname:
            raise ValueError(f"not a ws:// URL: {url!r}")  # no TLS in the bench
        loop = asyncio.get_running_loop()
        ws: WebSocket | None = None
        try:
            async with asyncio.timeout(OPEN_TIMEOUT):
                _, ws = await loop.create_connection(
                    lambda: cls(url, token), parts.hostname, parts.port or 80
                )
                await ws.opened
        except BaseException:
            if ws is not None:
                ws.abort()
            raise
        return ws

    def start(self, on_message: OnMessage, on_close: OnClose) -> None:
        """From now on, hand every message to `on_message`, and the end to `on_close`."""
        self._on_message, self._on_close = on_message, on_close
        if self._buffer:
            self.data_received(b"")
        if self._lost:  # it ended before it started
            self._ended()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        if self._on_message is None:  # the handshake's answer, or frames waiting for start()
            buffer += data
            if not self.opened.done():
                self._read_answer()
        elif not buffer:  # the usual case: whole frames, parsed in the read's own bytes
            used = self._parse(data)
            if used < len(data):
                buffer += data[used:]
        else:  # the rest of a frame split across reads
            buffer += data
            with memoryview(buffer) as view:
                used = self._parse(view)
            del buffer[:used]  # once per read, not per frame

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(
                ConnectionError(f"connection lost during the handshake: {exc or 'closed'}")
            )
        self._lost = True
        if self._on_message is not None:
            self._ended()

    # inside

    def _read_answer(self) -> None:
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > _MAX_HEAD:
                self._refuse(HandshakeError("no end to the answer's head"))
            return
        head = bytes(self._buffer[:end])
        del self._buffer[: end + 4]  # what follows is frame data
        try:
            _check_answer(head, self._key)
        except HandshakeError as exc:
            self._refuse(exc)
            return
        self.opened.set_result(None)

    def _refuse(self, error: HandshakeError) -> None:
        self.opened.set_exception(error)
        self.abort()

    def _parse(self, data: bytes | memoryview) -> int:
        """Handle every whole frame in `data`; the offset of the first one not whole."""
        on_message = self._on_message
        assert on_message is not None
        pos, end = 0, len(data)
        while end - pos >= 2 and self.close_code is None:
            first, length = data[pos], data[pos + 1]
            if length & 0x80:  # RFC 6455 5.1: a client must fail on a masked frame
                self._fail()
                break
            start = pos + 2
            if length == 126:
                if end - start < 2:
                    break
                (length,) = _U16(data, start)
                start += 2
            elif length == 127:
                if end - start < 8:
                    break
                (length,) = _U64(data, start)
                start += 8
            if end - start < length:
                break
            pos = start + length
            payload = bytes(data[start:pos])  # one copy: bytes() of a bytes slice adds none
            if first == _FINAL_TEXT:
                on_message(payload, True)
            else:
                self._frame(first, payload)
        return pos

    def _frame(self, first: int, payload: bytes) -> None:
        """Any frame but a final, unfragmented text frame."""
        assert self._on_message is not None
        final, opcode = first & 0x80, first & 0x0F
        if first & 0x70:  # RSV bits mean an extension, and none was negotiated
            self._fail()
        elif opcode & 0x8:  # control frames may come between the fragments of a message
            if not final or len(payload) > 125:
                self._fail()
            elif opcode == _CLOSE:
                self.close_code = _U16(payload)[0] if len(payload) >= 2 else _CLOSE_NO_STATUS
                self._send(_CLOSE, payload[:2])  # echo the code, as RFC 6455 5.5.1 suggests
                assert self.transport is not None
                self.transport.close()
            elif opcode == _PING:
                self._send(_PONG, payload)
            elif opcode != _PONG:
                self._fail()
        elif opcode == _CONTINUATION:
            if self._fragments is None:
                self._fail()
                return
            self._fragments.append(payload)
            if final:
                message, self._fragments = b"".join(self._fragments), None
                self._on_message(message, self._fragmented_text)
        elif opcode in (_TEXT, _BINARY) and self._fragments is None:
            if final:
                self._on_message(payload, opcode == _TEXT)
            else:
                self._fragments, self._fragmented_text = [payload], opcode == _TEXT
        else:  # a reserved opcode, or a new message before the last one ended
            self._fail()

    def _send(self, opcode: int, payload: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(_client_frame(opcode, payload))

    def _fail(self) -> None:
        """A protocol error: drop the connection (recorded as 1002, not as a lost one)."""
        self.close_code = _CLOSE_PROTOCOL_ERROR
        self.abort()

    def _ended(self) -> None:
        if self.close_code is None:  # no close frame came: RFC 6455 7.1.5
            self.close_code = _CLOSE_ABNORMAL
        assert self._on_close is not None
        self._on_close(self.close_code)
