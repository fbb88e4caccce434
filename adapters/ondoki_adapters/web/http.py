"""Request and response helpers: msgspec bodies, size limits, the one error shape."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import anyio
import msgspec
from starlette.requests import Request
from starlette.responses import Response

from ondoki.errors import BodyTimeout, InvalidInput, OndokiError, TooLarge
from ondoki_adapters.web.auth import services

T = TypeVar("T")

_encoder = msgspec.json.Encoder()


class UnsupportedMediaType(OndokiError):
    """The body's content type is not one this endpoint reads."""

    code = "unsupported_media_type"


class UpgradeRequired(OndokiError):
    """A plain HTTP request to a WebSocket endpoint."""

    code = "upgrade_required"


class MalformedBody(OndokiError):
    """The body could not be parsed at all (bad JSON)."""

    code = "malformed_body"


def json_response(
    content: Any, status_code: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    return Response(_encoder.encode(content), status_code, headers, media_type="application/json")


def error_response(
    status_code: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> Response:
    return json_response({"error": {"code": code, "message": message}}, status_code, headers)


def declared_length(request: Request) -> int | None:
    """The body's Content-Length, when it is a plain decimal number (else None: the body's
    own size is what counts then)."""
    raw = request.headers.get("content-length")
    return int(raw) if raw is not None and raw.isascii() and raw.isdigit() else None


async def read_body(request: Request, *, limit: int, setting: str | None = None) -> bytes:
    """The whole body, refused with `TooLarge` as soon as it passes `limit` bytes (the
    message names `setting`, the variable that sets the limit, when given), and with
    `BodyTimeout` when nothing arrives for ONDOKI_BODY_IDLE_TIMEOUT_SECONDS (the server
    itself waits for a body forever)."""
    where = "" if setting is None else f" ({setting})"
    declared = declared_length(request)
    if declared is not None and declared > limit:
        raise TooLarge(f"request body is {declared} bytes; the limit is {limit}{where}")
    idle = services(request).settings.body_idle_timeout_seconds
    chunks: list[bytes] = []
    size = 0
    stream = aiter(request.stream())
    while True:
        try:
            with anyio.fail_after(idle):
                chunk = await anext(stream)
        except StopAsyncIteration:
            break
        except TimeoutError:
            raise BodyTimeout(f"no part of the request body arrived for {idle:g} s") from None
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"request body is over the limit of {limit} bytes{where}")
        chunks.append(chunk)
    return b"".join(chunks)


def require_json(request: Request) -> None:
    """Refuse a body declared as anything but JSON (a missing content type is accepted)."""
    content_type = request.headers.get("content-type")
    if content_type is None:
        return
    media = content_type.split(";", 1)[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise UnsupportedMediaType(f"expected an application/json body, got {media or 'nothing'}")


async def read_json(request: Request, into: type[T], *, limit: int) -> T:
    """The body decoded into `into`: 413 over `limit`, 415 if not JSON, 400 if malformed,
    422 if it does not fit the schema (the message names the field)."""
    body = await read_json_body(request, limit=limit)
    decoded: T = decode_json(body, into)
    return decoded


async def read_json_body(request: Request, *, limit: int, setting: str | None = None) -> bytes:
    """The raw body of a JSON request, not empty: 413 over `limit`, 415 if not JSON, 400 if
    empty. Decode it with `decode_json` or `decode_with`."""
    require_json(request)
    body = await read_body(request, limit=limit, setting=setting)
    if not body.strip():
        raise MalformedBody("request body is empty; expected JSON")
    return body


def decode_json(body: bytes, into: Any = Any) -> Any:
    """`body` decoded into `into` (see `decode_with`)."""
    return decode_with(lambda raw: msgspec.json.decode(raw, type=into), body)


def decode_with(decode: Callable[[bytes], T], body: bytes) -> T:
    """`decode(body)`; `MalformedBody` (400) for anything that is not JSON, `InvalidInput`
    (422) for JSON that does not fit the schema (the message names the field, e.g.
    `$[3].user_id` for an item of a list). Every request body goes through here, so no byte
    sequence reaches the 500 handler."""
    try:
        return decode(body)
    except msgspec.ValidationError as exc:
        raise InvalidInput(f"invalid request body: {exc}") from None
    except msgspec.DecodeError as exc:
        raise MalformedBody(f"request body is not valid JSON: {exc}") from None
    except UnicodeDecodeError as exc:
        # msgspec checks UTF-8 only inside strings, and reports it outside its own tree.
        raise MalformedBody(
            f"request body is not valid JSON: invalid UTF-8 at byte {exc.start}"
        ) from None
    except RecursionError:
        raise MalformedBody(
            "request body is not valid JSON for this service: nested too deeply"
        ) from None


def check_json(body: bytes) -> None:
    """Raise `MalformedBody` unless `body` is one valid JSON document."""
    decode_json(body)


def query_limit(request: Request, default: int, maximum: int) -> int:
    """The `?limit=` query parameter, `default` when absent; `InvalidInput` unless it is an
    integer from 1 to `maximum`."""
    raw = request.query_params.get("limit", str(default))
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= maximum:
        raise InvalidInput(f"limit must be an integer from 1 to {maximum}, got {raw[:32]!r}")
    return int(raw)
