"""`GET /ws`: authenticate before accepting, then hand the socket to the notification hub."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from ondoki.domain.notifications import CloseCode, Frame
from ondoki.domain.sessions import session_id
from ondoki.errors import BackendError, Unauthorized
from ondoki_adapters.web import direct
from ondoki_adapters.web.auth import bearer, services

log = logging.getLogger("ondoki.web")

SUBPROTOCOL = "ondoki.v1"
_BEARER_PREFIX = "bearer."


class _Socket:
    """A Starlette WebSocket as the hub's `ClientConnection`."""

    def __init__(self, websocket: WebSocket, max_bytes: int) -> None:
        self.websocket = websocket
        self.max_bytes = max_bytes

    async def send(self, frame: Frame) -> None:
        await self.websocket.send_text(frame.text)

    def writer(self) -> Callable[[Frame], int | None] | None:
        found = self.websocket.scope.get(direct.SCOPE_KEY)
        return None if found is None else direct.writer(found)

    def abort(self) -> None:
        found = self.websocket.scope.get(direct.SCOPE_KEY)
        if found is not None:
            found.transport.abort()

    async def receive(self) -> str | None:
        message = await self.websocket.receive()
        if message["type"] == "websocket.disconnect":
            return None
        text = message.get("text")
        if text is None:
            text = (message.get("bytes") or b"").decode("utf-8", "replace")
        if len(text) > self.max_bytes:
            # Hypercorn already refuses frames past its own limit; this is the app's cap.
            await self.close(CloseCode.TOO_BIG, f"messages are limited to {self.max_bytes} bytes")
            return None
        return str(text)

    async def close(self, code: int, reason: str = "") -> None:
        if self.websocket.application_state == WebSocketState.DISCONNECTED:
            return
        # The client may have gone first; then there is nothing left to close.
        with contextlib.suppress(RuntimeError, WebSocketDisconnect, OSError):
            await self.websocket.close(code, reason)


def _credentials(websocket: WebSocket) -> tuple[str | None, str | None]:
    """(token, subprotocol to accept with), from the header or the subprotocol pair."""
    if "authorization" in websocket.headers:
        try:
            return bearer(websocket), None
        except Unauthorized:  # malformed: refused like no credentials at all
            return None, None
    offered = websocket.scope.get("subprotocols") or []
    tokens = [p[len(_BEARER_PREFIX) :] for p in offered if p.startswith(_BEARER_PREFIX)]
    if SUBPROTOCOL in offered and len(tokens) == 1 and tokens[0]:
        return tokens[0], SUBPROTOCOL
    return None, None


async def websocket_endpoint(websocket: WebSocket) -> None:
    # Nothing may escape: Starlette's error handlers answer with HTTP responses, which an
    # upgraded connection cannot take.
    try:
        await _websocket(websocket)
    except Exception:
        log.exception("WebSocket failed")
        await _Socket(websocket, 0).close(CloseCode.INTERNAL, "internal error; reconnect")


async def _websocket(websocket: WebSocket) -> None:
    found = services(websocket)
    token, subprotocol = _credentials(websocket)
    if token is None:
        await websocket.close(CloseCode.POLICY, "missing credentials")
        return
    try:
        session, _ = await found.sessions.get(token)
    except Unauthorized:
        await websocket.close(CloseCode.POLICY, "unknown or expired session")
        return
    except BackendError as exc:
        log.warning("refusing a WebSocket: %s", exc)
        await websocket.close(CloseCode.INTERNAL, "backend unavailable")
        return
    if found.notifications.closing:
        await websocket.close(CloseCode.RESTART, "server shutting down")
        return
    await websocket.accept(subprotocol=subprotocol)

    async def session_valid() -> bool:
        try:
            await found.sessions.get(token)
        except Unauthorized:
            return False
        except BackendError:
            return True  # an outage is not a logout; the pub/sub side reports it
        return True

    socket = _Socket(websocket, found.settings.ws_max_message_bytes)
    await found.notifications.serve(
        socket, session.user_id, session_id(token), session_valid=session_valid
    )
