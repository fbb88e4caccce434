"""HTTP routes: health, sessions and temporary state (DESIGN section 6)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import anyio
import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from adapters.web.auth import require_api_key, require_session, services
from adapters.web.http import check_json, json_response, read_body, read_json, require_json
from ondoki.errors import InvalidInput, OndokiError

READY_TIMEOUT = 2.0


def _time(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


class CreateSession(msgspec.Struct, forbid_unknown_fields=True):
    user_id: str
    data: dict[str, Any] | None = None
    ttl_seconds: float | None = None


async def healthz(request: Request) -> Response:
    return json_response({"status": "ok"})


async def readyz(request: Request) -> Response:
    parts: dict[str, dict[str, Any]] = {}

    async def check(name: str, ping: Any) -> None:
        try:
            with anyio.fail_after(READY_TIMEOUT):
                await ping()
        except TimeoutError:
            parts[name] = {"ok": False, "error": f"no answer within {READY_TIMEOUT:g}s"}
        except OndokiError as exc:
            parts[name] = {"ok": False, "error": str(exc)}
        else:
            parts[name] = {"ok": True}

    async with anyio.create_task_group() as tasks:
        for name, part in services(request).parts.items():
            tasks.start_soon(check, name, part.ping)
    ready = all(part["ok"] for part in parts.values())
    body = {"status": "ready" if ready else "unavailable", "parts": dict(sorted(parts.items()))}
    return json_response(body, 200 if ready else 503)


async def create_session(request: Request) -> Response:
    require_api_key(request)
    found = services(request)
    body = await read_json(request, CreateSession, limit=found.settings.max_json_body_bytes)
    token, expires_at = await found.sessions.create(body.user_id, body.data, body.ttl_seconds)
    return json_response({"token": token, "expires_at": _time(expires_at)}, 201)


async def my_session(request: Request) -> Response:
    token, session, expires_at = await require_session(request)
    if request.method == "DELETE":
        await services(request).sessions.end(token)
        return Response(status_code=204)
    return json_response(
        {
            "user_id": session.user_id,
            "data": session.data,
            "created_at": _time(session.created_at),
            "expires_at": _time(expires_at),
        }
    )


def _ttl_param(request: Request) -> float | None:
    raw = request.query_params.get("ttl_seconds")
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        raise InvalidInput(f"ttl_seconds must be a number, got {raw[:32]!r}") from None


async def state(request: Request) -> Response:
    _, session, _ = await require_session(request)
    found = services(request)
    key: str = request.path_params["key"]
    if request.method == "PUT":
        require_json(request)
        body = await read_body(request, limit=found.settings.state_max_bytes)
        check_json(body)
        expires_at = await found.state.put(session.user_id, key, body, _ttl_param(request))
        return json_response({"key": key, "expires_at": _time(expires_at)})
    if request.method == "DELETE":
        await found.state.delete(session.user_id, key)
        return Response(status_code=204)
    value = await found.state.get(session.user_id, key)
    return Response(value, media_type="application/json")


routes = [
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/internal/sessions", create_session, methods=["POST"]),
    Route("/sessions/me", my_session, methods=["GET", "DELETE"]),
    Route("/state/{key}", state, methods=["GET", "PUT", "DELETE"]),
]
