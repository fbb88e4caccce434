"""Jobs in the core: the kind registry, the job state machine every JobQueue adapter shares,
the context handed to handlers, and `demo.checksum`, a small real job kind.

The adapters only store records and move messages; every decision about a job (may it start,
what does a failure lead to, how long to back off, what may be cancelled or replayed) is a
pure function here, so the memory and the Redis adapter cannot drift apart.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, get_args

import msgspec

from ondoki.errors import (
    InvalidInput,
    JobCancelled,
    JobInterrupted,
    JobStateError,
    JobTimedOut,
    RetryableJobError,
)
from ondoki.models import FINAL_STATES, JobRecord, JobState
from ondoki.ports.jobs import JobContext, JobHandler, JobNotify, JobObserver

log = logging.getLogger("ondoki.domain.jobs")

#: The queues ondoki's workers consume (docs/operations.md, "Jobs").
DEFAULT_QUEUES = ("celery", "media")
#: How long records (and idempotency keys) of jobs are kept after their last change.
DEFAULT_RECORD_TTL = 7 * 86_400.0
# Error messages are for people and dashboards, not a place to dump a megabyte of repr().
_MAX_ERROR_CHARS = 2_000


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff between attempts: `first` seconds after the first failure, times
    `factor` after each further one, at most `maximum`, spread by +-`jitter` (a fraction)
    so that jobs failing together do not come back together."""

    first: float = 10.0
    factor: float = 2.0
    maximum: float = 600.0
    jitter: float = 0.1

    def __post_init__(self) -> None:
        if not (self.first > 0 and self.factor >= 1 and self.maximum >= self.first):
            raise ValueError("backoff needs first > 0, factor >= 1 and maximum >= first")
        if not 0 <= self.jitter < 1:
            raise ValueError("backoff jitter must be in [0, 1)")

    def delay(self, failures: int) -> float:
        """Seconds to wait after the `failures`-th failed attempt (1 for the first)."""
        base = min(self.maximum, self.first * self.factor ** max(0, failures - 1))
        return base * random.uniform(1 - self.jitter, 1 + self.jitter)


@dataclass(frozen=True)
class JobKind:
    """A registered kind of job: its handler and how it is queued and retried."""

    name: str
    handler: JobHandler
    queue: str
    max_attempts: int
    retry_backoff: Backoff


class JobKinds:
    """The registry of job kinds, shared by the API (to validate enqueues) and the workers
    (to run them). Build one at start-up, in the composition root."""

    def __init__(self) -> None:
        self._kinds: dict[str, JobKind] = {}

    def register(
        self,
        kind: str,
        handler: JobHandler,
        *,
        queue: str = "media",
        max_attempts: int = 3,
        retry_backoff: Backoff | None = None,
    ) -> JobKind:
        """Register `handler` for `kind`. Registering a kind twice is a programming error."""
        if not kind or kind in self._kinds:
            raise ValueError(f"job kind {kind!r} is empty or already registered")
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        registered = JobKind(kind, handler, queue, max_attempts, retry_backoff or Backoff())
        self._kinds[kind] = registered
        return registered

    def get(self, kind: str) -> JobKind:
        """The registered kind; `InvalidInput` when there is none of that name."""
        try:
            return self._kinds[kind]
        except KeyError:
            raise InvalidInput(f"unknown job kind {kind!r}") from None

    def __contains__(self, kind: object) -> bool:
        return kind in self._kinds

    def __iter__(self) -> Iterator[JobKind]:
        return iter(self._kinds.values())


# -- validation -----------------------------------------------------------------------------


def encode_payload(payload: dict[str, Any]) -> bytes:
    """The payload as JSON; `InvalidInput` when it is not a JSON-able mapping."""
    if not isinstance(payload, dict):
        raise InvalidInput("a job payload must be a JSON object")
    try:
        return msgspec.json.encode(payload)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidInput(f"the job payload is not JSON-able: {exc}") from None


def decode_payload(data: bytes | str) -> dict[str, Any]:
    payload: dict[str, Any] = msgspec.json.decode(data, type=dict[str, Any])
    return payload


