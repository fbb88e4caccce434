"""`run_worker`: the dramatiq media worker (concurrency 1) for `DramatiqJobQueue`'s jobs.

How a message becomes an attempt (all in a dramatiq worker thread):

1. Take the job's lease, `{ns}:job-lease:{id}` (SET NX PX `lease_ttl`). When another live
   worker holds it (a duplicate delivery), send the message again, delayed until the lease
   would have expired, and ack this one; drop it instead when the job is finished.
2. `ondoki.domain.jobs.begin` decides, under WATCH/MULTI on the record and the lease, whether the
   attempt runs; it counts the attempt in the record before the handler starts.
3. Run the handler; its reports and the final state are written only while this worker
   still holds the lease (the lease key is WATCHed and compared in every transaction).
4. A retryable failure is sent again with dramatiq's delay (`.DQ` queue) after the kind's
   backoff; as dramatiq moves it back to the queue the record goes `failed` -> `queued`.

Crash recovery is dramatiq's: each worker's unacked messages sit in its ack set, and any
broker whose heartbeat is older than `heartbeat_timeout` has them pushed back to the queue
by the next maintenance pass (the janitor below runs one every `requeue_interval`). The
redelivered message finds the record `running`, and `begin` counts the dead attempt.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import anyio
import anyio.abc
import anyio.lowlevel
import dramatiq
import msgspec
import redis
import redis.exceptions as rex
from anyio.streams.memory import MemoryObjectReceiveStream

from ondoki.domain import jobs
from ondoki.domain.jobs import Context, JobKinds
from ondoki.errors import JobQueueError
from ondoki.models import FINAL_STATES, JobRecord, WorkerInfo, WorkerJob
from ondoki.ports.jobs import JobNotify, JobObserver
from ondoki_adapters.redis.connection import describe, milliseconds, wait_out
from ondoki_adapters.redis.dramatiq_surface import REFUSED_FOR_NOW, JobBroker, JobWorker
from ondoki_adapters.redis.jobs import (
    ACTOR,
    BACKOFF_OPTION,
    JobKeys,
    blocking,
    blocking_client,
    build_broker,
    decode_record,
    job_message,
    stage_write,
)
from ondoki_adapters.redis.registry import remove_worker, write_worker

log = logging.getLogger("ondoki.worker")

#: What `_patiently` waits out: connection trouble, and a Redis refusing writes for now.
_WAITED_OUT: tuple[type[rex.RedisError], ...] = (
    *REFUSED_FOR_NOW,
    rex.ConnectionError,
    rex.TimeoutError,
)

T = TypeVar("T")

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""


@dataclass(frozen=True)
class WorkerOptions:
    """Timings of a worker, in seconds. The defaults suit production; tests shrink them."""

    #: A worker whose broker heartbeat is older than this is dead to dramatiq: its
    #: unacked messages go back to their queue. Also bounds how soon a crash is noticed.
    heartbeat_timeout: float = 60.0
    #: How often this worker heartbeats and runs the broker's maintenance on its queues.
    requeue_interval: float = 5.0
    #: A job's lease lives this long without renewal (renewed every third of it).
    lease_ttl: float = 30.0
    #: How long idle consumers and worker threads sleep between polls (dramatiq's
    #: `worker_timeout`): the longest a queued job waits for an idle worker.
    poll_interval: float = 0.05
    #: How often `checkpoint` asks Redis whether the job was cancelled.
    cancel_check_interval: float = 1.0
    #: How long a stopping worker waits for running handlers that do not checkpoint.
    stop_timeout: float = 600.0
    #: Socket timeout of the worker's Redis connections.
    redis_timeout: float = 10.0
    #: A job still running this long past its time limit has reached no checkpoint since:
    #: it is made dead and the worker process exits to be replaced (see `run_worker`).
    time_limit_grace: float = 300.0

    def __post_init__(self) -> None:
        values = (
            self.heartbeat_timeout,
            self.requeue_interval,
            self.lease_ttl,
            self.poll_interval,
            self.cancel_check_interval,
            self.stop_timeout,
            self.redis_timeout,
            self.time_limit_grace,
        )
        if not all(value > 0 for value in values):
            raise ValueError("worker timings must be positive")
        if self.requeue_interval * 2 > self.heartbeat_timeout:
            # Heartbeats ride on the janitor: two must fit in a timeout, or a live worker
            # could be taken for dead.
            raise ValueError("requeue_interval must be at most half of heartbeat_timeout")


class _LeaseLost(Exception):
    """This worker's lease on a job expired and may be someone else's now."""


class _Runner:
    """The blocking side: what dramatiq's threads call. Records go to `emit`."""

    def __init__(
        self,
        *,
        client: redis.Redis,
        keys: JobKeys,
        kinds: JobKinds,
        queues: tuple[str, ...],
        options: WorkerOptions,
        record_ttl: float,
        emit: Callable[[JobRecord], None],
        time_limits: Mapping[str, float],
        observer: JobObserver | None,
    ) -> None:
        self.client = client
        self.time_limits = time_limits
        self.observer = observer
        self.keys = keys
        self.kinds = kinds
        self.queues = queues
        self.options = options
        self.emit = emit
        self.broker: JobBroker | None = None
        self.stopping = threading.Event()
        self._ttl_ms = milliseconds(record_ttl)
        self._lease_ms = milliseconds(options.lease_ttl)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._lock = threading.Lock()
        self._held: dict[str, str] = {}
        self._lost: set[str] = set()
        # What this worker runs now, for its registry entry (see `heartbeat`).
        self._current: dict[str, WorkerJob] = {}
        self.started_at = time.time()
        # Held across a registry write, so that no heartbeat lands after `deregister`.
        self._registry = threading.Lock()
        self._deregistered = False

    # -- Redis, from threads ------------------------------------------------------------------

    def _patiently(self, what: str, function: Callable[[], T]) -> T:
        """Run `function`, waiting out connection trouble, and a Redis that refuses writes
        for now (full under `noeviction`, or a read-only replica during a failover), until
        the worker stops: giving up would leave the job's message acked and its record
        stuck."""
        try:
            return wait_out(
                function, what=what, errors=_WAITED_OUT, stopping=self.stopping, log=log
            )
        except rex.RedisError as exc:
            raise JobQueueError(f"{what}: {describe(exc)}") from None

    def _update(
        self,
        job_id: str,
        change: Callable[[JobRecord], JobRecord | None],
        *,
        lease: str | None,
    ) -> JobRecord | None:
        """Apply `change` atomically; with `lease`, only while this worker holds it."""
        key, lease_key = self.keys.job(job_id), self.keys.lease(job_id)

        def attempt() -> JobRecord | None:
            with self.client.pipeline(transaction=True) as pipe:
                while True:
                    try:
                        watched = [key, lease_key] if lease is not None else [key]
                        pipe.watch(*watched)  # type: ignore[no-untyped-call]  # unannotated in redis-py
                        if lease is not None and pipe.get(lease_key) != lease.encode():
                            raise _LeaseLost(job_id)
                        raw = pipe.hget(key, "record")
                        before = None if raw is None else decode_record(raw)
                        after = None if before is None else change(before)
                        if after is None:
                            return None
                        pipe.multi()
                        stage_write(pipe, self.keys, before, after, self._ttl_ms)
                        pipe.execute()
                        return after
                    except rex.WatchError:
                        continue

        return self._patiently(f"job {job_id} update", attempt)

    def _load(self, job_id: str) -> JobRecord | None:
        raw = self._patiently("job get", lambda: self.client.hget(self.keys.job(job_id), "record"))
        return None if raw is None else decode_record(raw)

    def _send(
        self,
        job_id: str,
        queue: str,
        token: int,
        *,
        delay: float | None = None,
        backoff: bool = False,
    ) -> None:
        assert self.broker is not None
        broker, message = self.broker, job_message(job_id, queue, token, backoff=backoff)
        delay_ms = None if delay is None else milliseconds(delay)
        self._patiently("job enqueue", lambda: broker.enqueue(message, delay=delay_ms))

    # -- the actor ----------------------------------------------------------------------------

    def process(self, job_id: str, token: int | None = None) -> None:
        """dramatiq's actor: see the module docstring. Never raises: dramatiq would only log
        it and ack the message anyway (ondoki runs no Retries middleware)."""
        try:
            self._process(job_id, token)
        except Exception:
            log.exception("job %s: the worker could not process it", job_id)

    def _process(self, job_id: str, token: int | None) -> None:
        lease, lease_key = uuid.uuid4().hex, self.keys.lease(job_id)
        taken = self._patiently(
            "job lease", lambda: self.client.set(lease_key, lease, nx=True, px=self._lease_ms)
        )
        if not taken:
            self._postpone(job_id, token)
            return
        with self._lock:
            self._held[job_id] = lease
        try:
            self._attempt(job_id, token, lease)
        except _LeaseLost:
            log.warning("job %s: lease lost mid-attempt; another worker may have it", job_id)
        finally:
            with self._lock:
                self._held.pop(job_id, None)
                self._lost.discard(job_id)
            self._patiently(
                "job lease release", lambda: self._release(keys=[lease_key], args=[lease])
            )

    def _postpone(self, job_id: str, token: int | None) -> None:
        # Another worker holds the lease: this delivery is a duplicate (dramatiq requeued the
        # message of a worker it took for dead). Dropping it would lose the job should that
        # worker die after all, so look again once its lease would have run out.
        record = self._load(job_id)
        if record is None or record.state in FINAL_STATES:
            return
        pttl = self._patiently("job lease ttl", lambda: self.client.pttl(self.keys.lease(job_id)))
        wait = max(int(pttl), 0) / 1000 + self.options.poll_interval
        log.info("job %s: running elsewhere; looking again in %.1fs", job_id, wait)
        self._send(job_id, record.queue, record.attempts if token is None else token, delay=wait)

    def _attempt(self, job_id: str, token: int | None, lease: str) -> None:
        starts: list[jobs.Start] = []

        def start(record: JobRecord) -> JobRecord | None:
            starts[:] = [jobs.begin(record, token=token, now=time.time())]
            return starts[0].record

        record = self._update(job_id, start, lease=lease)
        if record is None:
            return
        self.emit(record)
        if not starts[0].run:
            return
        raw = self._patiently(
            "job payload", lambda: self.client.hget(self.keys.job(job_id), "payload")
        )
        payload = jobs.decode_payload(raw or b"{}")
        backoff = jobs.Backoff()
        if record.kind in self.kinds:
            kind = self.kinds.get(record.kind)
            backoff = kind.retry_backoff
            ctx = Context(
                record,
                store_report=partial(self._report, job_id, lease),
                is_cancelled=partial(self._is_cancelled, job_id),
                stopping=self.stopping,
                check_interval=self.options.cancel_check_interval,
                time_limit=jobs.time_limit(self.time_limits, kind.name),
                observer=self.observer,
            )
            with self._lock:
                self._current[job_id] = WorkerJob(
                    job_id=job_id, kind=kind.name, attempt=record.attempts, started_at=time.time()
                )
            try:
                outcome = jobs.execute(kind, ctx, payload, self.observer)
            finally:
                with self._lock:
                    self._current.pop(job_id, None)
        else:
            outcome = jobs.Outcome("dead", error=f"unknown job kind {record.kind!r}")

        settled: list[jobs.Settled] = []

        def finish(current: JobRecord) -> JobRecord | None:
            settled[:] = [jobs.settle(current, outcome, backoff, time.time())]
            return settled[0].record

        done = self._update(job_id, finish, lease=lease)
        if done is None:
            return
        self.emit(done)
        retry_in = settled[0].retry_in
        if retry_in is not None:
            self._send(job_id, done.queue, done.attempts, delay=retry_in, backoff=True)
        elif outcome.how == "interrupted":
            self._send(job_id, done.queue, done.attempts)

    def _report(self, job_id: str, lease: str, stage: str, progress: float) -> bool:
        try:
            changed = self._update(
                job_id,
                lambda record: jobs.reported(record, stage, progress, time.time()),
                lease=lease,
            )
        except _LeaseLost:
            with self._lock:
                self._lost.add(job_id)
            return False
        except JobQueueError as exc:
            log.warning("job %s: progress not stored: %s", job_id, exc)
            return True
        if changed is None:
            return False
        with self._lock:
            current = self._current.get(job_id)
            if current is not None:
                current.stage, current.progress = stage, progress
        self.emit(changed)
        return True

    def _is_cancelled(self, job_id: str) -> bool:
        with self._lock:
            if job_id in self._lost:
                return True
        try:
            record = self._load(job_id)
        except JobQueueError:
            return False
        return record is None or record.state != "running"

    def backoff_over(self, job_id: str, token: int) -> None:
        """dramatiq is moving a retry from its delay queue back to the queue: `queued`."""
        try:
            changed = self._update(
                job_id,
                lambda record: jobs.requeued(record, token=token, now=time.time()),
                lease=None,
            )
        except JobQueueError as exc:
            log.warning("job %s: could not mark it queued after its backoff: %s", job_id, exc)
            return
        if changed is not None:
            self.emit(changed)

    # -- housekeeping, called from the event loop through worker threads --------------------

    def renew_leases(self) -> None:
        with self._lock:
            held = list(self._held.items())
        for job_id, lease in held:
            try:
                renew = partial(
                    self._renew, keys=[self.keys.lease(job_id)], args=[lease, self._lease_ms]
                )
                kept = blocking("job lease renewal", renew)
            except JobQueueError as exc:
                log.warning("job %s: %s", job_id, exc)
                continue
            if not kept:
                log.warning("job %s: lease expired before it could be renewed", job_id)
                with self._lock:
                    self._lost.add(job_id)

    def overdue(self) -> tuple[bool, list[JobRecord]]:
        """Make dead the jobs running past their time limit and grace (they reached no
        checkpoint since the limit): whether there were any, and the records to notify
        before the process exits."""
        now, grace = time.time(), self.options.time_limit_grace
        with self._lock:
            late = [
                (job, self._held.get(job.job_id), limit)
                for job in self._current.values()
                if (limit := jobs.time_limit(self.time_limits, job.kind)) is not None
                and now - job.started_at > limit + grace
            ]
        given_up: list[JobRecord] = []
        for job, lease, limit in late:
            error = (
                f"the job ran past its time limit of {limit:g}s and reached no checkpoint "
                f"within {grace:g}s more: its worker was replaced"
            )
            log.critical(
                "job %s (%s): %s",
                job.job_id,
                job.kind,
                error,
                extra={
                    "job_id": job.job_id,
                    "kind": job.kind,
                    "attempt": job.attempt,
                    "stage": job.stage,
                    "duration_ms": round((now - job.started_at) * 1000),
                },
            )
            try:
                record = self._update(job.job_id, partial(_abandon, error=error), lease=lease)
            except (_LeaseLost, JobQueueError) as exc:
                log.warning("job %s: could not mark it dead: %s", job.job_id, exc)
                continue
            if record is not None:
                given_up.append(record)
        return bool(late), given_up

    def heartbeat(self) -> None:
        """Register (or refresh) this worker in `{ns}:workers`, with what it runs now."""
        assert self.broker is not None
        worker_id, now = self.broker.broker_id, time.time()
        registry = self.keys.registry
        with self._lock:
            running = [msgspec.structs.replace(job) for job in self._current.values()]
        info = WorkerInfo(
            id=worker_id,
            host=socket.gethostname(),
            pid=os.getpid(),
            queues=list(self.queues),
            started_at=self.started_at,
            heartbeat_at=now,
            jobs=running,
        )

        with self._registry:
            if self._deregistered:
                return
            try:
                blocking("worker heartbeat", partial(write_worker, self.client, registry, info))
            except JobQueueError as exc:
                log.warning("%s", exc)
                return
        if self.observer is not None:
            self.observer.worker_heartbeat(now)

    def deregister(self) -> None:
        """Leave the registry: a worker that stopped cleanly is not listed as dead."""
        assert self.broker is not None
        worker_id = self.broker.broker_id

        with self._registry:
            self._deregistered = True
            try:
                remove = partial(remove_worker, self.client, self.keys.registry, worker_id)
                blocking("worker deregistration", remove)
            except JobQueueError as exc:
                log.warning("%s", exc)

    def maintain(self) -> None:
        """Heartbeat, and requeue the messages of dead workers, on every queue we serve."""
        assert self.broker is not None
        broker = self.broker
        for queue in self.queues:
            try:
                blocking("broker maintenance", partial(broker.maintain, queue))
            except JobQueueError as exc:
                log.warning("%s", exc)
                return


