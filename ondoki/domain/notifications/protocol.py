"""The notification wire protocol, independent of any transport.

What a user's channel stores (`Event`, `EndSession`), the JSON messages exchanged with
clients over a WebSocket, the close codes the server uses, and `Frame`, one encoded text
frame shared by every local client it goes to. The protocol is described for client authors
in `docs/websocket.md`; its close codes and limits in `docs/websocket-limits.md`.
"""

from __future__ import annotations

import re
from enum import IntEnum
from typing import Any

import msgspec

EVENT_TYPE = re.compile(r"[A-Za-z0-9._-]{1,64}")


# -- what is stored in a user's channel ---------------------------------------------------


class Event(msgspec.Struct, tag="event", tag_field="kind"):
    """A notification for the user's clients."""

    type: str
    data: Any = None


class EndSession(msgspec.Struct, tag="end_session", tag_field="kind"):
    """Close the sockets of one session (logout); never shown to clients."""

    session: str


class StoredEvent(msgspec.Struct, tag="event", tag_field="kind"):
    """An `Event` as the hub reads it back: its data left as the JSON it was stored as,
    which goes to clients as it is (never decoded into Python objects and encoded again:
    1.5-2.6 us less per message for small events, about 15 us for 1 KiB ones). Every
    publisher stores what `EventEncoder` encoded (compact, canonical JSON), so clients see
    the same bytes as before; the hub still drops what is not valid JSON and UTF-8."""

    type: str
    data: msgspec.Raw = msgspec.Raw(b"null")


encode = msgspec.json.Encoder().encode
decode_envelope = msgspec.json.Decoder(StoredEvent | EndSession).decode


# -- the wire protocol ---------------------------------------------------------------------


class ShownEvent(msgspec.Struct):
    """What a client sees of an `Event`."""

    type: str
    data: msgspec.Raw


class NotificationMessage(msgspec.Struct, tag="notification"):
    epoch: str
    offset: int
    event: ShownEvent


class ResyncMessage(msgspec.Struct, tag="resync"):
    epoch: str
    offset: int


class PingMessage(msgspec.Struct, tag="ping"):
    pass


class ErrorMessage(msgspec.Struct, tag="error"):
    code: str
    message: str


class Resume(msgspec.Struct, tag="resume", forbid_unknown_fields=True):
    epoch: str
    offset: Any  # checked by hand, to answer a wrong type with a clear error


class Pong(msgspec.Struct, tag="pong"):
    pass


_decode_client = msgspec.json.Decoder(Resume | Pong).decode
PING = encode(PingMessage())


def text_frame(message: msgspec.Struct) -> Frame:
    return Frame(encode(message))


class CloseCode(IntEnum):
    """WebSocket close codes the server uses (each with a reason; see
    `docs/websocket-limits.md`). Only `INTERNAL` means the server failed; every code a
    client's own message causes is below 1011 or in the 4000s."""

    NORMAL = 1000
    INVALID_DATA = 1007  # a message that is not UTF-8
    POLICY = 1008  # a message the protocol forbids (kept for clients of older servers)
    TOO_BIG = 1009  # a message over the size limit, counted in bytes
    INTERNAL = 1011  # a backend outage: reconnect with backoff and resume
    RESTART = 1012  # the server is shutting down: reconnect elsewhere and resume
    PONG_TIMEOUT = 4000
    SESSION_ENDED = 4001  # logout, or the session expired: get a new token
    INVALID_TOKEN = 4003  # no credentials, or malformed ones: do not retry with them
    SLOW_CLIENT = 4008  # could not keep up: reconnect and resume from the last offset
    TOO_MANY_SOCKETS = 4029  # the user has the most sockets allowed here: close one first


class ClientClosed(Exception):
    """Ends serving a client with this close code and reason."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class Frame:
    """A text frame for clients: its JSON as UTF-8 `data`, and a slot for its bytes on the
    wire.

    A notification goes to every local client of its user. The hub makes its Frame once per
    process; a transport that writes frames itself (`ClientConnection.writer`) keeps their
    encoding in `wire`, so that is done once per process too, not once per client.
    """

    __slots__ = ("_text", "data", "wire")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.wire: bytes | None = None
        self._text: str | None = None

    @property
    def text(self) -> str:
        """The JSON as text (decoded once), for transports that take text."""
        if self._text is None:
            self._text = self.data.decode()
        return self._text


#: The largest offset a `resume` may name: offsets grow by one per message, and clients in
#: JavaScript hold them as doubles, exact up to 2**53.
MAX_OFFSET = 2**53


def bad_message(message: str) -> Frame:
    return text_frame(ErrorMessage("bad_message", message))


def parse_client(data: str | bytes) -> tuple[Resume | Pong | None, Frame | None]:
    """A client message, or the error frame that answers it.

    Whatever `data` holds, this returns one or the other, or raises `ClientClosed` with
    1007 for bytes (or text with lone surrogates) that are not UTF-8. Nothing else escapes:
    a client's message never closes its socket as a server failure.
    """
    try:
        # Checked whole, up front: the decoder does not check UTF-8 everywhere.
        text = data if isinstance(data, str) else data.decode()
        encoded = text.encode()
    except UnicodeError:
        raise ClientClosed(CloseCode.INVALID_DATA, "messages must be UTF-8") from None
    try:
        message = _decode_client(encoded)
    except msgspec.ValidationError as exc:
        return None, bad_message(f"unexpected message: {exc}")
    except msgspec.DecodeError as exc:
        return None, bad_message(f"unreadable message: {exc}")
    except RecursionError:
        return None, bad_message("unreadable message: nested too deeply")
    if isinstance(message, Resume) and (
        not isinstance(message.offset, int)
        or isinstance(message.offset, bool)
        or not 0 <= message.offset <= MAX_OFFSET
    ):
        return None, bad_message(f"resume offset must be an integer from 0 to {MAX_OFFSET}")
    return message, None
