"""The Starlette application: routes, the error shape, and the services' lifespan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ondoki import errors
from ondoki.entrypoints.services import Services
from ondoki_adapters.web import admin
from ondoki_adapters.web.auth import has_api_key
from ondoki_adapters.web.cors import cors_middleware
from ondoki_adapters.web.direct import DirectFrames, check_hypercorn
from ondoki_adapters.web.http import (
    MalformedBody,
    UnsupportedMediaType,
    UpgradeRequired,
    error_response,
)
from ondoki_adapters.web.metrics import MetricsEndpoint
from ondoki_adapters.web.observe import HttpMetrics, RequestContext
from ondoki_adapters.web.routes import routes
from ondoki_adapters.web.throttle import ApiKeyGuard, seconds_header

log = logging.getLogger("ondoki.web")

# Each error class's HTTP status; subclasses inherit their parent's unless listed.
_STATUS: list[tuple[type[errors.OndokiError], int]] = [
    (MalformedBody, 400),
    (errors.Unauthorized, 401),
    (errors.Forbidden, 403),
    (errors.NotFound, 404),
    (errors.BodyTimeout, 408),
    (errors.JobStateError, 409),
    (errors.TooLarge, 413),
    (UnsupportedMediaType, 415),
    (errors.UnsupportedMedia, 415),
    (errors.InvalidInput, 422),
    (UpgradeRequired, 426),
    (errors.TooManyRequests, 429),
    (errors.BackendError, 503),
    (errors.InsufficientStorage, 507),
]

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


def status_for(exc: errors.OndokiError) -> int:
    for cls, status in _STATUS:
        if isinstance(exc, cls):
            return status
    return 500


# What a 503 says to a caller without the API key: where Redis runs is not theirs to know.
_UNAVAILABLE = "a backend did not answer; retry shortly (the server log has the details)"


async def _ondoki_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, errors.OndokiError)
    status = status_for(exc)
    message = exc.message
    headers: dict[str, str] = {}
    if status >= 500:
        log.warning("%s %s failed: %s", request.method, request.url.path, exc)
        if status == 503 and not has_api_key(request):
            message = _UNAVAILABLE
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if isinstance(exc, errors.TooManyRequests):
        headers["Retry-After"] = seconds_header(exc.retry_after)
    if isinstance(exc, errors.BodyTimeout):
        # The rest of the body may still come; the connection cannot be reused.
        headers["Connection"] = "close"
    return error_response(status, exc.code, message, headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    return error_response(exc.status_code, code, str(exc.detail), exc.headers)


async def _unexpected(request: Request, exc: Exception) -> Response:
    # The last resort, outside every middleware: an error in one of them, or a route's error
    # after its response had started (`AnswerUnexpected` lets those through; the server
    # then drops the connection).
    log.exception("unhandled error in %s %s", request.method, request.url.path)
    return _internal_error()


def _internal_error() -> Response:
    return error_response(500, "internal", "internal error; see the server log")


class AnswerUnexpected:
    """Answers an HTTP request whose route raised an unexpected error with a 500 in the
    error shape, inside the other middleware, so that the answer carries the request id and
    CORS headers like any other (a browser hides a response without them), and its log line
    the request id. Starlette's own last resort (`_unexpected`) sits outside every
    middleware.

    A client that left before the answer (`ClientDisconnect` while its body was read) is
    not an error: one line at INFO, and nothing is sent (the access log shows 499). Once
    the response has started there is nothing left to answer with: the error goes on to
    the server, which drops the connection."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        if scope["type"] != "http":
            # No frame of its own: a WebSocket's task awaits through this for its lifetime.
            return self.app(scope, receive, send)
        return self._http(scope, receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def watched(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except ClientDisconnect:
            log.info("client left before the answer: %s %s", scope.get("method"), scope.get("path"))
        except Exception:
            if started:
                raise
            log.exception("unhandled error in %s %s", scope.get("method"), scope.get("path"))
            await _internal_error()(scope, receive, send)


class RefuseCleartextHttp2:
    """Answers HTTP/2 requests that came without TLS (h2c, by prior knowledge or by
    `Upgrade: h2c`) with 505, unless ONDOKI_ALLOW_H2C is set. Hypercorn speaks h2c on every
    plain listener and has no setting to stop it; a proxy that passes `Upgrade: h2c` on
    would otherwise hand its clients a connection its own rules no longer see."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope.get("http_version") == "2"
            and scope.get("scheme") == "http"
            and not scope.get("state", {}).get("allow_h2c", False)
        ):
            response = error_response(
                505,
                "http_version_not_supported",
                "HTTP/2 without TLS is off on this server (ONDOKI_ALLOW_H2C): use HTTP/1.1",
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


ServicesFactory = Callable[[], AbstractAsyncContextManager[Services]]


def create_app(open_services: ServicesFactory, *, cors_origins: Sequence[str] = ()) -> Starlette:
    """The ASGI app; the composition root's `open_services` runs in its lifespan. Web apps
    on `cors_origins` may call it from a browser (`*`: any origin)."""

    registry = CollectorRegistry(auto_describe=True)
    # CPU, memory, open files and start time of this process (process_*).
    ProcessCollector(registry=registry)
    guard = ApiKeyGuard(registry)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        async with open_services() as services:
            settings = services.settings
            guard.configure(
                limit=settings.api_key_failure_limit,
                window=settings.api_key_failure_window_seconds,
            )
            yield {
                "services": services,
                "api_key_guard": guard,
                "allow_h2c": settings.allow_h2c,
            }

    metrics = MetricsEndpoint(registry)
    return Starlette(
        routes=[*routes, *admin.routes, Route("/metrics", metrics.handle, methods=["GET"])],
        # CORS first, so that error responses carry its headers too (a browser hides a
        # response without them), unexpected errors' 500s included (`AnswerUnexpected`,
        # last). DirectFrames wraps the whole app (`serve_app`).
        middleware=[
            *cors_middleware(cors_origins),
            Middleware(RequestContext, metrics=HttpMetrics(registry)),
            Middleware(RefuseCleartextHttp2),
            Middleware(AnswerUnexpected),
        ],
        lifespan=lifespan,
        exception_handlers={
            errors.OndokiError: _ondoki_error,
            HTTPException: _http_error,
            Exception: _unexpected,
        },
    )


def serve_app(app: ASGIApp, *, direct_frames: bool) -> ASGIApp:
    """What `ondoki serve` hands hypercorn: `app`, wrapped (outside everything, where it
    sees hypercorn's own `send`) so that WebSocket frames go straight to the transport
    unless `direct_frames` is off (ONDOKI_WS_DIRECT_FRAMES). Raises ConfigError when on
    with a hypercorn whose internals it does not know."""
    if not direct_frames:
        return app
    check_hypercorn()
    return DirectFrames(app)
