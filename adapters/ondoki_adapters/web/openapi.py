"""The OpenAPI 3.1 document, generated from the wire Structs (`wire.py`) and the table of
operations below, and the offline docs page that shows it (Swagger UI, whose files come from
the `swagger-ui-py` package and are served by the service itself: no CDN)."""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import UnionType
from typing import Any, Literal, get_args

import msgspec
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response

from ondoki.domain.job_view import JobView
from ondoki.domain.notifications import UserEvent
from ondoki.errors import NotFound
from ondoki.models import Position
from ondoki_adapters.web import wire

Auth = Literal["none", "api_key", "session"]

#: Error statuses and what they mean, for every operation that can answer them.
_ERRORS = {
    400: "malformed body (not JSON, empty)",
    401: "missing or wrong credentials",
    403: "refused (a bad or expired signature)",
    404: "unknown, or not yours",
    409: "the job's state does not allow it",
    413: "over a size limit",
    415: "not a content type this operation reads, or not a decodable video",
    408: "the request body stalled (ONDOKI_BODY_IDLE_TIMEOUT_SECONDS)",
    422: "a value that does not fit (the message names the field)",
    429: "too many requests: wait `Retry-After` seconds (a limit, or too many wrong API keys)",
    426: "not a WebSocket upgrade",
    503: "a backend (Redis) is unreachable",
    507: "not enough free disk space for the upload",
}
_ANY_JSON: dict[str, Any] = {"description": "any JSON document"}


@dataclass(frozen=True)
class Param:
    name: str
    where: Literal["query", "header"]
    description: str
    schema: dict[str, Any] = field(default_factory=lambda: {"type": "string"})
    required: bool = False


@dataclass(frozen=True)
class Operation:
    """One method on one path: what it takes, what it answers."""

    method: str
    path: str
    summary: str
    auth: Auth
    #: Success status, and its body: a Struct, `Any` (any JSON), None (no body), or a media
    #: type of its own (`ok_media`).
    ok: int = 200
    response: Any = None
    ok_media: tuple[str, ...] = ("application/json",)
    #: Request body: a Struct or `Any` for JSON; `binary` for raw media types.
    body: Any = None
    body_media: tuple[str, ...] = ("application/json",)
    params: tuple[Param, ...] = ()
    errors: tuple[int, ...] = ()
    description: str = ""

    @property
    def key(self) -> tuple[str, str]:
        return self.path, self.method


_TTL = Param(
    "ttl_seconds", "query", "lifetime in seconds (default and maximum: see settings)",
    {"type": "number", "exclusiveMinimum": 0},
)  # fmt: skip
_IDEMPOTENCY = Param(
    "Idempotency-Key", "header", "1-128 visible ASCII characters: the same key again returns "
    "the first job", {"type": "string", "pattern": "^[\\x21-\\x7e]{1,128}$"},
)  # fmt: skip
_TITLE = Param("title", "query", "the guide's title (default: the video's file name)")
_DISPOSITION = Param(
    "Content-Disposition", "header", 'names the video, e.g. `attachment; filename="demo.mp4"`'
)
_UPLOAD_FORM: dict[str, Any] = {
    "type": "object",
    "properties": {
        "video": {"type": "string", "format": "binary"},
        "captions": {"type": "string", "format": "binary", "description": ".srt or .vtt"},
        "title": {"type": "string"},
    },
    "required": ["video"],
}
_GUIDE_FORMAT = Param(
    "format", "query", "`json` (default), `md` (Markdown) or `html` (a page to read)",
    {"enum": ["json", "md", "html"]},
)  # fmt: skip
_LIMIT = Param(
    "limit", "query", "how many, newest first", {"type": "integer", "minimum": 1, "maximum": 1000}
)
_SIGNATURE = (
    Param("expires", "query", "when the signed URL stops working (Unix seconds)"),
    Param("signature", "query", "the signed URL's HMAC"),
)
_BODY = (400, 413, 415, 422)
_LISTING = (
    Param("state", "query", "only jobs in this state",
          {"enum": ["queued", "running", "succeeded", "failed", "dead", "cancelled"]}),
    Param("limit", "query", "how many, newest first (default 50)",
          {"type": "integer", "minimum": 1, "maximum": 200}),
    Param("cursor", "query", "the `next_cursor` of the previous page"),
)  # fmt: skip

