"""Request IDs, access logs and HTTP metrics for every request (a pure ASGI middleware)."""

from __future__ import annotations

import logging
import re
import secrets
import time

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ondoki.support.deadline import budget
from ondoki.support.logs import request_id

log = logging.getLogger("ondoki.access")

# Label values come from this set only: a client can send any method token, and every new
# label value is a new series kept forever.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
_VALID_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


class HttpMetrics:
    """The HTTP part of /metrics, in the app's own registry (no process-global state)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "ondoki_http_requests",
            "HTTP requests and WebSocket handshakes, by route and status",
            ["method", "route", "status"],
            registry=registry,
        )
        self.duration = Histogram(
            "ondoki_http_request_duration_seconds",
            "HTTP request duration (WebSockets excluded)",
            ["method", "route"],
            registry=registry,
        )


def _route(scope: Scope) -> str:
    # Starlette leaves the matched route in the scope: label by its template, not the raw
    # path, so that /state/{key} is one series however many keys there are.
    route = scope.get("route")
    return str(getattr(route, "path", "unmatched"))


class RequestContext:
    """Gives every request an ID (X-Request-ID, or a new one), logs it once, counts it, and
    gives each HTTP request one budget for its backend calls (`ondoki.support.deadline`)."""

    def __init__(self, app: ASGIApp, metrics: HttpMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        rid = given if _VALID_ID.fullmatch(given) else secrets.token_hex(8)
        token = request_id.set(rid)
        started = time.perf_counter()
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            elif message["type"] == "websocket.accept":
                status = 101
            elif message["type"] == "websocket.close" and not status:
                status = 403  # closed before accept: hypercorn answers the handshake with 403
            await send(message)

        failed = False
        try:
            if scope["type"] == "http":
                # One Redis budget per request: a hung Redis costs it one timeout, not one
                # per call and retry.
                with budget():
                    await self.app(scope, receive, send_with_id)
            else:
                await self.app(scope, receive, send_with_id)
        except BaseException:
            failed = True
            raise
        finally:
            elapsed = time.perf_counter() - started
            # Nothing sent: an error, or (nothing raised) a client that left first (499,
            # as nginx logs it).
            status = status or (500 if failed else 499)
            method = scope.get("method", "") if scope["type"] == "http" else "WS"
            method = method if method in _METHODS or method == "WS" else "other"
            route = _route(scope)
            self.metrics.requests.labels(method, route, str(status)).inc()
            if scope["type"] == "http":
                self.metrics.duration.labels(method, route).observe(elapsed)
            log.info(
                "%s %s %s",
                method,
                scope.get("path", ""),
                status,
                extra={"status": status, "duration_ms": round(elapsed * 1000, 2)},
            )
            request_id.reset(token)
