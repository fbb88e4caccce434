"""`DramatiqJobQueue`: the JobQueue port on a dramatiq Redis broker (DB 1), and the Redis
layout it shares with the worker runner (`ondoki_adapters.redis.worker`).

Layout, all on the broker's database (CELERY_BROKER_URL, DB 1 by default):

- `{ns}:job:{id}`: a hash, `record` (the JobRecord as msgspec JSON) and `payload` (JSON);
  its TTL (the record TTL) is renewed on every change, so finished records expire.
- `{ns}:job-idem:{sha256(owner, kind, key)}`: the job id an idempotency key maps to, with the
  record TTL; written in the same Lua call as the record, so two racing enqueues make one job.
- `{ns}:jobs:owner:{owner}`: sorted set of the owner's job ids by creation time, for
  `list_jobs`; written with the record, entries created more than the record TTL ago are
  pruned on every enqueue (ids whose record expired sooner are pruned when listed).
- `{ns}:jobs:failures`: list of the records of the last 100 failed attempts, newest first.
- `{ns}:workers`, `{ns}:worker:{id}`, `{ns}:instances`, `{ns}:instance:{id}`: the registry
  of workers and API instances (see `ondoki_adapters.redis.registry`).
- `{ns}:job-lease:{id}`: the worker running the job (SET NX PX, renewed while it runs).
- `{ns}:jobs:dead`: sorted set of dead job ids by finish time; members older than the record
  TTL are pruned when read, and the key itself gets the record TTL on every write.
- `{ns}:dramatiq:*`: dramatiq's own keys: queue lists `celery`, `media`, their delay queues
  (`.DQ`), message hashes (`.msgs`), per-worker ack sets and the heartbeat sorted set. The
  queue keys carry no TTL; keep `maxmemory-policy` at `noeviction` or `volatile-*`.

A message only carries `(job_id, token)`: the record and payload are the truth, the message
is a wake-up call. `token` is the record's attempt count when the message was sent, which
lets a worker recognise stale duplicates (see `ondoki.domain.jobs.begin`).
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any, TypeVar

import anyio
import dramatiq
import msgspec
import redis
import redis.asyncio as aioredis
import redis.exceptions as rex

from ondoki.domain import jobs
from ondoki.domain.jobs import JobKinds
from ondoki.errors import ConfigError, JobQueueError, NotFound
from ondoki.models import (
    InstanceInfo,
    JobPage,
    JobRecord,
    JobState,
    JobStats,
    QueueStats,
    WorkerInfo,
)
from ondoki.ports.jobs import JobNotify
from ondoki.support.redact import redact_url
from ondoki_adapters.redis.connection import (
    call,
    client_options,
    connect,
    describe,
    milliseconds,
)
from ondoki_adapters.redis.dramatiq_surface import (
    JobBroker,
    delay_queue_key,
    enqueued_at,
    messages_key,
    queue_key,
)
from ondoki_adapters.redis.registry import (
    RegistryKeys,
    read_instances,
    read_workers,
    remove_instance,
    write_instance,
)

log = logging.getLogger("ondoki.domain.jobs.redis")

T = TypeVar("T")

#: The one dramatiq actor every job message goes to; the job's kind is in its record.
ACTOR = "ondoki.job"
#: Message option marking a retry that waits out its backoff on a delay queue.
BACKOFF_OPTION = "ondoki_backoff"

_records = msgspec.json.Encoder()

# Create the record (and claim the idempotency key) in one step: either the key is new and
# the job is created, or the existing job's id comes back and nothing is written. An owned
# job joins its owner's index, from which entries created more than the TTL ago are pruned.
# KEYS: job, [idempotency key if ARGV[5] == '1'], [owner index if ARGV[6] == '1'].
# ARGV: id, record, payload, ttl ms, has key, has owner, created_at, oldest created_at kept.
_ENQUEUE = """
local n = 2
if ARGV[5] == '1' then
    local existing = redis.call('GET', KEYS[n])
    if existing then return existing end
    redis.call('SET', KEYS[n], ARGV[1], 'PX', ARGV[4])
    n = n + 1