def check_queue(queue: str, queues: tuple[str, ...]) -> str:
    if queue not in queues:
        raise InvalidInput(f"unknown queue {queue!r} (known: {', '.join(queues)})")
    return queue


#: How many recent failed attempts the queues remember (see `JobQueue.failures`).
FAILURES_KEPT = 100


def is_failure(before: JobRecord | None, after: JobRecord) -> bool:
    """Whether storing `after` over `before` records a failed attempt."""
    return after.state in ("failed", "dead") and (before is None or before.state != after.state)


#: The most jobs one page of `JobQueue.list_jobs` may ask for.
MAX_PAGE = 1000


def check_page(limit: int, state: str | None) -> None:
    """`InvalidInput` for a page size or a state filter that `list_jobs` cannot serve."""
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidInput(f"limit must be from 1 to {MAX_PAGE}, got {limit}")
    if state is not None and state not in get_args(JobState):
        raise InvalidInput(f"unknown job state {state!r} (known: {', '.join(get_args(JobState))})")


def sort_key(record: JobRecord) -> tuple[float, str]:
    """The order of listings: newest first means descending by this."""
    return (record.created_at, record.id)


def encode_cursor(record: JobRecord) -> str:
    """An opaque cursor that continues a listing after `record`."""
    text = f"{record.created_at!r}/{record.id}"
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    """The sort key a cursor continues after; `InvalidInput` for what is not a cursor."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, _, job_id = text.partition("/")
        created_at = float(created)
    except (ValueError, UnicodeDecodeError):
        raise InvalidInput("cursor is not a cursor from a previous page") from None
    if not job_id or not math.isfinite(created_at):
        raise InvalidInput("cursor is not a cursor from a previous page")
    return created_at, job_id


def matches(record: JobRecord, state: str | None, kind: str | None) -> bool:
    """Whether a listing filtered on `state` and `kind` includes `record`."""
    return (state is None or record.state == state) and (kind is None or record.kind == kind)


def describe_error(exc: BaseException) -> str:
    """What a record says about a failure: type and message, never a traceback."""
    text = str(exc)
    described = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return described[:_MAX_ERROR_CHARS]


# -- the state machine ----------------------------------------------------------------------
#
# Every function takes the stored record and returns the record to store, or None when the
# record must stay as it is. Adapters apply them atomically (a lock-free loop in memory,
# WATCH/MULTI in Redis) and notify after storing.


def new_record(
    job_id: str,
    kind: JobKind,
    *,
    queue: str,
    owner: str | None,
    idempotency_key: str | None,
    now: float,
) -> JobRecord:
    return JobRecord(
        id=job_id,
        kind=kind.name,
        queue=queue,
        owner=owner,
        max_attempts=kind.max_attempts,
        created_at=now,
        updated_at=now,
        idempotency_key=idempotency_key,
    )


class Start(NamedTuple):
    """What a worker that got a job's message (and holds the job's lease) does with it."""

    #: Run the handler now.
    run: bool
    #: The record to store first, or None to leave it as it is.
    record: JobRecord | None


def begin(record: JobRecord | None, *, token: int | None, now: float) -> Start:
    """Decide whether a delivered message starts an attempt; the caller holds the lease.

    Attempts are counted here, when an attempt starts, so an attempt whose worker was killed
    is counted too: a message that finds the record `running` (and the lease free) is the
    redelivery of an attempt that died with its worker. When all attempts are used up the
    job goes `dead` instead of running again, so a job that kills its worker cannot loop.

    `token` is the number of attempts the record had when the message was sent; a message
    for a queued or failed job whose token does not match is a stale duplicate (the job was
    already rescheduled by another message) and is dropped. None skips that check.
    """
    if record is None or record.state in FINAL_STATES:
        return Start(False, None)
    if record.state == "running":
        if record.attempts >= record.max_attempts:
            error = f"the worker died during attempt {record.attempts} of {record.max_attempts}" + (
                f"; last error: {record.error}" if record.error else ""
            )
            return Start(False, _dead(record, error[:_MAX_ERROR_CHARS], now))
    elif token is not None and token != record.attempts:
        return Start(False, None)
    elif record.attempts >= record.max_attempts:
        return Start(False, _dead(record, record.error or "no attempts left", now))
    started = msgspec.structs.replace(
        record,
        state="running",
        attempts=record.attempts + 1,
        stage=None,
        progress=0.0,
        started_at=now,
        updated_at=now,
    )
    if record.state == "running":
        started.error = f"the worker died during attempt {record.attempts}"
    return Start(True, started)


def reported(record: JobRecord, stage: str, progress: float, now: float) -> JobRecord | None:
    """A running job's new stage and progress; None once it is no longer running."""
    if record.state != "running":
        return None
    return msgspec.structs.replace(record, stage=stage, progress=progress, updated_at=now)


