"""HTTP routes: health, sessions, temporary state, notifications, jobs and imports; the
contract they keep is docs/api.md (and docs/websocket.md for `/ws`)."""

from __future__ import annotations

from collections.abc import AsyncIterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import anyio
import msgspec
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response
from starlette.routing import Route, WebSocketRoute

from ondoki.domain.imports import UploadDetails
from ondoki.domain.job_view import job_view
from ondoki.domain.media import KIND as IMPORT_KIND
from ondoki.domain.notifications import UserEvent
from ondoki.domain.sessions import session_id
from ondoki.errors import InvalidInput, NotFound, OndokiError, TooLarge, Unauthorized
from ondoki.models import JobRecord, JobState
from ondoki_adapters.web import wire
from ondoki_adapters.web.auth import (
    bearer,
    has_api_key,
    require_api_key,
    require_session,
    services,
)
from ondoki_adapters.web.guide_page import render_page
from ondoki_adapters.web.http import (
    UnsupportedMediaType,
    UpgradeRequired,
    check_json,
    declared_length,
    decode_with,
    json_response,
    query_limit,
    read_body,
    read_json,
    read_json_body,
    require_json,
)
from ondoki_adapters.web.multipart import FormUpload, disposition_filename, filename_stem
from ondoki_adapters.web.openapi import ApiDocs
from ondoki_adapters.web.ws import websocket_endpoint

READY_TIMEOUT = 2.0


