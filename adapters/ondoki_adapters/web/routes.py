"""HTTP routes: health, sessions and temporary state (DESIGN section 6)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import anyio
import msgspec
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route, WebSocketRoute

from ondoki.domain.imports import public
from ondoki.domain.notifications import UserEvent
from ondoki.domain.sessions import session_id
from ondoki.errors import InvalidInput, NotFound, OndokiError, TooLarge
from ondoki.models import JobRecord, Position
from ondoki_adapters.web.auth import require_api_key, require_session, services
from ondoki_adapters.web.http import (
    UnsupportedMediaType,
    check_json,
    decode_json,
    json_response,
    read_body,
    read_json,
    read_json_body,
    require_json,
)
from ondoki_adapters.web.ws import websocket_endpoint

READY_TIMEOUT = 2.0


def _time(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


class CreateSession(msgspec.Struct, forbid_unknown_fields=True):
    user_id: str
    data: dict[str, Any] | None = None
    ttl_seconds: float | None = None


class PublishNotification(msgspec.Struct, forbid_unknown_fields=True):
    """One event for `user_id`, or a broadcast of one event to `user_ids`."""

    type: str
    user_id: str | None = None
    user_ids: list[str] | None = None
    data: Any = None
    id: str | None = None


_decode_one = msgspec.json.Decoder(PublishNotification).decode
_decode_batch = msgspec.json.Decoder(list[UserEvent]).decode


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
        found = services(request)
        await found.sessions.end(token)
        # Close this session's sockets on every instance, not just this one.
        await found.notifications.end_session(session.user_id, session_id(token))
        return Response(status_code=204)
    return json_response(
        {
            "user_id": session.user_id,
            "data": session.data,
            "created_at": _time(session.created_at),
            "expires_at": _time(expires_at),
        }
    )


async def publish_notification(request: Request) -> Response:
    """One event (`{"user_id", ...}`), a broadcast (`{"user_ids": [...], ...}`) or a batch
    (a JSON list of events); see docs/publishing.md. A batch or broadcast is checked whole
    before anything is published: a bad item is a 4xx naming its index."""
    require_api_key(request)
    found = services(request)
    publisher = found.notifications.publisher
    body = await read_json_body(
        request,
        limit=found.settings.notification_batch_max_bytes,
        setting="ONDOKI_NOTIFICATION_BATCH_MAX_BYTES",
    )
    if body.lstrip()[:1] == b"[":
        events = decode_json(_decode_batch, body)
        _check_count(len(events), "events", found.settings.notification_batch_max_events)
        positions = await publisher.publish_many(events)
        return json_response({"positions": [_position(p) for p in positions]}, 202)
    one = decode_json(_decode_one, body)
    if one.user_id is not None and one.user_ids is None:
        position = await publisher.publish(one.user_id, one.type, one.data, id=one.id)
        return json_response(_position(position), 202)
    if one.user_ids is not None and one.user_id is None:
        _check_count(len(one.user_ids), "user_ids", found.settings.notification_batch_max_events)
        positions = await publisher.broadcast(one.user_ids, one.type, one.data, id=one.id)
        return json_response({"positions": [_position(p) for p in positions]}, 202)
    raise InvalidInput("give either user_id (one user) or user_ids (a broadcast)")


def _check_count(count: int, what: str, limit: int) -> None:
    # The publisher checks it too; here the message can name the setting.
    if count > limit:
        raise TooLarge(
            f"{what} has {count} items; the limit is {limit} (ONDOKI_NOTIFICATION_BATCH_MAX_EVENTS)"
        )


def _position(position: Position) -> dict[str, Any]:
    return {"epoch": position.epoch, "offset": position.offset}


async def _owned_job(request: Request) -> JobRecord:
    _, session, _ = await require_session(request)
    record = await services(request).jobs.get(request.path_params["job_id"])
    if record.owner != session.user_id:
        # Not 403: whether someone else's job exists is not this caller's business.
        raise NotFound("no such job")
    return record


async def job(request: Request) -> Response:
    record = await _owned_job(request)
    if request.method == "DELETE":
        record = await services(request).jobs.cancel(record.id)
    return json_response(public(record))


_VIDEO_TYPES = ("video/", "application/octet-stream")


async def create_import(request: Request) -> Response:
    _, session, _ = await require_session(request)
    found = services(request)
    content_type = request.headers.get("content-type", "application/octet-stream")
    if not content_type.lower().startswith(_VIDEO_TYPES):
        raise UnsupportedMediaType(
            f"expected a video body (video/* or application/octet-stream), got {content_type}"
        )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > found.imports.max_bytes:
        raise TooLarge(f"the video is {declared} bytes; the limit is {found.imports.max_bytes}")
    key = request.headers.get("idempotency-key")
    job_id = await found.imports.known(session.user_id, key)
    if job_id is None:
        job_id = await found.imports.upload(session.user_id, request.stream(), idempotency_key=key)
    return json_response({"job_id": job_id}, 202, {"Location": f"/jobs/{job_id}"})


async def import_guide(request: Request) -> Response:
    record = await _owned_job(request)
    guide, directory = await services(request).imports.guide(record)
    if request.query_params.get("format") == "md":
        return FileResponse(directory / "guide.md", media_type="text/markdown; charset=utf-8")
    base = f"/imports/{record.id}/"
    steps = [
        {**msgspec.structs.asdict(step), "frame_url": base + step.frame} for step in guide.steps
    ]
    return json_response({**msgspec.structs.asdict(guide), "steps": steps})


async def import_frame(request: Request) -> Response:
    record = await _owned_job(request)
    imports = services(request).imports
    guide, directory = await imports.guide(record)
    path = imports.frame(guide, directory, "frames/" + request.path_params["name"])
    return FileResponse(path, media_type="image/jpeg")


async def dead_jobs(request: Request) -> Response:
    require_api_key(request)
    raw = request.query_params.get("limit", "100")
    if not raw.isdigit() or not 1 <= int(raw) <= 1000:
        raise InvalidInput("limit must be an integer from 1 to 1000")
    dead = await services(request).jobs.dead(limit=int(raw))
    return json_response({"jobs": [public(record) for record in dead]})


async def retry_job(request: Request) -> Response:
    require_api_key(request)
    record = await services(request).jobs.retry(request.path_params["job_id"])
    return json_response(public(record), 202)


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
    Route("/internal/notifications", publish_notification, methods=["POST"]),
    Route("/jobs/{job_id}", job, methods=["GET", "DELETE"]),
    Route("/internal/jobs/dead", dead_jobs, methods=["GET"]),
    Route("/imports", create_import, methods=["POST"]),
    Route("/imports/{job_id}/guide", import_guide, methods=["GET"]),
    Route("/imports/{job_id}/frames/{name}", import_frame, methods=["GET"]),
    Route("/internal/jobs/{job_id}/retry", retry_job, methods=["POST"]),
    WebSocketRoute("/ws", websocket_endpoint),
]
