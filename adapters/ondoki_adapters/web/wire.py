"""The HTTP API's request and response bodies, as msgspec Structs: handlers encode these, and
the OpenAPI document (`openapi.py`) is generated from the same types."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec

from ondoki.domain.job_view import JobView
from ondoki.domain.media import Guide, GuideStep
from ondoki.models import Position

#: Every time in a response: RFC 3339 in UTC, e.g. `2026-11-28T09:00:00Z`.
Timestamp = Annotated[datetime, msgspec.Meta(extra_json_schema={"format": "date-time"})]


def _documented(**schema: object) -> msgspec.Meta:
    # Schema only: the domain checks these values and names the rule when one fails.
    return msgspec.Meta(extra_json_schema=schema)


UserId = Annotated[str, _documented(pattern="^[A-Za-z0-9._:@-]{1,128}$")]
EventType = Annotated[str, _documented(pattern="^[A-Za-z0-9._-]{1,64}$")]
Seconds = Annotated[float, _documented(exclusiveMinimum=0)]


class ErrorDetail(msgspec.Struct):
    #: A short machine-readable code, e.g. `not_found`, `invalid_input`.
    code: str
    #: What was wrong, for a person.
    message: str


class ErrorBody(msgspec.Struct):
    """Every error response: `{"error": {"code", "message"}}`."""

    error: ErrorDetail


class Health(msgspec.Struct):
    status: str


class PartStatus(msgspec.Struct, omit_defaults=True):
    ok: bool
    error: str | None = None


class Readiness(msgspec.Struct):
    #: `ready`, or `unavailable` when any part failed to answer.
    status: str
    parts: dict[str, PartStatus]


class CreateSession(msgspec.Struct, forbid_unknown_fields=True):
    user_id: UserId
    data: dict[str, Any] | None = None
    ttl_seconds: Seconds | None = None


class SessionCreated(msgspec.Struct):
    #: The bearer token for every session-authenticated request and `/ws`.
    token: str
    expires_at: Timestamp


class SessionView(msgspec.Struct):
    user_id: str
    data: dict[str, Any]
    created_at: Timestamp
    expires_at: Timestamp


class StateWritten(msgspec.Struct):
    key: str
    expires_at: Timestamp


class PublishNotification(msgspec.Struct, forbid_unknown_fields=True):
    """One event for `user_id`, or one event broadcast to `user_ids` (give one of the two)."""

    type: EventType
    user_id: UserId | None = None
    user_ids: list[UserId] | None = None
    data: Any = None
    #: Publishing the same `id` again (per user) stores and delivers nothing.
    id: Annotated[str, _documented(minLength=1, maxLength=128)] | None = None


class Positions(msgspec.Struct):
    """Where each event of a batch or broadcast was stored, in order."""

    positions: list[Position]


class ImportAccepted(msgspec.Struct):
    job_id: str


class DeadJobs(msgspec.Struct):
    jobs: list[JobView]


class JobPage(msgspec.Struct):
    """One page of the caller's jobs, newest first; `next_cursor` asks for the next page."""

    jobs: list[JobView]
    next_cursor: str | None


class GuideStepView(GuideStep, kw_only=True):
    #: Where the step's picture is: a signed URL that works without credentials.
    frame_url: str


class GuideView(Guide, kw_only=True):
    steps: list[GuideStepView]  # type: ignore[assignment]