#: Every HTTP operation of the app. A test checks that the app has no route missing here.
OPERATIONS: tuple[Operation, ...] = (
    Operation("get", "/healthz", "Liveness, no dependency checks", "none",
              response=wire.Health),
    Operation("get", "/readyz", "Readiness: each part (cache, pub/sub, job queue) answers",
              "none", response=wire.Readiness,
              description="503 with the same body when a part does not answer."),
    Operation("get", "/metrics", "Prometheus metrics", "none",
              response=str, ok_media=("text/plain",)),
    Operation("post", "/internal/sessions", "Log a user in: a session token", "api_key",
              ok=201, response=wire.SessionCreated, body=wire.CreateSession, errors=_BODY),
    Operation("get", "/sessions/me", "The caller's session (this extends it)", "session",
              response=wire.SessionView),
    Operation("delete", "/sessions/me", "Log out: the session's WebSockets close (4001)",
              "session", ok=204),
    Operation("get", "/state/{key}", "Read a temporary state value", "session",
              response=Any, errors=(404, 422)),
    Operation("put", "/state/{key}", "Write a temporary state value (any JSON)", "session",
              response=wire.StateWritten, body=Any, params=(_TTL,), errors=(*_BODY, 404)),
    Operation("delete", "/state/{key}", "Delete a temporary state value", "session",
              ok=204, errors=(404, 422)),
    Operation("post", "/internal/notifications",
              "Publish an event to a user, a broadcast to many, or a batch", "api_key",
              ok=202, response=Position | wire.Positions,
              body=wire.PublishNotification | list[UserEvent], errors=_BODY,
              description="An object with `user_id` publishes one event and answers its "
              "position; with `user_ids` it broadcasts one event and answers each user's "
              "position. A list of events is a batch: all published in one Redis call, or "
              "none when an item is invalid (422 naming its index). See docs/publishing.md."),
    Operation("get", "/jobs", "The caller's jobs, newest first, in pages", "session",
              response=wire.JobPage,
              params=(*_LISTING, Param("kind", "query", "only jobs of this kind")),
              errors=(422,)),
    Operation("get", "/imports", "The caller's video imports, newest first, in pages",
              "session", response=wire.JobPage, params=_LISTING, errors=(422,)),
    Operation("get", "/jobs/{job_id}", "A job of the caller's", "session",
              response=JobView, errors=(404,)),
    Operation("delete", "/jobs/{job_id}", "Cancel a job of the caller's", "session",
              response=JobView, errors=(404, 409)),
    Operation("get", "/internal/jobs/dead", "Dead jobs, newest first", "api_key",
              response=wire.DeadJobs, params=(_LIMIT,), errors=(422,)),
    Operation("post", "/internal/jobs/{job_id}/retry", "Replay a dead job", "api_key",
              ok=202, response=JobView, errors=(404, 409)),
    Operation("post", "/imports", "Upload a video to turn into a guide", "session",
              ok=202, response=wire.ImportAccepted, body="binary",
              body_media=("video/*", "application/octet-stream", "multipart/form-data"),
              params=(_IDEMPOTENCY, _TITLE, _DISPOSITION),
              errors=(400, 408, 413, 415, 422, 429, 507),
              description="The body is the video itself, or a form (what a browser sends) "
              "with the `video` file, an optional `captions` file (.srt or .vtt) and an "
              "optional `title`; either way it is streamed to disk. The guide's title is the "
              "form's `title`, else `?title=`, else the video's file name."),
    Operation("get", "/imports/{job_id}/guide", "An import's guide", "session",
              response=wire.GuideView,
              ok_media=("application/json", "text/markdown", "text/html"),
              params=(_GUIDE_FORMAT,), errors=(404, 409, 422)),
    Operation("get", "/imports/{job_id}/frames/{name}", "A step's picture", "session",
              response=bytes, ok_media=("image/jpeg",), params=_SIGNATURE,
              errors=(403, 404, 409),
              description="With the `frame_url` of a guide (signed: no credentials needed, "
              "403 when changed or expired), or with the owner's session."),
    Operation("get", "/ws", "The notification WebSocket", "none", ok=101,
              errors=(426,),
              description="Connect with a WebSocket client; see docs/websocket.md. A plain "
              "HTTP request is answered 426."),
    Operation("get", "/admin", "The operators' dashboard (asks for the API key)", "none",
              response=str, ok_media=("text/html",)),
    Operation("get", "/admin/static/{name}", "The dashboard's files", "none",
              response=bytes, ok_media=("text/css", "text/javascript"), errors=(404,)),
    Operation("get", "/internal/admin/queues", "Queues: depth, delayed, oldest age",
              "api_key", response=Any),
    Operation("get", "/internal/admin/workers", "Workers, live and dead, with their jobs",
              "api_key", response=Any),
    Operation("get", "/internal/admin/instances",
              "API instances: WebSockets and pub/sub health", "api_key", response=Any),
    Operation("get", "/internal/admin/doctor", "The doctor's findings", "api_key",
              response=Any),
    Operation("get", "/internal/admin/jobs/dead", "Dead jobs with their errors", "api_key",
              response=Any, params=(_LIMIT,), errors=(422,)),
    Operation("get", "/internal/admin/jobs/failures", "Recent failed attempts", "api_key",
              response=Any, params=(_LIMIT,), errors=(422,)),
    Operation("post", "/internal/admin/jobs/{job_id}/retry", "Replay a dead job", "api_key",
              ok=202, response=JobView, errors=(404, 409)),
    Operation("get", "/openapi.json", "This document", "none", response=Any),
    Operation("get", "/docs", "The API's documentation page", "none",
              response=str, ok_media=("text/html",)),
    Operation("get", "/docs/assets/{name}", "The documentation page's files", "none",
              response=bytes, ok_media=("text/css", "text/javascript", "image/png"),
              errors=(404,)),
)  # fmt: skip

