"""The Starlette application: routes, the error shape, and the services' lifespan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp

from ondoki import errors
from ondoki.entrypoints.services import Services
from ondoki_adapters.web.direct import DirectFrames, check_hypercorn
from ondoki_adapters.web.http import MalformedBody, UnsupportedMediaType, error_response
from ondoki_adapters.web.metrics import MetricsEndpoint
from ondoki_adapters.web.observe import HttpMetrics, RequestContext
from ondoki_adapters.web.routes import routes

log = logging.getLogger("ondoki.web")

# Each error class's HTTP status; subclasses inherit their parent's unless listed.
_STATUS: list[tuple[type[errors.OndokiError], int]] = [
    (MalformedBody, 400),
    (errors.Unauthorized, 401),
    (errors.Forbidden, 403),
    (errors.NotFound, 404),
    (errors.JobStateError, 409),
    (errors.TooLarge, 413),
    (UnsupportedMediaType, 415),
    (errors.UnsupportedMedia, 415),
    (errors.InvalidInput, 422),
    (errors.BackendError, 503),
]

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


def status_for(exc: errors.OndokiError) -> int:
    for cls, status in _STATUS:
        if isinstance(exc, cls):
            return status
    return 500


async def _ondoki_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, errors.OndokiError)
    status = status_for(exc)
    if status >= 500:
        log.warning("%s %s failed: %s", request.method, request.url.path, exc)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return error_response(status, exc.code, exc.message, headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    return error_response(exc.status_code, code, str(exc.detail), exc.headers)


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error in %s %s", request.method, request.url.path)
    return error_response(500, "internal", "internal error; see the server log")


ServicesFactory = Callable[[], AbstractAsyncContextManager[Services]]


def create_app(open_services: ServicesFactory) -> Starlette:
    """The ASGI app; the composition root's `open_services` runs in its lifespan."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        async with open_services() as services:
            yield {"services": services}

    registry = CollectorRegistry(auto_describe=True)
    metrics = MetricsEndpoint(registry)
    return Starlette(
        routes=[*routes, Route("/metrics", metrics.handle, methods=["GET"])],
        middleware=[Middleware(RequestContext, metrics=HttpMetrics(registry))],
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
