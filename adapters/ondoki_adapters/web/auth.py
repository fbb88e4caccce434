"""Bearer credentials: the service API key for /internal/*, session tokens for the rest."""

from __future__ import annotations

import hmac

from starlette.requests import HTTPConnection

from ondoki.entrypoints.services import Services
from ondoki.errors import TooManyRequests, Unauthorized
from ondoki.models import Session
from ondoki_adapters.web.throttle import ApiKeyGuard


def services(conn: HTTPConnection) -> Services:
    found: Services = conn.state.services
    return found


def bearer(conn: HTTPConnection) -> str:
    """The token of an `Authorization: Bearer <token>` header; `Unauthorized` otherwise."""
    header = conn.headers.get("authorization")
    if header is None:
        raise Unauthorized("missing Authorization header (expected: Bearer <token>)")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("malformed Authorization header (expected: Bearer <token>)")
    return token


def has_api_key(conn: HTTPConnection) -> bool:
    """Whether the request carries the service API key (no error, nothing counted): for
    responses that show operators more than they show anyone else."""
    header = conn.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        token.strip().encode(), services(conn).api_key.encode()
    )


def api_key_guard(conn: HTTPConnection) -> ApiKeyGuard:
    found: ApiKeyGuard = conn.state.api_key_guard
    return found


def require_api_key(conn: HTTPConnection) -> None:
    """Pass only requests carrying the service API key; an address that failed too often
    lately is refused (429) whatever it sends."""
    guard = api_key_guard(conn)
    address = conn.client.host if conn.client is not None else "unknown"
    wait = guard.retry_after(address)
    if wait is not None:
        raise TooManyRequests(
            "too many failed API-key attempts from this address; retry later", retry_after=wait
        )
    try:
        token = bearer(conn)
        if not hmac.compare_digest(token.encode(), services(conn).api_key.encode()):
            raise Unauthorized("wrong API key")
    except Unauthorized:
        guard.failed(address)
        raise


async def require_session(conn: HTTPConnection) -> tuple[str, Session, float]:
    """The caller's session token, session and new expiry (each request extends it)."""
    token = bearer(conn)
    session, expires_at = await services(conn).sessions.get(token)
    return token, session, expires_at
