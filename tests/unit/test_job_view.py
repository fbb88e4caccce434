"""A job as its owner sees it: rounded progress, no stage after success, RFC 3339 times."""

from __future__ import annotations

import msgspec

from ondoki.domain.job_view import for_owner, job_view
from ondoki.models import JobRecord

RUNNING = JobRecord(
    id="j1", kind="demo", queue="celery", owner="alice", state="running",
    stage="transcribing", progress=0.123456, created_at=1.0, updated_at=2.5,
)  # fmt: skip


def test_progress_is_rounded_and_the_stage_kept_while_running() -> None:
    shown = for_owner(RUNNING)
    assert shown.progress == 0.12
    assert shown.stage == "transcribing"


def test_the_stage_is_cleared_on_success() -> None:
    done = for_owner(msgspec.structs.replace(RUNNING, state="succeeded", progress=1.0))
    assert done.stage is None and done.progress == 1.0
    failed = for_owner(msgspec.structs.replace(RUNNING, state="failed"))
    assert failed.stage == "transcribing"  # where it failed is worth knowing


def test_times_are_rfc3339_in_utc() -> None:
    view = msgspec.json.decode(msgspec.json.encode(job_view(RUNNING)))
    assert view["created_at"] == "1970-01-01T00:00:01Z"
    assert view["updated_at"] == "1970-01-01T00:00:02.500000Z"
    assert view["finished_at"] is None
    assert set(view) == {f.name for f in msgspec.structs.fields(JobRecord)}
