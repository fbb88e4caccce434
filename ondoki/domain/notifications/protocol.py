"""The notification wire protocol, independent of any transport.

What a user's channel stores (`Event`, `EndSession`), the JSON messages exchanged with
clients over a WebSocket, the close codes the server uses, and `Frame`, one encoded text
frame shared by every local client it goes to. The protocol is described for client authors
in `docs/websocket.md`.
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


Envelope = Event | EndSession
encode = msgspec.json.Encoder().encode
decode_envelope = msgspec.json.Decoder(Envelope).decode


# -- the wire protocol ---------------------------------------------------------------------


class NotificationMessage(msgspec.Struct, tag="notification"):
    epoch: str
    offset: int
    event: msgspec.Raw


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
    """WebSocket close codes the server uses."""

    NORMAL = 1000
    POLICY = 1008  # authentication failed (before or after accept)
    TOO_BIG = 1009
    INTERNAL = 1011
    RESTART = 1012  # the server is shutting down: reconnect elsewhere and resume
    PONG_TIMEOUT = 4000
    SESSION_ENDED = 4001
    SLOW_CLIENT = 4008  # could not keep up: reconnect and resume from the last offset


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


def parse_client(text: str) -> tuple[Resume | Pong | None, Frame | None]:
    """A client message, or the error frame that answers it."""
    try:
        message = _decode_client(text)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        return None, text_frame(ErrorMessage("bad_message", f"unreadable message: {exc}"))
    if isinstance(message, Resume) and (
        not isinstance(message.offset, int)
        or isinstance(message.offset, bool)
        or message.offset < 0
    ):
        return None, text_frame(
            ErrorMessage("bad_message", "resume offset must be an integer >= 0")
        )
    return message, None
