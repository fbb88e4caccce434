"""A notification's frame: the hub passes the stored event's data through as the JSON it was
stored as; what a client receives is byte for byte what decoding it and encoding it again
gave (the way frames were made before), for any JSON value."""

from __future__ import annotations

import json
from typing import Any

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from ondoki.domain.notifications.protocol import (
    EndSession,
    Event,
    NotificationMessage,
    ShownEvent,
    StoredEvent,
    decode_envelope,
    encode,
    text_frame,
)

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