class Outcome(NamedTuple):
    """How one run of a handler ended."""

    how: Literal["succeeded", "retry", "dead", "cancelled", "interrupted"]
    result: Any = None
    error: str | None = None


def execute(
    kind: JobKind,
    ctx: Context,
    payload: dict[str, Any],
    observer: JobObserver | None = None,
) -> Outcome:
    """Run the handler in this (worker) thread and classify how it ended. Its log events
    carry `job_id`, `kind`, `attempt` (and `duration_ms` at the end) as fields."""
    fields = {"job_id": ctx.job_id, "kind": kind.name, "attempt": ctx.attempt}
    log.info("job %s (%s) attempt %d started", ctx.job_id, kind.name, ctx.attempt, extra=fields)
    if observer is not None:
        observer.attempt_started(kind.name, ctx.attempt)
    began = time.monotonic()
    outcome = _run(kind, ctx, payload, fields)
    seconds = time.monotonic() - began
    ctx.end_stage()
    label: str = outcome.how
    if label == "retry" and ctx.attempt >= kind.max_attempts:
        label = "dead"  # no attempt follows: `settle` makes it dead
    if outcome.how == "dead" and ctx.timed_out:
        label = "timed_out"
    log.info(
        "job %s (%s) attempt %d ended: %s in %.1fs",
        ctx.job_id,
        kind.name,
        ctx.attempt,
        label,
        seconds,
        extra={**fields, "outcome": label, "duration_ms": round(seconds * 1000)},
    )
    if observer is not None:
        observer.attempt_ended(kind.name, label, ctx.attempt, seconds)
    return outcome


def _run(kind: JobKind, ctx: Context, payload: dict[str, Any], fields: dict[str, Any]) -> Outcome:
    try:
        result = kind.handler(ctx, payload)
    except JobTimedOut as exc:
        return Outcome("dead", error=describe_error(exc))
    except JobInterrupted:
        log.info(
            "job %s (%s) interrupted: the worker is stopping", ctx.job_id, kind.name, extra=fields
        )
        return Outcome("interrupted")
    except JobCancelled:
        log.info("job %s (%s) cancelled", ctx.job_id, kind.name, extra=fields)
        return Outcome("cancelled")
    except RetryableJobError as exc:
        log.info("job %s (%s) failed, may retry: %s", ctx.job_id, kind.name, exc, extra=fields)
        return Outcome("retry", error=describe_error(exc))
    except Exception as exc:
        # The record keeps one line; the traceback goes to the log for whoever debugs it.
        log.warning(
            "job %s (%s) failed for good", ctx.job_id, kind.name, exc_info=True, extra=fields
        )
        return Outcome("dead", error=describe_error(exc))
    try:
        msgspec.json.encode(result)
    except (TypeError, ValueError, OverflowError) as exc:
        return Outcome("dead", error=f"the job's result is not JSON-able: {exc}")
    return Outcome("succeeded", result=result)


class Settled(NamedTuple):
    """The record after an attempt, and the backoff before the next one (if any)."""

    record: JobRecord | None
    retry_in: float | None