end
redis.call('HSET', KEYS[1], 'record', ARGV[2], 'payload', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
if ARGV[6] == '1' then
    redis.call('ZADD', KEYS[n], ARGV[7], ARGV[1])
    redis.call('ZREMRANGEBYSCORE', KEYS[n], '-inf', '(' .. ARGV[8])
    redis.call('PEXPIRE', KEYS[n], ARGV[4])
end
return false
"""


class JobKeys:
    """Key names under one namespace (see the module docstring)."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.broker_namespace = f"{namespace}:dramatiq"
        self.dead = f"{namespace}:jobs:dead"
        self.failures = f"{namespace}:jobs:failures"
        self.registry = RegistryKeys(namespace)

    def job(self, job_id: str) -> str:
        return f"{self.namespace}:job:{job_id}"

    def owned(self, owner: str) -> str:
        """The owner's index: job ids scored by creation time."""
        return f"{self.namespace}:jobs:owner:{owner}"

    def lease(self, job_id: str) -> str:
        return f"{self.namespace}:job-lease:{job_id}"

    def idempotency(self, owner: str | None, kind: str, key: str) -> str:
        # Hashed: keys are caller-chosen text of any length.
        digest = hashlib.sha256(f"{owner or ''}\0{kind}\0{key}".encode()).hexdigest()
        return f"{self.namespace}:job-idem:{digest}"


def encode_record(record: JobRecord) -> bytes:
    return _records.encode(record)


def decode_record(raw: bytes | str) -> JobRecord:
    return msgspec.json.decode(raw, type=JobRecord)


def stage_write(
    pipe: redis.client.Pipeline | aioredis.client.Pipeline,
    keys: JobKeys,
    before: JobRecord | None,
    after: JobRecord,
    ttl_ms: int,
) -> None:
    """Queue, on a MULTI pipeline, the writes that store `after` (it replaces `before`)."""
    key = keys.job(after.id)
    pipe.hset(key, "record", encode_record(after))
    pipe.pexpire(key, ttl_ms)
    if after.state == "dead":
        pipe.zadd(keys.dead, {after.id: after.finished_at or after.updated_at})
        pipe.pexpire(keys.dead, ttl_ms)
    elif before is not None and before.state == "dead":
        pipe.zrem(keys.dead, after.id)
    if jobs.is_failure(before, after):
        pipe.lpush(keys.failures, encode_record(after))
        pipe.ltrim(keys.failures, 0, jobs.FAILURES_KEPT - 1)
        pipe.pexpire(keys.failures, ttl_ms)


def build_broker(
    client: redis.Redis,
    keys: JobKeys,
    *,
    heartbeat_timeout: float = 60.0,
    middleware: Sequence[dramatiq.Middleware] = (),
    capacity: int | None = None,
    fetch_wait: float = 0.0,
) -> JobBroker:
    """A broker on `client` without dramatiq's default middleware: retries, time limits and
    results are ondoki's business (records, backoff, leases), not dramatiq's. `capacity`
    limits what a worker holds (see `JobBroker`); leave it None for enqueueing."""
    return JobBroker(
        client=client,
        namespace=keys.broker_namespace,
        heartbeat_timeout_ms=milliseconds(heartbeat_timeout),
        middleware=middleware,
        capacity=capacity,
        fetch_wait=fetch_wait,
    )


def job_message(
    job_id: str, queue: str, token: int, *, backoff: bool = False
) -> dramatiq.Message[Any]:
    options = {BACKOFF_OPTION: True} if backoff else {}
    return dramatiq.Message(
        queue_name=queue, actor_name=ACTOR, args=(job_id, token), kwargs={}, options=options
    )


def blocking_client(url: str, *, timeout: float = 10.0) -> redis.Redis:
    """A blocking client for dramatiq and the worker threads, without redis-py's own
    retries (a replayed EXEC or enqueue after a lost reply is ours to judge)."""
    try:
        return redis.Redis.from_url(
            url, **client_options(timeout=timeout, client_name="ondoki-jobs", blocking=True)
        )
    except ValueError as exc:
        raise ConfigError("CELERY_BROKER_URL", f"{exc} in {redact_url(url)}") from None


def blocking(what: str, function: Callable[[], T]) -> T:
    """Run a blocking redis-py or dramatiq call, translating its errors."""
    try:
        return function()
    except rex.RedisError as exc:
        raise JobQueueError(f"{what}: {describe(exc)}") from None


class DramatiqJobQueue:
    """The JobQueue port on Redis: records via redis.asyncio, messages via dramatiq.

    Give it the broker `url` (DB 1, as CELERY_BROKER_URL), or both an asyncio `client` (for
    records) and a blocking `sync_client` (for dramatiq, which is synchronous): the caller
    then closes them. Enqueueing writes the record without blocking the event loop and
    then hands the message to dramatiq's `broker.enqueue` in a worker thread, so dramatiq
    keeps ownership of its message format and keys. Jobs run in `run_worker` processes.

    The record holds the job's result; dramatiq's Results middleware is not used.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        client: aioredis.Redis | None = None,
        sync_client: redis.Redis | None = None,
        kinds: JobKinds,
        notify: JobNotify | None = None,
        namespace: str = "ondoki",
        queues: tuple[str, ...] = jobs.DEFAULT_QUEUES,
        record_ttl: float = jobs.DEFAULT_RECORD_TTL,
        timeout: float = 5.0,
        worker_timeout: float = 60.0,
    ) -> None:
        if (client is None) != (sync_client is None):
            raise ValueError("DramatiqJobQueue needs a url, or both client and sync_client")
        if client is None or sync_client is None:
            if url is None:
                raise ValueError("DramatiqJobQueue needs a url, or both client and sync_client")
            client = connect(url, db=None, timeout=timeout, client_name="ondoki-jobs")
            sync_client = blocking_client(url, timeout=timeout)
            self._owns_clients = True
        else:
            self._owns_clients = False
        if not record_ttl > 0:
            raise ValueError("record_ttl must be positive")
        self.client = client
        self.sync_client = sync_client
        self.timeout = timeout
        self.kinds = kinds
        self.notify = notify
        self.queues = queues
        self.keys = JobKeys(namespace)
        self.record_ttl = record_ttl
        #: A worker whose last heartbeat is older than this is listed as dead.
        self.worker_timeout = worker_timeout
        self._ttl_ms = milliseconds(record_ttl)
        self.broker = build_broker(sync_client, self.keys)
        self._enqueue_script = client.register_script(_ENQUEUE)

    async def _run(
        self, what: str, operation: Callable[[], Awaitable[T]], *, idempotent: bool = True
    ) -> T:
        return await call(
            operation, error=JobQueueError, what=what, idempotent=idempotent, deadline=self.timeout
        )

    async def _send(self, message: dramatiq.Message[Any], *, delay_ms: int | None = None) -> None:
        def send() -> None:
            blocking("job enqueue", lambda: self.broker.enqueue(message, delay=delay_ms))

        await anyio.to_thread.run_sync(send)

    async def _load(self, job_id: str) -> JobRecord:
        raw = await self._run("job get", lambda: self.client.hget(self.keys.job(job_id), "record"))
        if raw is None:
            raise NotFound(f"no job {job_id!r}", job_id=job_id)
        return decode_record(raw)

    async def _update(
        self,
        job_id: str,
        change: Callable[[JobRecord], JobRecord | None],
        *,
        what: str,
        idempotent: bool = True,
    ) -> tuple[JobRecord, JobRecord | None]:
        """Apply `change` to the stored record atomically (WATCH/MULTI, retried on races)."""
        key = self.keys.job(job_id)

        async def attempt() -> tuple[JobRecord, JobRecord | None]:
            async with self.client.pipeline(transaction=True) as pipe:
                while True:
                    try:
                        await pipe.watch(key)
                        raw = await pipe.hget(key, "record")
                        if raw is None:
                            raise NotFound(f"no job {job_id!r}", job_id=job_id)
                        before = decode_record(raw)
                        after = change(before)
                        if after is None:
                            return before, None
                        pipe.multi()  # type: ignore[no-untyped-call]  # unannotated in redis-py
                        stage_write(pipe, self.keys, before, after, self._ttl_ms)
                        await pipe.execute()
                        return before, after
                    except rex.WatchError:
                        continue

        return await self._run(what, attempt, idempotent=idempotent)

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
        registered = self.kinds.get(kind)
        queue = jobs.check_queue(queue or registered.queue, self.queues)
        body = jobs.encode_payload(payload)
        job_id = uuid.uuid4().hex
        record = jobs.new_record(
            job_id,
            registered,
            queue=queue,
            owner=owner,
            idempotency_key=idempotency_key,
            now=time.time(),
        )
        keys = [self.keys.job(job_id)]
        if idempotency_key is not None:
            keys.append(self.keys.idempotency(owner, kind, idempotency_key))
        if owner is not None:
            keys.append(self.keys.owned(owner))
        args: list[str | bytes | int] = [
            job_id,
            encode_record(record),
            body,
            self._ttl_ms,
            int(idempotency_key is not None),
            int(owner is not None),
            repr(record.created_at),
            repr(record.created_at - self.record_ttl),
        ]
        existing = await self._run(
            "job enqueue",
            lambda: self._enqueue_script(keys=keys, args=args),
            idempotent=False,
        )
        if existing is not None:
            return _text(existing)
        # Told before the message exists, so that `queued` reaches the owner before anything
        # a worker reports. Should the send fail, the id was never handed out: a stray
        # `queued` about it is harmless.
        await jobs.tell(self.notify, record)
        try:
            await self._send(job_message(job_id, queue, 0))
        except BaseException:
            # Without its message the job would sit in `queued` forever: take it back.
            with anyio.CancelScope(shield=True):
                await self._forget(job_id, owner, keys[: 1 + (idempotency_key is not None)])
            raise
        return job_id

    async def _forget(self, job_id: str, owner: str | None, keys: list[str]) -> None:
        async def forget() -> None:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.delete(*keys)
                if owner is not None:
                    pipe.zrem(self.keys.owned(owner), job_id)
                await pipe.execute()

        try:
            await self._run("job enqueue (undo)", forget)
        except JobQueueError as exc:
            log.warning("could not remove the record of a job that was not queued: %s", exc)

    async def get(self, job_id: str) -> JobRecord:
        return await self._load(job_id)

    async def cancel(self, job_id: str) -> JobRecord:
        before, after = await self._update(
            job_id, lambda record: jobs.cancelled(record, time.time()), what="job cancel"
        )
        if after is None:
            return before
        await jobs.tell(self.notify, after)
        return after

    async def failures(self, *, limit: int = 50) -> list[JobRecord]:
        if limit <= 0:
            return []
        raws = await self._run(
            "job failures", lambda: self.client.lrange(self.keys.failures, 0, limit - 1)
        )
        return [decode_record(raw) for raw in raws]

    async def workers(self) -> list[WorkerInfo]:
        return await self._run(
            "job workers",
            lambda: read_workers(self.client, self.keys.registry, alive_within=self.worker_timeout),
        )

    async def announce(self, instance: InstanceInfo) -> None:
        await self._run(
            "instance announce", lambda: write_instance(self.client, self.keys.registry, instance)
        )

    async def withdraw(self, instance_id: str) -> None:
        await self._run(
            "instance withdraw",
            lambda: remove_instance(self.client, self.keys.registry, instance_id),
        )

    async def instances(self) -> list[InstanceInfo]:
        return await self._run(
            "instances",
            lambda: read_instances(
                self.client, self.keys.registry, alive_within=self.worker_timeout
            ),
        )

    async def stats(self) -> JobStats:
        prefix = self.keys.broker_namespace

        async def read() -> list[Any]:
            async with self.client.pipeline(transaction=False) as pipe:
                for queue in self.queues:
                    pipe.llen(queue_key(prefix, queue))
                    pipe.llen(delay_queue_key(prefix, queue))
                    pipe.lindex(queue_key(prefix, queue), 0)
                pipe.zcard(self.keys.dead)
                return list(await pipe.execute())

        replies = await self._run("job stats", read)
        now = time.time()
        queues: dict[str, QueueStats] = {}
        for index, queue in enumerate(self.queues):
            waiting, delayed, head = replies[index * 3 : index * 3 + 3]
            queues[queue] = QueueStats(
                waiting=int(waiting),
                delayed=int(delayed),
                oldest_age=None if head is None else await self._age(queue, _text(head), now),
            )
        states = {
            "queued": sum(q.waiting for q in queues.values()),
            "failed": sum(q.delayed for q in queues.values()),
            "dead": int(replies[-1]),
        }
        return JobStats(queues=queues, states=states)

    async def _age(self, queue: str, message_id: str, now: float) -> float | None:
        key = messages_key(self.keys.broker_namespace, queue)
        raw: Any = await self._run("job stats", lambda: self.client.hget(key, message_id))
        if raw is None:
            return None  # taken by a worker meanwhile
        sent = enqueued_at(bytes(raw))
        return None if sent is None else max(0.0, now - sent)

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
        last = None if cursor is None else jobs.decode_cursor(cursor)
        index = self.keys.owned(owner)
        found: list[JobRecord] = []
        batch = max(limit + 1, 50)
        # Keyset pagination over the owner's index, (created_at, id) descending as Redis
        # orders a reversed sorted set; filters are applied to the records read.
        while len(found) <= limit:
            rows = await self._run("job list", partial(self._scan, index, last, batch))
            fresh = [(float(score), _text(member)) for member, score in rows]
            fresh = [key for key in fresh if last is None or key < last]
            if not fresh:
                if len(rows) < batch:
                    break
                batch *= 2  # a page's worth of ties on one timestamp: look further
                continue
            last = fresh[-1]
            found.extend(
                record
                for record in await self._records([job_id for _, job_id in fresh], index)
                if jobs.matches(record, state, kind)
            )
            if len(rows) < batch:
                break
            # Filters that match few jobs: read more per round trip as the scan goes on.
            batch = min(batch * 2, 2000)
        page = found[:limit]
        return JobPage(page, jobs.encode_cursor(page[-1]) if len(found) > limit else None)

    async def _scan(
        self, index: str, last: tuple[float, str] | None, batch: int
    ) -> list[tuple[bytes, float]]:
        top: float | str = "+inf" if last is None else last[0]
        rows: list[Any] = await self.client.zrevrangebyscore(
            index, top, "-inf", start=0, num=batch, withscores=True
        )
        return [(bytes(member), float(score)) for member, score in rows]

    async def _records(self, ids: list[str], index: str) -> list[JobRecord]:
        """The records of `ids` in order; ids whose record expired leave the index."""

        async def read() -> list[Any]:
            async with self.client.pipeline(transaction=False) as pipe:
                for job_id in ids:
                    pipe.hget(self.keys.job(job_id), "record")
                values: list[Any] = await pipe.execute()
                return values

        raws = await self._run("job list", read)
        gone = [job_id for job_id, raw in zip(ids, raws, strict=True) if raw is None]
        if gone:
            await self._run("job list", lambda: self.client.zrem(index, *gone))
        return [decode_record(raw) for raw in raws if raw is not None]

    async def dead(self, *, limit: int = 100) -> list[JobRecord]:
        if limit <= 0:
            return []
        horizon = time.time() - self.record_ttl

        async def read() -> list[Any]:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.zremrangebyscore(self.keys.dead, "-inf", horizon)
                pipe.zrevrange(self.keys.dead, 0, limit - 1)
                _, ids = await pipe.execute()
            if not ids:
                return []
            async with self.client.pipeline(transaction=False) as pipe:
                for member in ids:
                    pipe.hget(self.keys.job(_text(member)), "record")
                values: list[Any] = await pipe.execute()
                return values

        found = [decode_record(raw) for raw in await self._run("job dead", read) if raw]
        return [record for record in found if record.state == "dead"]

    async def retry(self, job_id: str) -> JobRecord:
        # Not retried on a lost reply: the second try would see `queued` and refuse.
        before, after = await self._update(
            job_id,
            lambda record: jobs.replayed(record, time.time()),
            what="job retry",
            idempotent=False,
        )
        assert after is not None  # `replayed` raises rather than return None
        await jobs.tell(self.notify, after)
        try:
            await self._send(job_message(job_id, after.queue, 0))
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._restore(before, after)
            raise
        return after

    async def _restore(self, dead: JobRecord, queued: JobRecord) -> None:
        # Put the job back among the dead unless something else changed it meanwhile.
        try:
            _, restored = await self._update(
                dead.id,
                lambda record: dead if record == queued else None,
                what="job retry (undo)",
            )
        except (JobQueueError, NotFound) as exc:
            log.warning("job %s: could not undo a failed retry: %s", dead.id, exc)
            return
        if restored is not None:
            await jobs.tell(self.notify, restored)

    async def ping(self) -> None:
        await self._run("job queue ping", lambda: self.client.ping())

    async def aclose(self) -> None:
        if self._owns_clients:
            await self.client.aclose()
            await anyio.to_thread.run_sync(self.sync_client.close)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
