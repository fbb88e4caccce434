"""What the middleware does with what a route did not expect: a client that left first, an
error after the answer started, and WebSockets passing through untouched (pure ASGI, with
stand-in apps; the 500 a browser can read is in test_cors.py)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Coroutine
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from starlette.requests import ClientDisconnect
from starlette.types import Message, Receive, Scope, Send

from ondoki_adapters.web.app import AnswerUnexpected
from ondoki_adapters.web.observe import HttpMetrics, RequestContext

pytestmark = pytest.mark.anyio

HTTP: Scope = {"type": "http", "method": "POST", "path": "/imports", "headers": []}


async def receive() -> Message:
    return {"type": "http.disconnect"}


class Sent:
    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def __call__(self, message: Message) -> None:
        self.messages.append(message)


async def left_first(scope: Scope, receive: Receive, send: Send) -> None:
    raise ClientDisconnect()


async def fails_midway(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    raise RuntimeError("failed while streaming")


async def test_a_client_that_left_first_gets_nothing_and_no_error_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sent = Sent()
    registry = CollectorRegistry()
    app = RequestContext(AnswerUnexpected(left_first), HttpMetrics(registry))
    with caplog.at_level(logging.INFO):
        await app(dict(HTTP), receive, sent)
    assert sent.messages == []
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("client left before the answer" in r.getMessage() for r in caplog.records)
    access = [r for r in caplog.records if r.name == "ondoki.access"]
    assert [r.getMessage() for r in access] == ["POST /imports 499"]
    labels = {"method": "POST", "route": "unmatched", "status": "499"}
    assert registry.get_sample_value("ondoki_http_requests_total", labels) == 1.0


async def test_an_error_after_the_answer_started_goes_on_to_the_server() -> None:
    sent = Sent()
    registry = CollectorRegistry()
    app = RequestContext(AnswerUnexpected(fails_midway), HttpMetrics(registry))
    with pytest.raises(RuntimeError, match="failed while streaming"):
        await app(dict(HTTP), receive, sent)
    assert [m["type"] for m in sent.messages] == ["http.response.start"]  # no second start
    labels = {"method": "POST", "route": "unmatched", "status": "200"}
    assert registry.get_sample_value("ondoki_http_requests_total", labels) == 1.0


async def test_an_error_before_any_answer_is_a_500_in_the_error_shape() -> None:
    async def fails(scope: Scope, receive: Receive, send: Send) -> None:
        raise KeyError("a bug")

    sent = Sent()
    await AnswerUnexpected(fails)(dict(HTTP), receive, sent)
    assert sent.messages[0]["status"] == 500
    assert b'"code":"internal"' in sent.messages[1]["body"].replace(b" ", b"")


def test_a_websocket_passes_through_without_a_frame_of_its_own() -> None:
    """A WebSocket's task awaits through every middleware for its whole life: this one hands
    back the inner app's own coroutine."""
    inner: list[Coroutine[Any, Any, None]] = []

    async def served() -> None:
        pass

    def app(scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        inner.append(served())
        return inner[-1]

    scope: dict[str, Any] = {"type": "websocket", "path": "/ws", "headers": []}
    handed = AnswerUnexpected(app)(scope, receive, Sent())
    assert handed is inner[0]
    inner[0].close()  # never run: what matters is who hands it over