def settle(record: JobRecord, outcome: Outcome, backoff: Backoff, now: float) -> Settled:
    """Store how an attempt ended. A job cancelled meanwhile stays cancelled."""
    if record.state != "running":
        return Settled(None, None)
    if outcome.how == "succeeded":
        done = msgspec.structs.replace(
            record,
            state="succeeded",
            result=outcome.result,
            error=None,
            progress=1.0,
            updated_at=now,
            finished_at=now,
        )
        return Settled(done, None)
    if outcome.how == "cancelled":
        return Settled(_final(record, "cancelled", now), None)
    if outcome.how == "interrupted":
        # The worker is stopping: the attempt was cut short by the operator, not by the
        # job, so it is given back.
        back = msgspec.structs.replace(
            record,
            state="queued",
            attempts=max(0, record.attempts - 1),
            stage=None,
            progress=0.0,
            updated_at=now,
        )
        return Settled(back, None)
    error = outcome.error or "failed"
    if outcome.how == "retry" and record.attempts < record.max_attempts:
        failed = msgspec.structs.replace(record, state="failed", error=error, updated_at=now)
        return Settled(failed, backoff.delay(record.attempts))
    if outcome.how == "retry":
        error = f"{error} (gave up after {record.attempts} attempts)"[:_MAX_ERROR_CHARS]
    return Settled(_dead(record, error, now), None)


def abandoned(record: JobRecord, error: str, now: float) -> JobRecord | None:
    """A running job whose worker gives up on it for good (it is about to be replaced):
    `dead`, with `error`; None once it is no longer running."""
    if record.state != "running":
        return None
    return _dead(record, error[:_MAX_ERROR_CHARS], now)


def time_limit(limits: Mapping[str, float], kind: str) -> float | None:
    """The time limit of `kind` in `limits` (kind -> seconds, `*` for the others)."""
    return limits.get(kind, limits.get("*"))


def requeued(record: JobRecord, *, token: int, now: float) -> JobRecord | None:
    """A failed job whose backoff is over is queued again (if nothing else moved it)."""
    if record.state != "failed" or record.attempts != token:
        return None
    return msgspec.structs.replace(record, state="queued", updated_at=now)


def cancelled(record: JobRecord, now: float) -> JobRecord | None:
    """Cancel a job that has not finished; None (unchanged) for a finished one."""
    if record.state in FINAL_STATES:
        return None
    return _final(record, "cancelled", now)


def replayed(record: JobRecord, now: float) -> JobRecord:
    """A dead job queued again with a fresh set of attempts; `JobStateError` otherwise."""
    if record.state != "dead":
        raise JobStateError(
            f"job {record.id} is {record.state}; only dead jobs can be retried",
            job_id=record.id,
            state=record.state,
        )
    return msgspec.structs.replace(
        record,
        state="queued",
        attempts=0,
        stage=None,
        progress=0.0,
        result=None,
        error=None,
        started_at=None,
        finished_at=None,
        updated_at=now,
    )


def _final(record: JobRecord, state: Literal["cancelled"], now: float) -> JobRecord:
    return msgspec.structs.replace(record, state=state, updated_at=now, finished_at=now)


def _dead(record: JobRecord, error: str, now: float) -> JobRecord:
    return msgspec.structs.replace(
        record, state="dead", error=error, updated_at=now, finished_at=now
    )


# -- what handlers see ----------------------------------------------------------------------


