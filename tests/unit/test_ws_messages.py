"""Property tests of the WebSocket message parser and of the hub behind it: whatever a client
sends, it gets a message the hub acts on, an error frame, or a close it caused (1007 for
bytes that are not UTF-8), never 1011 (which means the server failed) and never an exception.
"""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ondoki.domain.notifications import ClientClosed, CloseCode, NotificationHub
from ondoki.domain.notifications.protocol import MAX_OFFSET, Pong, Resume, parse_client
from ondoki_adapters.memory.pubsub import MemoryPubSub
from tests.unit.test_notifications import FakeClient

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


def shaped(value: Any) -> str:
    """Something that looks like a client message, with any value in any field."""
    return json.dumps({"type": "resume", "epoch": value, "offset": value}, allow_nan=True)


def nested(depth: int) -> str:
    return '{"type": "resume", "epoch": "e", "offset": ' + "[" * depth + "]" * depth + "}"


client_data = st.one_of(
    st.binary(max_size=64),
    st.text(max_size=64),
    json_values.map(lambda v: json.dumps(v, allow_nan=True)),
    json_values.map(shaped),
    st.integers(1, 5000).map(nested),
    st.sampled_from(['{"type": "pong"}', '{"type": "resume", "epoch": "e", "offset": 3}']),
    st.integers().map(lambda n: f'{{"type": "resume", "epoch": "e", "offset": {n}}}'),
    st.text(max_size=64).map(str.encode),
)


@settings(max_examples=400, deadline=None, database=None)
@given(client_data)
def test_any_message_parses_to_a_message_an_error_frame_or_1007(data: str | bytes) -> None:
    try:
        message, error = parse_client(data)
    except ClientClosed as closed:
        assert closed.code == CloseCode.INVALID_DATA
        raw = data if isinstance(data, bytes) else data.encode("utf-8", "surrogatepass")
        with pytest.raises(UnicodeDecodeError):
            raw.decode()
        return
    assert (message is None) != (error is None)
    if error is not None:
        frame = json.loads(error.data)
        assert frame["type"] == "error" and frame["code"] == "bad_message" and frame["message"]
    elif isinstance(message, Resume):
        assert isinstance(message.offset, int) and 0 <= message.offset <= MAX_OFFSET
    else:
        assert isinstance(message, Pong)


def test_deep_nesting_is_an_error_frame_not_a_crash() -> None:
    message, error = parse_client(nested(100_000))
    assert message is None and error is not None
    assert b"nested too deeply" in error.data or b"unreadable" in error.data


async def _serve_one(data: str | bytes) -> tuple[int, list[dict[str, Any]]]:
    """Serve a client that sends `data` then a pong, while an event is published: its close
    code (1000 when it left) and the frames it got."""
    pubsub = MemoryPubSub()
    hub = NotificationHub(pubsub, resume_wait=0.01, ping_interval=60, close_timeout=0.2)
    client = FakeClient()
    frames: list[dict[str, Any]] = []
    async with anyio.create_task_group() as tasks:
        await tasks.start(pubsub.run)
        await tasks.start(hub.run)
        code: list[int] = []
        served = anyio.Event()

        async def serve() -> None:
            code.append(await hub.serve(client, "alice", "s"))
            served.set()

        tasks.start_soon(serve)
        await anyio.sleep(0.03)  # streaming live
        await client.to_server_send.send(data)
        await client.say({"type": "pong"})
        await hub.publish("alice", "after")
        with anyio.move_on_after(2):
            while not (frames and frames[-1].get("type") == "notification"):
                frames.append(await client.frames.receive())
        if not code:
            await client.to_server_send.send(None)  # the client leaves
        with anyio.fail_after(3):
            await served.wait()
        tasks.cancel_scope.cancel()
    await pubsub.aclose()
    client.dispose()
    return code[0], frames


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@settings(
    max_examples=25,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=client_data)
def test_the_hub_answers_any_message_without_failing(backend: str, data: str | bytes) -> None:
    code, frames = anyio.run(_serve_one, data, backend=backend)
    assert code in (CloseCode.NORMAL, CloseCode.INVALID_DATA), (code, frames)
    if code == CloseCode.NORMAL:
        # The socket stayed: the event published after the message arrived.
        assert frames and frames[-1]["type"] == "notification", frames
        assert all(f["type"] in ("error", "notification", "resync") for f in frames), frames
