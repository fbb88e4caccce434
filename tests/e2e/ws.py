"""A real WebSocket client (the `websockets` library) speaking ondoki's protocol."""

from __future__ import annotations

import contextlib
import json
import time
from typing import Any

import httpx2 as httpx
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect
from websockets.typing import Subprotocol

from tests.e2e.process import remember_secret


class WsClient:
    """One desktop client: connects with a session token, reads frames, resumes."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        via: str = "header",
        resume: tuple[str, int] | None = None,
        max_queue: int | None = 16,
        compression: str | None = None,
    ) -> None:
        url = base_url.replace("http://", "ws://") + "/ws"
        options: dict[str, Any] = {
            "proxy": None,
            "open_timeout": 10,
            "ping_interval": None,
            "compression": compression,
            "max_queue": max_queue,
        }
        if via == "header":
            options["additional_headers"] = {"Authorization": f"Bearer {token}"}
        elif via == "subprotocol":
            options["subprotocols"] = [Subprotocol("ondoki.v1"), Subprotocol(f"bearer.{token}")]
        self._stack = contextlib.ExitStack()
        self.connection: ClientConnection = self._stack.enter_context(connect(url, **options))
        if resume is not None:
            self.send({"type": "resume", "epoch": resume[0], "offset": resume[1]})
        self.last: tuple[str, int] | None = None
        self.pings = 0  # application pings answered

    def send(self, message: dict[str, Any]) -> None:
        self.connection.send(json.dumps(message))

    def recv(self, timeout: float = 10.0) -> dict[str, Any]:
        """The next frame that is not a ping (pings are answered)."""
        while True:
            frame: dict[str, Any] = json.loads(self.connection.recv(timeout=timeout))
            if frame["type"] == "ping":
                self.send({"type": "pong"})
                self.pings += 1
                continue
            if frame["type"] == "notification":
                self.last = (frame["epoch"], frame["offset"])
            return frame

    def notifications(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        frames = [self.recv(timeout) for _ in range(count)]
        kinds = {f["type"] for f in frames}
        assert kinds <= {"notification"}, frames
        return frames

    def close_code(self, timeout: float = 10.0) -> int | None:
        """Read until the server closes; its close code."""
        return self.closed(timeout)[0]

    def closed(self, timeout: float = 10.0) -> tuple[int | None, str]:
        """Read until the server closes; its close code and reason."""
        try:
            while True:
                self.connection.recv(timeout=timeout)
        except ConnectionClosed as closed:
            return (closed.rcvd.code, closed.rcvd.reason) if closed.rcvd else (None, "")

    def close(self) -> None:
        self._stack.close()


def login(base_url: str, api_key: str, user_id: str) -> str:
    response = httpx.post(
        f"{base_url}/internal/sessions",
        json={"user_id": user_id},
        headers={"Authorization": f"Bearer {api_key}"},
    )
    assert response.status_code == 201, response.text
    token: str = response.json()["token"]
    return remember_secret(token)


def publish(
    base_url: str, api_key: str, user_id: str, type: str, data: Any = None, id: str | None = None
) -> tuple[str, int]:
    body: dict[str, Any] = {"user_id": user_id, "type": type, "data": data}
    if id is not None:
        body["id"] = id
    response = httpx.post(
        f"{base_url}/internal/notifications",
        json=body,
        headers={"Authorization": f"Bearer {api_key}"},
    )
    assert response.status_code == 202, response.text
    return response.json()["epoch"], response.json()["offset"]


def publish_retrying(base_url: str, api_key: str, n: int, errors: list[str]) -> None:
    """Publish alice's `tick` number `n` with an idempotency id, retrying until it is
    accepted (a publish whose connection was killed is sent again: the id makes it once);
    what went wrong meanwhile is added to `errors`."""
    for _ in range(50):
        try:
            response = httpx.post(
                f"{base_url}/internal/notifications",
                json={"user_id": "alice", "type": "tick", "data": n, "id": f"tick-{n}"},
                headers={"Authorization": f"Bearer {api_key}"},
                timeout=10,
            )
        except httpx.TransportError as exc:
            errors.append(str(exc))
            continue
        if response.status_code == 202:
            return
        errors.append(response.text)
        time.sleep(0.02)
