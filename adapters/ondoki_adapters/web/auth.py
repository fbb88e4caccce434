"""Bearer credentials: the service API key for /internal/*, session tokens for the rest."""

from __future__ import annotations

import hmac

from starlette.requests import HTTPConnection

from ondoki.entrypoints.services import Services
from ondoki.errors import Unauthorized
from ondoki.models import Session


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


def require_api_key(conn: HTTPConnection) -> None:
    """Pass only requests carrying the service API key."""
    token = bearer(conn)
    if not hmac.compare_digest(token.encode(), services(conn).api_key.encode()):
        raise Unauthorized("wrong API key")


async def require_session(conn: HTTPConnection) -> tuple[str, Session, float]:
    """The caller's session token, session and new expiry (each request extends it)."""
    token = bearer(conn)
    session, expires_at = await services(conn).sessions.get(token)
    return token, session, expires_at
