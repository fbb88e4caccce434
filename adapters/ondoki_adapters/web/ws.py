"""`GET /ws`: accept, authenticate, then hand the socket to the notification hub.

The upgrade is always accepted (with the `ondoki.v1` subprotocol when offered) before any
check, so that a browser, which sees nothing of a refused upgrade, gets a close code and a
reason: 4003 for missing or malformed credentials, 4001 for an unknown or expired session,
1011 during a backend outage, 1012 during shutdown (see docs/websocket-limits.md).
"""

from __future__ import annotations

import contextlib
import logging

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from ondoki.domain.notifications import ClientClosed, CloseCode, Frame
from ondoki.domain.sessions import session_id
from ondoki.errors import BackendError, Unauthorized
from ondoki_adapters.web import direct
from ondoki_adapters.web.auth import bearer, services

log = logging.getLogger("ondoki.web")

SUBPROTOCOL = "ondoki.v1"
_BEARER_PREFIX = "bearer."
_OUTAGE = "backend unavailable; reconnect and resume"


class _Socket:
    """A Starlette WebSocket as the hub's `ClientConnection`."""

    __slots__ = ("max_bytes", "websocket")

    def __init__(self, websocket: WebSocket, max_bytes: int) -> None:
        self.websocket = websocket
        self.max_bytes = max_bytes

    async def send(self, frame: Frame) -> None:
        await self.websocket.send_text(frame.text)

    def writer(self) -> direct.DirectWriter | None:
        found = self.websocket.scope.get(direct.SCOPE_KEY)
        return None if found is None else direct.writer(found)

    def abort(self) -> None:
        found = self.websocket.scope.get(direct.SCOPE_KEY)
        if found is not None:
            found.transport.abort()

    async def receive(self) -> str | bytes | None:
        message = await self.websocket.receive()
        if message["type"] == "websocket.disconnect":
            return None
        data: str | bytes | None = message.get("text")
        if data is None:
            data = message.get("bytes") or b""
        # The limit counts bytes, as documented: the server's own frame limit counts
        # characters of text (up to four bytes each). A character is at most four bytes,
        # so short text needs no encoding to be measured.
        if len(data) * 4 > self.max_bytes and _size(data) > self.max_bytes:
            raise ClientClosed(CloseCode.TOO_BIG, f"messages are limited to {self.max_bytes} bytes")
        return data

    async def close(self, code: int, reason: str = "") -> None:
        if self.websocket.application_state == WebSocketState.DISCONNECTED:
            return
        # The client may have gone first; then there is nothing left to close.
        with contextlib.suppress(RuntimeError, WebSocketDisconnect, OSError):
            await self.websocket.close(code, reason)


def _size(data: str | bytes) -> int:
    if isinstance(data, bytes):
        return len(data)
    if data.isascii():
        return len(data)
    return len(data.encode("utf-8", "surrogatepass"))


def _credentials(websocket: WebSocket) -> tuple[str | None, str]:
    """(token, or None with what is wrong with the credentials)."""
    if "authorization" in websocket.headers:
        try:
            return bearer(websocket), ""
        except Unauthorized:
            return None, "malformed Authorization header"
    offered = websocket.scope.get("subprotocols") or []
    tokens = [p[len(_BEARER_PREFIX) :] for p in offered if p.startswith(_BEARER_PREFIX)]
    if not tokens:
        return None, "no credentials"
    if SUBPROTOCOL not in offered or len(tokens) != 1 or not tokens[0]:
        return None, f"offer {SUBPROTOCOL!r} and exactly one bearer.<token> subprotocol"
    return tokens[0], ""


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
    offered = websocket.scope.get("subprotocols") or []
    await websocket.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)
    socket = _Socket(websocket, found.settings.ws_max_message_bytes)
    token, problem = _credentials(websocket)
    if token is None:
        await socket.close(CloseCode.INVALID_TOKEN, f"invalid token: {problem}")
        return
    try:
        session, _ = await found.sessions.get(token)
    except Unauthorized:
        # An unknown token cannot be told from an expired one: either way, get a new one.
        await socket.close(CloseCode.SESSION_ENDED, "session expired")
        return
    except BackendError as exc:
        log.warning("closing a new WebSocket: %s", exc)
        await socket.close(CloseCode.INTERNAL, _OUTAGE)
        return

    async def session_valid() -> bool:
        try:
            await found.sessions.get(token)
        except Unauthorized:
            return False
        except BackendError:
            return True  # an outage is not a logout; the pub/sub side reports it
        return True

    await found.notifications.serve(
        socket, session.user_id, session_id(token), session_valid=session_valid
    )
