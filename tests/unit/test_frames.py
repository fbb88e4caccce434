"""A notification's frame: the hub passes the stored event's data through as the JSON it was
stored as; what a client receives is byte for byte what decoding it and encoding it again
gave (the way frames were made before), for any JSON value."""

from __future__ import annotations

import json
import logging
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ondoki.domain.notifications.hub import HubStats, NotificationHub
from ondoki.domain.notifications.outbox import Outbox
from ondoki.domain.notifications.protocol import (
    EndSession,
    Event,
    Frame,
    NotificationMessage,
    ShownEvent,
    StoredEvent,
    decode_envelope,
    encode,
    text_frame,
)
from ondoki.models import Message, Position
from ondoki_adapters.memory.pubsub import MemoryPubSub

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),  # any code point: escapes, U+2028, astral planes, lone surrogates excluded
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(), children),
    max_leaves=30,
)


def frame_of(payload: bytes, epoch: str, offset: int) -> bytes:
    envelope = decode_envelope(payload)
    assert isinstance(envelope, StoredEvent)
    return text_frame(
        NotificationMessage(epoch, offset, ShownEvent(envelope.type, envelope.data))
    ).data


def decoded_and_encoded_again(payload: bytes, epoch: str, offset: int) -> bytes:
    event = msgspec.json.decode(payload, type=Event)
    shown = msgspec.Raw(encode({"type": event.type, "data": event.data}))
    return encode({"type": "notification", "epoch": epoch, "offset": offset, "event": shown})


@given(data=json_values, offset=st.integers(min_value=1, max_value=2**53))
def test_a_frame_is_what_decoding_and_encoding_again_gave(data: Any, offset: int) -> None:
    payload = encode(Event("job.progress", data))
    made = frame_of(payload, "0123456789abcdef", offset)
    assert made == decoded_and_encoded_again(payload, "0123456789abcdef", offset)
    assert json.loads(made)["event"] == {"type": "job.progress", "data": json.loads(encode(data))}


def test_an_event_stored_without_data_shows_null() -> None:
    made = frame_of(b'{"kind":"event","type":"ping.me"}', "e", 1)
    assert json.loads(made) == {
        "type": "notification",
        "epoch": "e",
        "offset": 1,
        "event": {"type": "ping.me", "data": None},
    }


def test_an_end_of_session_is_still_told_apart() -> None:
    assert decode_envelope(encode(EndSession("s1"))) == EndSession("s1")


class Collected(Outbox):
    def __init__(self) -> None:
        super().__init__(1 << 20, HubStats())
        self.frames: list[Frame] = []

    def put(self, frame: Frame) -> None:
        self.frames.append(frame)

    async def run(self) -> None:
        pass

    def close(self) -> None:
        pass

    def unsent(self) -> int:
        return 0


@pytest.mark.parametrize(
    ("payload", "what"),
    [
        (b'{"kind":"event","type":"t","data":"\xff"}', "data that is not UTF-8"),
        (b'{"kind":"event","type":"t","data":"\xed\xa0\x80"}', "an encoded lone surrogate"),
        (b'{"kind":"event","type":"t","data":' + b"[" * 5000 + b"]" * 5000 + b"}", "deep"),
        (b'{"kind":"event","type":"t","data":[1,}', "malformed JSON"),
        (b'{"kind":"event","type":"t","data":01}', "a number JSON does not allow"),
        (b"\x00\x01", "not JSON at all"),
    ],
)
def test_what_is_not_valid_json_and_utf8_is_dropped_with_a_warning(
    payload: bytes, what: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Tried: stored messages a foreign or broken publisher could leave (ondoki's own
    publishers store only `EventEncoder`'s output). The data goes to clients as stored, so
    what would make a bad text frame is dropped here, with one warning, never raised."""
    hub = NotificationHub(MemoryPubSub())
    outbox = Collected()
    with caplog.at_level(logging.WARNING):
        hub.forward(Message("alice", Position("e", 1), payload), "s", outbox)
    assert outbox.frames == [], what
    assert [r.getMessage() for r in caplog.records] == [
        "dropping an undecodable message on alice at ('e', 1)"
    ]


def test_unicode_data_goes_through() -> None:
    hub = NotificationHub(MemoryPubSub())
    outbox = Collected()
    payload = encode(Event("t", {"text": "café \u2028 \U0001f600"}))
    hub.forward(Message("alice", Position("e", 1), payload), "s", outbox)
    (frame,) = outbox.frames
    assert json.loads(frame.text)["event"]["data"] == {"text": "café \u2028 \U0001f600"}