_PATH_PARAM = re.compile(r"{(\w+)}")
_PATH_SCHEMAS = {"key": {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,128}$"}}
_REF = "#/components/schemas/{name}"


def _content_schema(kind: Any, schemas: dict[Any, dict[str, Any]], media: str) -> dict[str, Any]:
    if kind is Any:
        return dict(_ANY_JSON)
    if media == "multipart/form-data":
        return _UPLOAD_FORM
    if kind is bytes or kind == "binary":
        return {"type": "string", "format": "binary"}
    if kind is str:
        return {"type": "string"}
    if media == "application/json":
        if isinstance(kind, UnionType):
            return {"oneOf": [schemas[member] for member in get_args(kind)]}
        return schemas[kind]
    return {"type": "string"}


def _operation(op: Operation, schemas: dict[Any, dict[str, Any]]) -> dict[str, Any]:
    error = {
        "application/json": {"schema": {"$ref": _REF.format(name="ErrorBody")}},
    }
    responses: dict[str, Any] = {}
    ok: dict[str, Any] = {"description": "success"}
    if op.response is not None:
        ok["content"] = {
            media: {"schema": _content_schema(op.response, schemas, media)} for media in op.ok_media
        }
    responses[str(op.ok)] = ok
    statuses = set(op.errors)
    if op.auth in ("api_key", "session"):
        statuses.add(401)
    if op.auth == "api_key":
        statuses.add(429)  # wrong API keys from one address are throttled
    if op.body is not None:
        statuses.add(408)
    if op.auth != "none":
        statuses.add(503)
    if op.path == "/readyz":
        responses["503"] = {"description": "a part did not answer", **ok}
        statuses.discard(503)
    for status in sorted(statuses):
        responses[str(status)] = {"description": _ERRORS[status], "content": error}
    out: dict[str, Any] = {
        "operationId": f"{op.method}_{re.sub(r'[^a-z0-9]+', '_', op.path.lower()).strip('_')}",
        "summary": op.summary,
        "responses": responses,
    }
    if op.description:
        out["description"] = op.description
    if op.auth in ("api_key", "session"):
        out["security"] = [{"apiKey" if op.auth == "api_key" else "session": []}]
        if op.params == _SIGNATURE:
            out["security"].append({})  # a signed URL needs no credentials
    else:
        out["security"] = []
    params = [
        {
            "name": name,
            "in": "path",
            "required": True,
            "schema": _PATH_SCHEMAS.get(name, {"type": "string"}),
        }
        for name in _PATH_PARAM.findall(op.path)
    ]
    params += [
        {
            "name": p.name,
            "in": p.where,
            "required": p.required,
            "description": p.description,
            "schema": p.schema,
        }
        for p in op.params
    ]
    if params:
        out["parameters"] = params
    if op.body is not None:
        out["requestBody"] = {
            "required": True,
            "content": {
                media: {"schema": _content_schema(op.body, schemas, media)}
                for media in op.body_media
            },
        }
    return out


def _structs(operations: Iterable[Operation]) -> list[Any]:
    found: list[Any] = [wire.ErrorBody]
    for op in operations:
        for kind in (op.response, op.body):
            # Structs and lists of them; a union's members each (msgspec makes no schema of
            # a union of untagged Structs: `_content_schema` joins them with `oneOf`).
            members = get_args(kind) if isinstance(kind, UnionType) else (kind,)
            for member in members:
                plain = member is None or member is Any or member in (str, bytes, "binary")
                if not plain and member not in found:
                    found.append(member)
    return found


def build_openapi(operations: Iterable[Operation] = OPERATIONS) -> dict[str, Any]:
    """The OpenAPI 3.1 document: schemas from the Structs, paths from `operations`."""
    operations = tuple(operations)
    structs = _structs(operations)
    refs, components = msgspec.json.schema_components(structs, ref_template=_REF)
    schemas = dict(zip(structs, refs, strict=True))
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        paths.setdefault(op.path, {})[op.method] = _operation(op, schemas)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "ondoki",
            "version": "1",
            "description": "Sessions, temporary state, notifications and media imports. "
            'Every error is `{"error": {"code", "message"}}`.',
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "apiKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "the service API key (ONDOKI_API_KEY), for /internal/*",
                },
                "session": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "a session token from POST /internal/sessions",
                },
            },
        },
    }


# -- serving it ----------------------------------------------------------------------------


def _swagger_dir() -> Path:
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the swagger-ui-py package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "static"


_ASSETS = {
    "swagger-ui.css": "text/css",
    "swagger-ui-bundle.js": "text/javascript",
    "favicon-32x32.png": "image/png",
}

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>ondoki API</title>
<link rel="stylesheet" href="/docs/assets/swagger-ui.css">
<link rel="icon" href="/docs/assets/favicon-32x32.png">
</head>
<body>
<div id="ui"></div>
<script src="/docs/assets/swagger-ui-bundle.js"></script>
<script>
window.ui = SwaggerUIBundle({url: "/openapi.json", dom_id: "#ui", deepLinking: true});
</script>
</body>
</html>
"""


class ApiDocs:
    """`/openapi.json`, `/docs` and its assets; the document is built once."""

    def __init__(self) -> None:
        self.document = msgspec.json.encode(build_openapi())
        self.assets = _swagger_dir()

    async def openapi(self, request: Request) -> Response:
        return Response(self.document, media_type="application/json")

    async def page(self, request: Request) -> Response:
        return HTMLResponse(_PAGE)

    async def asset(self, request: Request) -> Response:
        name = request.path_params["name"]
        media = _ASSETS.get(name)
        if media is None:
            raise NotFound(f"no documentation asset {name!r}")
        return FileResponse(self.assets / name, media_type=media)
