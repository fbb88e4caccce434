"""The JobQueue port: durable background jobs with records, progress and dead letters."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from ondoki.models import InstanceInfo, JobPage, JobRecord, JobState, JobStats, WorkerInfo


class JobContext(Protocol):
    """What a running job can tell the queue. Handlers run in a worker thread, so it is sync."""

    job_id: str
    owner: str | None
    attempt: int

    def report(self, stage: str, progress: float) -> None:
        """Record the job's stage and progress (0..1) and notify its owner."""
        ...

    def checkpoint(self) -> None:
        """Raise `JobCancelled` when the job was cancelled; call it between units of work."""
        ...


#: A job's work: gets its context and payload, returns a JSON-able result. It raises
#: `RetryableJobError` for failures worth another attempt; any other exception is final.
JobHandler = Callable[[JobContext, dict[str, Any]], Any]


class JobObserver(Protocol):
    """Told how attempts and their stages went, for metrics. Called from handler threads;
    it must be quick and must not raise."""

    def attempt_started(self, kind: str, attempt: int) -> None:
        """An attempt (1 for the first) of a job of `kind` starts its handler."""
        ...

    def attempt_ended(self, kind: str, outcome: str, attempt: int, seconds: float) -> None:
        """The handler returned after `seconds`. `outcome`: `succeeded`, `retry` (another
        attempt follows), `dead`, `timed_out` (dead: past its time limit), `cancelled` or
        `interrupted` (the worker is stopping; the attempt is given back)."""
        ...

    def stage_ended(self, kind: str, stage: str, seconds: float) -> None:
        """A stage the handler reported lasted `seconds` (until the next stage or the end)."""
        ...

    def worker_heartbeat(self, at: float) -> None:
        """The worker stored its heartbeat at UNIX time `at` (health checks read it)."""
        ...


#: Told about every change of a job's record (state, stage, progress), on the event loop,
#: after the change is stored; the service publishes `job.*` notifications with it. A
#: failing callback is logged and never fails the job.
JobNotify = Callable[[JobRecord], Awaitable[None]]


class JobQueue(Protocol):
    """Enqueue jobs by kind, onto named queues, and follow them through their records.

    Contract, for every adapter:

    - States: `queued` -> `running` -> `succeeded`; a retryable failure goes to `failed` and
      back to `queued` with a backoff; attempts exhausted or a final error go to `dead`;
      `cancel` goes to `cancelled` (a queued job never starts, a running one stops at its
      next checkpoint).
    - Delivery is at least once: a worker that dies mid-job leads to another attempt, and a
      job that kills its worker every time ends `dead` after `max_attempts`.
    - A job is never run by two workers at the same time.
    - The same `idempotency_key` (scoped per owner and kind) returns the existing job's id
      instead of a second job, also when two enqueues race; the key is remembered for the
      record TTL.
    - Records of finished jobs expire after the adapter's record TTL.
    - Backend failures raise `JobQueueError`; unknown ids raise `NotFound`; an operation the
      job's state does not allow raises `JobStateError`.
    """

    async def enqueue(
        self,
        kind: str,
        payload: dict[str, Any],
        *,
        queue: str | None = None,
        owner: str | None = None,
        idempotency_key: str | None = None,
    ) -> str:
        """Queue a job of a registered `kind` on `queue` (default: the kind's queue); return
        its id. An unknown kind or queue, or a payload that is not JSON-able, raises
        `InvalidInput`."""
        ...

    async def get(self, job_id: str) -> JobRecord:
        """The job's record; `NotFound` when unknown or expired."""
        ...

    async def cancel(self, job_id: str) -> JobRecord:
        """Cancel a queued or running job; a finished one is returned unchanged.

        The record says `cancelled` at once; a running handler stops at its next checkpoint
        and whatever it returns after that is discarded."""
        ...

    async def list_jobs(
        self,
        owner: str,
        *,
        state: JobState | None = None,
        kind: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> JobPage:
        """`owner`'s jobs, newest first (by creation), optionally only those in `state` or
        of `kind`; at most `limit` per page, `cursor` being a previous page's `next_cursor`.
        Jobs of other owners (and jobs without one) never appear; expired records do not
        either. A cursor that is not one of this adapter's raises `InvalidInput`."""
        ...

    async def dead(self, *, limit: int = 100) -> list[JobRecord]:
        """Dead jobs, newest first."""
        ...

    async def retry(self, job_id: str) -> JobRecord:
        """Queue a dead job again with a fresh set of attempts; `JobStateError` if not dead."""
        ...

    async def failures(self, *, limit: int = 50) -> list[JobRecord]:
        """The most recent failed attempts, newest first, as their records were when they
        failed (`failed`, to be retried, or `dead`); at most the last 100 are kept."""
        ...

    async def workers(self) -> list[WorkerInfo]:
        """The workers that registered themselves, live ones first, each with what it is
        running; a worker silent past the heartbeat timeout is listed with `alive` False
        for a day, one that stopped cleanly is not listed."""
        ...

    async def announce(self, instance: InstanceInfo) -> None:
        """Record (or refresh) an API instance in the deployment's registry, which lives
        beside the workers' in the job backend: every instance and worker reaches it."""
        ...

    async def withdraw(self, instance_id: str) -> None:
        """Remove an API instance that stops cleanly from the registry."""
        ...

    async def instances(self) -> list[InstanceInfo]:
        """The API instances that announced themselves, live ones first; one silent past
        the heartbeat timeout (it stopped without withdrawing) is listed with `alive`
        False for an hour."""
        ...

    async def stats(self) -> JobStats:
        """Queue depths, the oldest waiting job's age, and counts per state (for metrics)."""
        ...

    async def ping(self) -> None:
        """Return when the backend answers; raise `JobQueueError` otherwise."""
        ...

    async def aclose(self) -> None:
        """Stop accepting work and release connections."""
        ...
