"""A job as its owner sees it, over HTTP and in notifications: the guide named by URL, the
progress rounded, no stage once it succeeded, and times in the one format every response
uses (RFC 3339, UTC)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec

from ondoki.domain.imports import public
from ondoki.models import JobRecord, JobState

#: Progress is reported in whole percent: finer steps are noise to a progress bar.
PROGRESS_DIGITS = 2


def for_owner(record: JobRecord) -> JobRecord:
    """`record` as its owner is shown it (see the module's docstring), still a JobRecord."""
    record = public(record)
    return msgspec.structs.replace(
        record,
        progress=round(record.progress, PROGRESS_DIGITS),
        stage=None if record.state == "succeeded" else record.stage,
    )


class JobView(msgspec.Struct, kw_only=True):
    """A job on the wire."""

    id: str
    kind: str
    queue: str
    owner: str | None
    state: JobState
    #: What a running job is doing now (e.g. `transcribing`); null when it has finished.
    stage: str | None
    #: 0 to 1, in steps of 0.01.
    progress: float
    attempts: int
    max_attempts: int
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    result: Any
    error: str | None
    idempotency_key: str | None


def _time(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC)


def job_view(record: JobRecord) -> JobView:
    """The wire form of `record` for its owner."""
    shown = for_owner(record)
    return JobView(
        id=shown.id,
        kind=shown.kind,
        queue=shown.queue,
        owner=shown.owner,
        state=shown.state,
        stage=shown.stage,
        progress=shown.progress,
        attempts=shown.attempts,
        max_attempts=shown.max_attempts,
        created_at=datetime.fromtimestamp(shown.created_at, UTC),
        updated_at=datetime.fromtimestamp(shown.updated_at, UTC),
        started_at=_time(shown.started_at),
        finished_at=_time(shown.finished_at),
        result=shown.result,
        error=shown.error,
        idempotency_key=shown.idempotency_key,
    )