def _abandon(record: JobRecord, *, error: str) -> JobRecord | None:
    return jobs.abandoned(record, error, time.time())


class _BackoffOver(dramatiq.Middleware):
    """Tells the runner when dramatiq re-enqueues a retry whose delay has passed.

    Before, not after, the message is back on its queue: once it is there, a worker may
    start the next attempt, and `queued` must not come after `running`.
    """

    def __init__(self, runner: _Runner) -> None:
        self.runner = runner

    def before_enqueue(
        self, broker: dramatiq.Broker, message: dramatiq.Message[Any], delay: int | None
    ) -> None:
        if delay is None and message.actor_name == ACTOR and message.options.get(BACKOFF_OPTION):
            job_id, token = message.args
            self.runner.backoff_over(str(job_id), int(token))


async def run_worker(
    url: str | None = None,
    *,
    client: redis.Redis | None = None,
    kinds: JobKinds,
    queues: tuple[str, ...] = jobs.DEFAULT_QUEUES,
    notify: JobNotify | None = None,
    namespace: str = "ondoki",
    threads: int = 1,
    options: WorkerOptions | None = None,
    record_ttl: float = jobs.DEFAULT_RECORD_TTL,
    handle_signals: bool = False,
    time_limits: Mapping[str, float] | None = None,
    observer: JobObserver | None = None,
    replace: Callable[[], None] | None = None,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Run a dramatiq worker for `queues` until cancelled (or, with `handle_signals`, until
    SIGTERM or SIGINT), then stop gracefully.

    `url` is the broker (CELERY_BROKER_URL, DB 1); or pass a blocking redis-py `client`
    (the caller closes it). `threads` handlers run at once (1: video work is heavy) and each
    queue's consumer prefetches no more than `threads` messages, so idle workers get the
    rest. `notify` is called on this event loop for every record change the worker makes.
    Call it from an anyio-run main, e.g. `await tasks.start(partial(run_worker, url, ...))`.

    Stopping: handlers are interrupted at their next checkpoint (their jobs are queued again,
    the attempt given back) and awaited for up to `options.stop_timeout`; messages fetched
    but not started go back to their queues.

    Time limits (`time_limits`: kind -> seconds, `*` for the others): a job past its limit
    fails (dead) at its next checkpoint. One still running `options.time_limit_grace` later
    reached none, and a thread cannot be stopped from outside: its record is made dead and
    `replace` is called, by default exiting the process with status `EXIT_REPLACED` so that
    its supervisor starts a fresh worker. `observer` is told about attempts and stages.
    """
    options = options or WorkerOptions()
    if threads < 1:
        raise ValueError("threads must be at least 1")
    owned = client is None
    if client is None:
        if url is None:
            raise ValueError("run_worker needs a url or a client")
        client = blocking_client(url, timeout=options.redis_timeout)
    keys = JobKeys(namespace)
    token = anyio.lowlevel.current_token()
    # Bounded: a loop that falls behind on notifications slows handlers down (they wait in
    # `report`) instead of growing memory.
    send, receive = anyio.create_memory_object_stream[JobRecord](256)

    def emit(record: JobRecord) -> None:
        try:
            anyio.from_thread.run(send.send, record, token=token)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.RunFinishedError):
            log.debug("job %s: notification dropped, the worker is stopping", record.id)

    runner = _Runner(
        client=client,
        keys=keys,
        kinds=kinds,
        queues=queues,
        options=options,
        record_ttl=record_ttl,
        emit=emit,
        time_limits=dict(time_limits or {}),
        observer=observer,
    )
    broker = build_broker(
        client,
        keys,
        heartbeat_timeout=options.heartbeat_timeout,
        middleware=[_BackoffOver(runner)],
        capacity=threads,
        fetch_wait=options.poll_interval,
    )
    runner.broker = broker
    broker.stopping = runner.stopping  # acks stop waiting out a refusing Redis at shutdown
    dramatiq.Actor(
        runner.process,
        broker=broker,
        actor_name=ACTOR,
        queue_name=queues[0],
        priority=0,
        options={},
    )
    for queue in queues:
        broker.declare_queue(queue)
    # dramatiq's default holds 2 messages per thread and queue; the broker's `capacity`
    # keeps the whole worker to what it can run at once. One more than that per queue lets
    # a consumer ask for the next message while the current one is being acked: the gate
    # then hands it over as soon as the slot is free (see JobBroker.do_fetch).
    worker = JobWorker(
        broker,
        queues=set(queues),
        worker_timeout_ms=milliseconds(options.poll_interval),
        worker_threads=threads,
        queue_prefetch=threads + 1,
    )

    async with anyio.create_task_group() as root:
        root.start_soon(_housekeeping, runner, receive, notify, options, replace or _exit)
        try:
            await anyio.to_thread.run_sync(worker.start)
            log.info("worker %s consuming %s", broker.broker_id, ", ".join(queues))
            task_status.started()
            await _until_stopped(handle_signals)
        finally:
            with anyio.CancelScope(shield=True):
                runner.stopping.set()
                try:
                    await anyio.to_thread.run_sync(worker.stop, milliseconds(options.stop_timeout))
                    await anyio.to_thread.run_sync(runner.deregister)
                finally:
                    # Ends the housekeeping once the last notification is out.
                    send.close()
            if owned:
                client.close()
    log.info("worker %s stopped", broker.broker_id)


async def _until_stopped(handle_signals: bool) -> None:
    if not handle_signals:
        await anyio.sleep_forever()
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("received %s, stopping", signal.Signals(signum).name)
            return


async def _housekeeping(
    runner: _Runner,
    receive: MemoryObjectReceiveStream[JobRecord],
    notify: JobNotify | None,
    options: WorkerOptions,
    replace: Callable[[], None],
) -> None:
    # Shielded: it must outlive the cancellation of `run_worker` until the dramatiq worker
    # has stopped, heartbeating and renewing leases while handlers finish.
    with anyio.CancelScope(shield=True):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(_every, options.requeue_interval, runner.maintain)
            tasks.start_soon(_every, options.requeue_interval, runner.heartbeat)
            tasks.start_soon(_every, options.lease_ttl / 3, runner.renew_leases)
            tasks.start_soon(_watchdog, runner, notify, options.requeue_interval, replace)
            async with receive:
                async for record in receive:
                    await jobs.tell(notify, record)
            tasks.cancel_scope.cancel()


#: The exit status of a worker that replaces itself (a job stuck past its time limit).
EXIT_REPLACED = 3


def _exit() -> None:
    sys.stderr.flush()
    os._exit(EXIT_REPLACED)


async def _watchdog(
    runner: _Runner, notify: JobNotify | None, interval: float, replace: Callable[[], None]
) -> None:
    while True:
        await anyio.sleep(interval)
        try:
            late, given_up = await anyio.to_thread.run_sync(runner.overdue)
        except Exception:
            log.exception("worker watchdog failed")
            continue
        for record in given_up:
            await jobs.tell(notify, record)
        if late:
            log.critical("a job is stuck past its time limit: this worker replaces itself")
            replace()
            return


async def _every(interval: float, function: Callable[[], None]) -> None:
    while True:
        try:
            await anyio.to_thread.run_sync(function)
        except Exception:
            log.exception("worker housekeeping failed")
        await anyio.sleep(interval)