def _time(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


_decode_one = msgspec.json.Decoder(wire.PublishNotification).decode
_decode_batch = msgspec.json.Decoder(list[UserEvent]).decode


async def healthz(request: Request) -> Response:
    return json_response(wire.Health("ok"))


async def readyz(request: Request) -> Response:
    parts: dict[str, wire.PartStatus] = {}

    async def check(name: str, ping: Any) -> None:
        try:
            with anyio.fail_after(READY_TIMEOUT):
                await ping()
        except TimeoutError:
            parts[name] = wire.PartStatus(False, f"no answer within {READY_TIMEOUT:g}s")
        except OndokiError as exc:
            parts[name] = wire.PartStatus(False, str(exc))
        else:
            parts[name] = wire.PartStatus(True)

    async with anyio.create_task_group() as tasks:
        for name, part in services(request).parts.items():
            tasks.start_soon(check, name, part.ping)
    if not has_api_key(request):
        # Error texts name hosts and ports: only operators (the API key) see them.
        parts = {name: wire.PartStatus(part.ok) for name, part in parts.items()}
    ready = all(part.ok for part in parts.values())
    body = wire.Readiness("ready" if ready else "unavailable", dict(sorted(parts.items())))
    return json_response(body, 200 if ready else 503)


async def create_session(request: Request) -> Response:
    require_api_key(request)
    found = services(request)
    body = await read_json(request, wire.CreateSession, limit=found.settings.max_json_body_bytes)
    token, expires_at = await found.sessions.create(body.user_id, body.data, body.ttl_seconds)
    return json_response(wire.SessionCreated(token, _time(expires_at)), 201)


async def my_session(request: Request) -> Response:
    if request.method == "DELETE":
        return await _log_out(request)
    _, session, expires_at = await require_session(request)
    return json_response(
        wire.SessionView(
            session.user_id, session.data, _time(session.created_at), _time(expires_at)
        )
    )


async def _log_out(request: Request) -> Response:
    found = services(request)
    try:
        token, session, _ = await require_session(request)
    except Unauthorized:
        # Unknown here, yet a cached copy may be left by an earlier logout whose cache
        # delete failed (a 503, its database row already gone): end it too. A cache that
        # still does not answer makes this a 503 again, never a 401 the client would take
        # for done.
        token = bearer(request)
        await found.sessions.end(token)
        raise
    await found.sessions.end(token)
    # Close this session's sockets on every instance, not just this one.
    await found.notifications.end_session(session.user_id, session_id(token))
    return Response(status_code=204)


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
        events = decode_with(_decode_batch, body)
        _check_count(len(events), "events", found.settings.notification_batch_max_events)
        positions = await publisher.publish_many(events)
        return json_response(wire.Positions(positions), 202)
    one = decode_with(_decode_one, body)
    if one.user_id is not None and one.user_ids is None:
        position = await publisher.publish(one.user_id, one.type, one.data, id=one.id)
        return json_response(position, 202)
    if one.user_ids is not None and one.user_id is None:
        _check_count(len(one.user_ids), "user_ids", found.settings.notification_batch_max_events)
        positions = await publisher.broadcast(one.user_ids, one.type, one.data, id=one.id)
        return json_response(wire.Positions(positions), 202)
    raise InvalidInput("give either user_id (one user) or user_ids (a broadcast)")


def _check_count(count: int, what: str, limit: int) -> None:
    # The publisher checks it too; here the message can name the setting.
    if count > limit:
        raise TooLarge(
            f"{what} has {count} items; the limit is {limit} (ONDOKI_NOTIFICATION_BATCH_MAX_EVENTS)"
        )


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
    return json_response(job_view(record))


async def _list_jobs(request: Request, kind: str | None) -> Response:
    _, session, _ = await require_session(request)
    params = request.query_params
    # An unknown state is refused by the queue (`check_page`) with the known ones named.
    state = cast(JobState | None, params.get("state"))
    page = await services(request).jobs.list_jobs(
        session.user_id,
        state=state,
        kind=kind,
        limit=query_limit(request, 50, 200),
        cursor=params.get("cursor"),
    )
    return json_response(wire.JobPage([job_view(record) for record in page.jobs], page.next_cursor))


async def list_jobs(request: Request) -> Response:
    """The caller's jobs, newest first: `?state=`, `?kind=`, `?limit=` (50), `?cursor=`."""
    return await _list_jobs(request, request.query_params.get("kind"))


async def imports(request: Request) -> Response:
    if request.method == "GET":
        # The caller's imports: the same listing, of the import kind only.
        return await _list_jobs(request, IMPORT_KIND)
    return await create_import(request)


_VIDEO_TYPES = ("video/", "application/octet-stream")


async def create_import(request: Request) -> Response:
    _, session, _ = await require_session(request)
    found = services(request)
    content_type = request.headers.get("content-type", "application/octet-stream")
    body: AsyncIterable[bytes]
    if content_type.lower().startswith("multipart/form-data"):
        form = FormUpload(request.stream(), content_type)
        body, details = form, form.details
    elif content_type.lower().startswith(_VIDEO_TYPES):
        name = disposition_filename(request.headers.get("content-disposition"))
        body, details = request.stream(), UploadDetails(title=filename_stem(name))
    else:
        raise UnsupportedMediaType(
            "expected a video body (video/* or application/octet-stream) or a "
            f"multipart/form-data form, got {content_type}"
        )
    if "title" in request.query_params:
        # Wins over a file name; a form's own title field (read later) wins over both.
        details.title = request.query_params["title"]
    declared = declared_length(request)
    if declared is not None and declared > found.imports.max_bytes:
        raise TooLarge(f"the upload is {declared} bytes; the limit is {found.imports.max_bytes}")
    key = request.headers.get("idempotency-key")
    job_id = await found.imports.known(session.user_id, key)
    if job_id is None:
        job_id = await found.imports.upload(
            session.user_id,
            body,
            idempotency_key=key,
            declared_bytes=declared,
            details=details,
        )
    return json_response(wire.ImportAccepted(job_id), 202, {"Location": f"/jobs/{job_id}"})


_GUIDE_FORMATS = ("json", "md", "html")


async def import_guide(request: Request) -> Response:
    form = request.query_params.get("format", "json")
    if form not in _GUIDE_FORMATS:
        raise InvalidInput(f"format must be json, md or html, got {form[:16]!r}")
    record = await _owned_job(request)
    guide, directory = await services(request).imports.guide(record)
    if form == "md":
        return await _file(directory / "guide.md", media_type="text/markdown; charset=utf-8")
    base = f"/imports/{record.id}/"
    urls = services(request).urls
    if form == "html":
        # Absolute picture URLs: an app may show the page from elsewhere (an iframe's srcdoc).
        origin = str(request.base_url).rstrip("/")
        page = render_page(guide, lambda frame: origin + urls.sign(base + frame))
        policy = f"default-src 'none'; img-src {origin}; style-src 'unsafe-inline'"
        return HTMLResponse(page, headers={"Content-Security-Policy": policy})
    steps = [
        wire.GuideStepView(**msgspec.structs.asdict(step), frame_url=urls.sign(base + step.frame))
        for step in guide.steps
    ]
    return json_response(wire.GuideView(**{**msgspec.structs.asdict(guide), "steps": steps}))


async def import_frame(request: Request) -> Response:
    found = services(request)
    job_id, name = request.path_params["job_id"], request.path_params["name"]
    query = request.query_params
    if "signature" in query or "expires" in query:
        # A signed URL is its own credential (an <img> sends no Authorization header).
        found.urls.verify(
            f"/imports/{job_id}/frames/{name}", query.get("expires"), query.get("signature")
        )
        record = await found.jobs.get(job_id)
    else:
        record = await _owned_job(request)
    guide, directory = await found.imports.guide(record)
    path = found.imports.frame(guide, directory, "frames/" + name)
    # Private: the URL is a capability; the picture never changes, but the URL expires.
    return await _file(
        path, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=300"}
    )


async def _file(path: Path, *, media_type: str, headers: dict[str, str] | None = None) -> Response:
    # The sweep may have removed an old guide since it was read: 404, not a failed response.
    if not await anyio.Path(path).is_file():
        raise NotFound("the guide is gone (its files were removed)")
    return FileResponse(path, media_type=media_type, headers=headers)


async def dead_jobs(request: Request) -> Response:
    require_api_key(request)
    dead = await services(request).jobs.dead(limit=query_limit(request, 100, 1000))
    return json_response(wire.DeadJobs([job_view(record) for record in dead]))


async def retry_job(request: Request) -> Response:
    require_api_key(request)
    record = await services(request).jobs.retry(request.path_params["job_id"])
    return json_response(job_view(record), 202)


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
        return json_response(wire.StateWritten(key, _time(expires_at)))
    if request.method == "DELETE":
        await found.state.delete(session.user_id, key)
        return Response(status_code=204)
    value = await found.state.get(session.user_id, key)
    return Response(value, media_type="application/json")


async def websocket_only(request: Request) -> Response:
    raise UpgradeRequired("/ws is a WebSocket: connect with a WebSocket client")


docs = ApiDocs()

routes = [
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/internal/sessions", create_session, methods=["POST"]),
    Route("/sessions/me", my_session, methods=["GET", "DELETE"]),
    Route("/state/{key}", state, methods=["GET", "PUT", "DELETE"]),
    Route("/internal/notifications", publish_notification, methods=["POST"]),
    Route("/jobs/{job_id}", job, methods=["GET", "DELETE"]),
    Route("/internal/jobs/dead", dead_jobs, methods=["GET"]),
    Route("/jobs", list_jobs, methods=["GET"]),
    Route("/imports", imports, methods=["GET", "POST"]),
    Route("/imports/{job_id}/guide", import_guide, methods=["GET"]),
    Route("/imports/{job_id}/frames/{name}", import_frame, methods=["GET"]),
    Route("/internal/jobs/{job_id}/retry", retry_job, methods=["POST"]),
    WebSocketRoute("/ws", websocket_endpoint),
    Route("/ws", websocket_only, methods=["GET"]),
    Route("/openapi.json", docs.openapi, methods=["GET"]),
    Route("/docs", docs.page, methods=["GET"]),
    Route("/docs/assets/{name}", docs.asset, methods=["GET"]),
]