class Context:
    """The `JobContext` of one attempt, for both adapters.

    `store_report(stage, progress)` stores a report and returns False when the job is no
    longer running (it was cancelled); `is_cancelled()` asks the store. Checks are spaced
    by `check_interval` seconds so that a handler may call `checkpoint` in a tight loop.
    With `time_limit` (seconds), `checkpoint` raises `JobTimedOut` once the attempt has run
    that long. Stage changes are logged (with the stage's `duration_ms`) and told to
    `observer`.
    """

    def __init__(
        self,
        record: JobRecord,
        *,
        store_report: Callable[[str, float], bool],
        is_cancelled: Callable[[], bool],
        stopping: threading.Event,
        check_interval: float = 0.0,
        time_limit: float | None = None,
        observer: JobObserver | None = None,
    ) -> None:
        self.job_id = record.id
        self.owner = record.owner
        self.attempt = record.attempts
        self.kind = record.kind
        self._store_report = store_report
        self._is_cancelled = is_cancelled
        self._stopping = stopping
        self._check_interval = check_interval
        self._last_check = -math.inf
        self._cancelled = False
        self.started = time.monotonic()
        self.time_limit = time_limit
        self.timed_out = False
        self._observer = observer
        self.stage: str | None = None
        self._stage_started = self.started

    def report(self, stage: str, progress: float) -> None:
        if not isinstance(stage, str) or not stage:
            raise InvalidInput("a job stage must be a non-empty string")
        if not 0.0 <= progress <= 1.0:  # also refuses NaN
            raise InvalidInput(f"job progress must be within 0..1, got {progress!r}")
        if stage != self.stage:
            self.end_stage()
            self.stage = stage
        if not self._cancelled and not self._store_report(stage, float(progress)):
            self._cancelled = True

    def end_stage(self) -> None:
        """Close the current stage's timing (the next report, or the attempt's end)."""
        now = time.monotonic()
        if self.stage is not None:
            seconds = now - self._stage_started
            log.info(
                "job %s (%s) stage %s took %.1fs",
                self.job_id,
                self.kind,
                self.stage,
                seconds,
                extra={
                    "job_id": self.job_id,
                    "kind": self.kind,
                    "attempt": self.attempt,
                    "stage": self.stage,
                    "duration_ms": round(seconds * 1000),
                },
            )
            if self._observer is not None:
                self._observer.stage_ended(self.kind, self.stage, seconds)
            self.stage = None
        self._stage_started = now

    def checkpoint(self) -> None:
        if self._stopping.is_set():
            raise JobInterrupted()
        if self.time_limit is not None and time.monotonic() - self.started > self.time_limit:
            self.timed_out = True
            raise JobTimedOut(
                f"the job ran past its time limit of {self.time_limit:g}s"
                + (f" (in stage {self.stage})" if self.stage else "")
            )
        if not self._cancelled:
            now = time.monotonic()
            if now - self._last_check >= self._check_interval:
                self._last_check = now
                self._cancelled = self._is_cancelled()
        if self._cancelled:
            raise JobCancelled()


async def tell(notify: JobNotify | None, record: JobRecord) -> None:
    """Call `notify`, logging instead of raising: a notification never fails a job."""
    if notify is None:
        return
    try:
        await notify(record)
    except Exception:
        log.exception("job notification callback failed for job %s", record.id)


# -- demo.checksum: a small real job ----------------------------------------------------------


def checksum(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Generate `size` deterministic bytes from `seed` and hash them in `chunk`-sized
    pieces (SHA-256 and BLAKE2b), reporting progress and honouring cancellation between
    pieces. Used by tests and demos: CPU-bound, stage by stage, like real media work."""
    size = payload.get("size", 4 * 1024 * 1024)
    chunk = payload.get("chunk", 256 * 1024)
    seed = str(payload.get("seed", "ondoki"))
    if not isinstance(size, int) or not 0 <= size <= 1 << 30:
        raise InvalidInput("size must be an integer number of bytes up to 1 GiB")
    if not isinstance(chunk, int) or not 1 <= chunk <= 16 << 20:
        raise InvalidInput("chunk must be an integer from 1 byte to 16 MiB")
    ctx.report("prepare", 0.0)
    sha, blake = hashlib.sha256(), hashlib.blake2b()
    pieces = max(1, math.ceil(size / chunk))
    done = 0
    for index in range(pieces):
        ctx.checkpoint()
        length = min(chunk, size - done)
        block = hashlib.shake_256(f"{seed}:{index}".encode()).digest(length) if length else b""
        sha.update(block)
        blake.update(block)
        done += length
        ctx.report("hash", 0.9 * (index + 1) / pieces)
    ctx.checkpoint()
    ctx.report("finalize", 0.95)
    return {
        "sha256": sha.hexdigest(),
        "blake2b": blake.hexdigest(),
        "bytes": done,
        "chunks": pieces,
    }


def register_demo_kinds(kinds: JobKinds) -> JobKinds:
    """Register `demo.checksum` (queue `celery`); returns `kinds`."""
    kinds.register("demo.checksum", checksum, queue="celery", max_attempts=3)
    return kinds
