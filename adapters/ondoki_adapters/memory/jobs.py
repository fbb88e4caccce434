"""`MemoryJobQueue`: the JobQueue port in one process, run inside the service's task group."""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ondoki.domain import jobs
from ondoki.domain.jobs import Context, JobKinds
from ondoki.errors import JobQueueError, NotFound
from ondoki.models import (
    FINAL_STATES,
    InstanceInfo,
    JobPage,
    JobRecord,
    JobState,
    JobStats,
    QueueStats,
    WorkerInfo,
    WorkerJob,
)
from ondoki.ports.jobs import JobNotify

log = logging.getLogger("ondoki.domain.jobs.memory")


@dataclass
class _Entry:
    record: JobRecord
    payload: dict[str, Any]
    #: time.monotonic() deadline; entries are kept in this order (see `_store`).
    expires_at: float


class MemoryJobQueue:
    """The JobQueue port in memory: the embedded default, with the Redis adapter's semantics.

    Jobs run inside the service: the composition root does `await tasks.start(jobs.run)`;
    `concurrency` handlers (default 1) run at a time, each in a worker thread. Enqueues made
    before `run` starts wait for it. Records expire `record_ttl` seconds after their last
    change, and at most `max_records` are kept (the oldest finished ones go first), so memory
    stays bounded. Nothing survives the process: a restart loses queued jobs.
    """

    def __init__(
        self,
        kinds: JobKinds,
        *,
        notify: JobNotify | None = None,
        concurrency: int = 1,
        queues: tuple[str, ...] = jobs.DEFAULT_QUEUES,
        record_ttl: float = jobs.DEFAULT_RECORD_TTL,
        max_records: int = 100_000,
        time_limits: Mapping[str, float] | None = None,
    ) -> None:
        if concurrency < 1 or max_records < 1 or not record_ttl > 0:
            raise ValueError("concurrency, max_records and record_ttl must be positive")
        self.kinds = kinds
        self.notify = notify
        self.concurrency = concurrency
        self.queues = queues
        self.record_ttl = record_ttl
        self.max_records = max_records
        #: Kind -> seconds (`*` for the others): `checkpoint` fails a job past it. There
        #: is no grace watchdog here: a handler that never checkpoints runs on.
        self.time_limits = dict(time_limits or {})
        # Last-written first: with one TTL for all, this is also the order of expiry.
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        # (owner, kind, key) -> (job id, monotonic deadline), in order of expiry as well.
        self._idempotency: OrderedDict[tuple[str, str, str], tuple[str, float]] = OrderedDict()
        # Job ids with the attempt count their message was sent at (see `jobs.begin`).
        self._send: MemoryObjectSendStream[tuple[str, int]]
        self._receive: MemoryObjectReceiveStream[tuple[str, int]]
        # Unbounded like a Redis list: enqueue never waits for the runners.
        self._send, self._receive = anyio.create_memory_object_stream[tuple[str, int]](math.inf)
        self._running: set[str] = set()
        # The most recent failed attempts, newest last.
        self._failures: deque[JobRecord] = deque(maxlen=jobs.FAILURES_KEPT)
        self._started_at: float | None = None
        # In one process there is one instance: the last announcement is the registry.
        self._instance: InstanceInfo | None = None
        self._tasks: anyio.abc.TaskGroup | None = None
        # Set from the event loop, read by handler threads at their checkpoints.
        self._stopping = threading.Event()
        self._closed = False

    # -- storage ----------------------------------------------------------------------------

    def _sweep(self) -> None:
        now = time.monotonic()
        while self._entries:
            job_id, entry = next(iter(self._entries.items()))
            if entry.expires_at > now:
                break
            del self._entries[job_id]
        while self._idempotency:
            key, (_, expires_at) = next(iter(self._idempotency.items()))
            if expires_at > now:
                break
            del self._idempotency[key]

    def _entry(self, job_id: str) -> _Entry | None:
        self._sweep()
        return self._entries.get(job_id)

    def _store(self, record: JobRecord, payload: dict[str, Any] | None = None) -> None:
        entry = self._entries.pop(record.id, None)
        if jobs.is_failure(entry.record if entry else None, record):
            self._failures.append(record)
        if payload is None:
            payload = entry.payload if entry is not None else {}
        self._entries[record.id] = _Entry(record, payload, time.monotonic() + self.record_ttl)
        if len(self._entries) > self.max_records:
            self._evict()

    def _evict(self) -> None:
        # Live jobs are never evicted: only finished records, oldest first.
        for job_id in [j for j, e in self._entries.items() if e.record.state in FINAL_STATES]:
            if len(self._entries) <= self.max_records:
                return
            del self._entries[job_id]

    def _push(self, job_id: str, token: int) -> None:
        try:
            self._send.send_nowait((job_id, token))
        except anyio.ClosedResourceError:
            log.debug("job %s not queued: the job queue is closed", job_id)

    async def _change(self, record: JobRecord, payload: dict[str, Any] | None = None) -> None:
        self._store(record, payload)
        await jobs.tell(self.notify, record)

    # -- the port ---------------------------------------------------------------------------

    async def enqueue(
        self,
        kind: str,
        payload: dict[str, Any],
        *,
        queue: str | None = None,
        owner: str | None = None,
        idempotency_key: str | None = None,
    ) -> str:
        if self._closed:
            raise JobQueueError("the job queue is closed")
        registered = self.kinds.get(kind)
        queue = jobs.check_queue(queue or registered.queue, self.queues)
        # A private copy, as Redis would store it: later changes by the caller do not leak in.
        stored = jobs.decode_payload(jobs.encode_payload(payload))
        self._sweep()
        scope = (owner or "", kind, idempotency_key) if idempotency_key is not None else None
        if scope is not None and scope in self._idempotency:
            job_id = self._idempotency[scope][0]
            if job_id in self._entries:
                return job_id
        job_id = uuid.uuid4().hex
        if scope is not None:
            self._idempotency.pop(scope, None)
            self._idempotency[scope] = (job_id, time.monotonic() + self.record_ttl)
        record = jobs.new_record(
            job_id,
            registered,
            queue=queue,
            owner=owner,
            idempotency_key=idempotency_key,
            now=time.time(),
        )
        # No await between the check above and the store that `_change` makes first:
        # concurrent enqueues are atomic. Told before the runners can see the job, so
        # `queued` comes before `running`.
        await self._change(record, stored)
        self._push(job_id, 0)
        return job_id

    async def get(self, job_id: str) -> JobRecord:
        entry = self._entry(job_id)
        if entry is None:
            raise NotFound(f"no job {job_id!r}", job_id=job_id)
        return entry.record

    async def cancel(self, job_id: str) -> JobRecord:
        record = await self.get(job_id)
        changed = jobs.cancelled(record, time.time())
        if changed is None:
            return record
        await self._change(changed)
        return changed

    async def list_jobs(
        self,
        owner: str,
        *,
        state: JobState | None = None,
        kind: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> JobPage:
        jobs.check_page(limit, state)
        after = None if cursor is None else jobs.decode_cursor(cursor)
        self._sweep()
        # A scan: the memory adapter holds at most `max_records`, and listing is rare.
        found = sorted(
            (
                e.record
                for e in self._entries.values()
                if e.record.owner == owner
                and jobs.matches(e.record, state, kind)
                and (after is None or jobs.sort_key(e.record) < after)
            ),
            key=jobs.sort_key,
            reverse=True,
        )
        page = found[:limit]
        more = len(found) > limit
        return JobPage(page, jobs.encode_cursor(page[-1]) if more else None)

    async def dead(self, *, limit: int = 100) -> list[JobRecord]:
        self._sweep()
        found = [e.record for e in self._entries.values() if e.record.state == "dead"]
        found.sort(key=lambda r: r.finished_at or 0.0, reverse=True)
        return found[: max(0, limit)]

    async def failures(self, *, limit: int = 50) -> list[JobRecord]:
        return list(reversed(self._failures))[: max(0, limit)]

    async def workers(self) -> list[WorkerInfo]:
        # The embedded runner is the one worker, alive for as long as `run` runs.
        if self._started_at is None:
            return []
        running = [self._entries[j].record for j in self._running if j in self._entries]
        return [
            WorkerInfo(
                id=f"embedded-{socket.gethostname()}-{os.getpid()}",
                host=socket.gethostname(),
                pid=os.getpid(),
                queues=list(self.queues),
                started_at=self._started_at,
                heartbeat_at=time.time(),
                jobs=[
                    WorkerJob(
                        job_id=r.id,
                        kind=r.kind,
                        attempt=r.attempts,
                        started_at=r.started_at or r.updated_at,
                        stage=r.stage,
                        progress=r.progress,
                    )
                    for r in running
                ],
            )
        ]

    async def announce(self, instance: InstanceInfo) -> None:
        self._instance = instance

    async def withdraw(self, instance_id: str) -> None:
        if self._instance is not None and self._instance.id == instance_id:
            self._instance = None

    async def instances(self) -> list[InstanceInfo]:
        return [] if self._instance is None else [self._instance]

    async def stats(self) -> JobStats:
        self._sweep()
        now = time.time()
        states: dict[str, int] = dict.fromkeys(("queued", "running", "failed", "dead"), 0)
        waiting: dict[str, list[float]] = {queue: [] for queue in self.queues}
        delayed = dict.fromkeys(self.queues, 0)
        for entry in self._entries.values():
            record = entry.record
            states[record.state] = states.get(record.state, 0) + 1
            if record.state == "queued":
                waiting.setdefault(record.queue, []).append(record.updated_at)
            elif record.state == "failed":
                delayed[record.queue] = delayed.get(record.queue, 0) + 1
        queues = {
            queue: QueueStats(
                waiting=len(times),
                delayed=delayed.get(queue, 0),
                oldest_age=now - min(times) if times else None,
            )
            for queue, times in waiting.items()
        }
        return JobStats(queues=queues, states=states)

    async def retry(self, job_id: str) -> JobRecord:
        record = jobs.replayed(await self.get(job_id), time.time())
        await self._change(record)
        self._push(job_id, 0)
        return record

    async def ping(self) -> None:
        if self._closed:
            raise JobQueueError("the job queue is closed")

    async def aclose(self) -> None:
        self._closed = True
        self._stopping.set()
        self._send.close()
        self._receive.close()
        self._entries.clear()
        self._idempotency.clear()

    # -- the runner -------------------------------------------------------------------------

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Run jobs until cancelled; on the way out, running handlers are interrupted at
        their next checkpoint (their jobs go back to `queued`, the attempt not counted)."""
        if self._tasks is not None:
            raise RuntimeError("MemoryJobQueue.run is already running")
        self._stopping.clear()
        async with anyio.create_task_group() as tasks:
            self._tasks = tasks
            self._started_at = time.time()
            for _ in range(self.concurrency):
                tasks.start_soon(self._runner)
            task_status.started()
            try:
                await anyio.sleep_forever()
            finally:
                self._stopping.set()
                self._tasks = None
                self._started_at = None

    async def _runner(self) -> None:
        async for job_id, token in self._receive:
            await self._attempt(job_id, token)

    async def _attempt(self, job_id: str, token: int) -> None:
        if job_id in self._running:
            return  # a duplicate: the runner that has the job sees it through
        entry = self._entry(job_id)
        start = jobs.begin(entry.record if entry else None, token=token, now=time.time())
        if start.record is None or entry is None:
            return
        if not start.run:
            await self._change(start.record)
            return
        record = start.record
        self._store(record)
        if record.kind not in self.kinds:
            unknown = jobs.Outcome("dead", error=f"unknown job kind {record.kind!r}")
            final = self._settle(job_id, unknown, jobs.Backoff())
            if final is not None:
                await jobs.tell(self.notify, final)
            return
        kind = self.kinds.get(record.kind)
        self._running.add(job_id)
        # Should the service stop before the handler ran, the attempt is given back.
        outcome = jobs.Outcome("interrupted")
        try:
            await jobs.tell(self.notify, record)
            ctx = Context(
                record,
                store_report=lambda stage, progress: anyio.from_thread.run(
                    self._report, job_id, stage, progress
                ),
                is_cancelled=lambda: self._is_cancelled(job_id),
                stopping=self._stopping,
                time_limit=jobs.time_limit(self.time_limits, kind.name),
            )
            # Not abandoned on cancellation: a stopping service waits for the handler, which
            # sees `_stopping` at its next checkpoint.
            outcome = await anyio.to_thread.run_sync(jobs.execute, kind, ctx, entry.payload)
        finally:
            self._running.discard(job_id)
            final = self._settle(job_id, outcome, kind.retry_backoff)
        if final is not None:
            await jobs.tell(self.notify, final)

    def _settle(
        self, job_id: str, outcome: jobs.Outcome, backoff: jobs.Backoff
    ) -> JobRecord | None:
        """Store how an attempt ended and schedule what comes next; the record to notify."""
        entry = self._entry(job_id)
        if entry is None:
            return None
        settled = jobs.settle(entry.record, outcome, backoff, time.time())
        if settled.record is None:
            return None
        self._store(settled.record)
        if outcome.how == "interrupted":
            self._push(job_id, settled.record.attempts)
        if settled.retry_in is not None and self._tasks is not None:
            self._tasks.start_soon(
                self._requeue_later, job_id, settled.record.attempts, settled.retry_in
            )
        return settled.record

    def _is_cancelled(self, job_id: str) -> bool:
        # Read from a handler thread without a trip to the loop: a dict lookup and an
        # attribute read are atomic under the GIL, and a stale answer only delays the stop
        # to the next checkpoint.
        entry = self._entries.get(job_id)
        return entry is None or entry.record.state != "running"

    async def _report(self, job_id: str, stage: str, progress: float) -> bool:
        entry = self._entry(job_id)
        if entry is None:
            return False
        changed = jobs.reported(entry.record, stage, progress, time.time())
        if changed is None:
            return False
        await self._change(changed)
        return True

    async def _requeue_later(self, job_id: str, token: int, delay: float) -> None:
        await anyio.sleep(delay)
        entry = self._entry(job_id)
        if entry is None:
            return
        changed = jobs.requeued(entry.record, token=token, now=time.time())
        if changed is None:
            return
        await self._change(changed)
        self._push(job_id, token)
