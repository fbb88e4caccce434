"""Cross-origin access for web apps on other origins: Starlette's CORS middleware, configured
from `ONDOKI_CORS_ORIGINS`, with refused preflights answered in the service's error shape."""

from __future__ import annotations

from collections.abc import Sequence

from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response

from ondoki_adapters.web.http import error_response

#: Every method the API answers to.
METHODS = ("GET", "POST", "PUT", "DELETE")
#: Request headers a browser app may send (anything else fails the preflight).
REQUEST_HEADERS = (
    "Authorization",
    "Content-Type",
    "Content-Disposition",
    "Idempotency-Key",
    "X-Request-ID",
)
#: Response headers a browser app may read besides the CORS-safelisted ones.
EXPOSED_HEADERS = ("X-Request-ID", "Location", "WWW-Authenticate", "Content-Disposition")
#: How long a browser may cache a preflight's answer.
PREFLIGHT_MAX_AGE = 600


class _Cors(CORSMiddleware):
    def preflight_response(self, request_headers: Headers) -> Response:
        answer = super().preflight_response(request_headers)
        if answer.status_code == 200:
            return answer
        # Starlette says which part failed in plain text; keep its words, in our shape.
        detail = bytes(answer.body).decode(errors="replace")
        return error_response(
            403, "cors_refused", f"{detail} (see ONDOKI_CORS_ORIGINS)", dict(answer.headers)
        )


def cors_middleware(origins: Sequence[str]) -> list[Middleware]:
    """The middleware for `origins` (`*` for any); none when no origin is allowed, so a
    preflight gets the 405 of any OPTIONS request. Credentials are bearer tokens, never
    cookies, so `allow_credentials` stays off."""
    if not origins:
        return []
    return [
        Middleware(
            _Cors,
            allow_origins=list(origins),
            allow_methods=list(METHODS),
            allow_headers=list(REQUEST_HEADERS),
            expose_headers=list(EXPOSED_HEADERS),
            max_age=PREFLIGHT_MAX_AGE,
        )
    ]
