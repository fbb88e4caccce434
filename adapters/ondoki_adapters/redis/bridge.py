"""Running the asyncio-only job queue from trio: `ThreadedJobQueue`.

`DramatiqJobQueue` keeps its records with redis-py's asyncio client (WATCH/MULTI updates,
pipelines, a script) and hands messages to dramatiq's blocking client. On trio it runs on a
private asyncio event loop in a thread of its own; each port call is a coroutine submitted
to that loop, and the trio task waits for it in a worker thread
(`anyio.to_thread.run_sync`), so nothing the queue does ever blocks the trio loop.
Cancelling the trio task cancels the coroutine on the asyncio loop.

The coroutine spends the caller's Redis budget (`ondoki.support.deadline`): a request's job
calls share one deadline with its other Redis calls, as on asyncio. The waiting threads are
the bridge's own (`WAITING_THREADS`), not anyio's shared default limiter.

The job API is low-rate (an enqueue, a status read, a cancel per user action); the hops
cost a few hundred microseconds, next to the milliseconds a job takes to run.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread

from ondoki.domain.jobs import JobKinds
from ondoki.models import InstanceInfo, JobPage, JobRecord, JobState, JobStats, WorkerInfo
from ondoki.ports.jobs import JobNotify, JobQueue
from ondoki.support.deadline import Budget, carried, current
from ondoki_adapters.redis.driver import running_library
from ondoki_adapters.redis.jobs import DramatiqJobQueue

T = TypeVar("T")

#: Threads a `ThreadedJobQueue` waits for its calls in: one per call in flight, parked on
#: the call's result (the work runs on the asyncio loop). Its own limiter, so that job calls
#: neither take nor wait for the threads of anyio's shared default limiter (40, for every
#: `to_thread` user: file and media work among them). Sixteen calls in flight at once is
#: far beyond the job API's rate while Redis answers (each takes well under a millisecond);
#: when it hangs, later calls wait for a thread while their coroutines run on (and time out,
#: within their budget) on the asyncio loop, so a thread comes free within one timeout.
WAITING_THREADS = 16


class AsyncioThread:
    """An asyncio event loop running on a daemon thread until `aclose`; its callers wait
    for their calls in at most `threads` threads of its own."""

    def __init__(self, name: str, *, threads: int = 1) -> None:
        self._waiting = anyio.CapacityLimiter(threads)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            # Whatever is left (a call abandoned by its caller) is cancelled; closed
            # transports get the loop iterations they need to finish closing.
            pending = asyncio.all_tasks(self.loop)
            for task in pending:
                task.cancel()
            self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            for _ in range(3):
                self.loop.run_until_complete(asyncio.sleep(0))
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.run_until_complete(self.loop.shutdown_default_executor())
            self.loop.close()

    async def call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run `coroutine` on the asyncio loop, spending the caller's Redis budget; its
        result, waited for in a worker thread."""
        # Submitted from an empty context: the caller's would tell anyio (through sniffio's
        # context variable) that the coroutine runs on trio. The budget is all it takes.
        submit = asyncio.run_coroutine_threadsafe
        future = contextvars.Context().run(submit, _spending(current(), coroutine), self.loop)
        try:
            return await anyio.to_thread.run_sync(
                future.result, abandon_on_cancel=True, limiter=self._waiting
            )
        except anyio.get_cancelled_exc_class():
            future.cancel()
            raise

    async def aclose(self) -> None:
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            await anyio.to_thread.run_sync(self._thread.join, limiter=self._waiting)


async def _spending(over: Budget | None, coroutine: Coroutine[Any, Any, T]) -> T:
    with carried(over):
        return await coroutine


async def on_asyncio(coroutine: Coroutine[Any, Any, T]) -> T:
    """Await an asyncio-only `coroutine` (redis-py asyncio) from any event loop: directly on
    asyncio, on a private loop of its own on trio (a one-off, e.g. a start-up check)."""
    if running_library() != "trio":
        return await coroutine
    thread = AsyncioThread("ondoki one-off (asyncio)")
    try:
        return await thread.call(coroutine)
    finally:
        await thread.aclose()


class ThreadedJobQueue:
    """The JobQueue port on trio: a `DramatiqJobQueue` built by `build` (given the notify
    callback to use) on a private asyncio loop. `notify`, when given, runs on the caller's
    event loop (the one building this), as the port promises."""

    def __init__(
        self,
        build: Callable[[JobNotify | None], DramatiqJobQueue],
        *,
        notify: JobNotify | None = None,
    ) -> None:
        self._thread = AsyncioThread("ondoki jobs (asyncio)", threads=WAITING_THREADS)
        self._token = anyio.lowlevel.current_token()
        self._notify = notify
        relay: JobNotify | None = None if notify is None else self._relay

        async def create() -> DramatiqJobQueue:
            return build(relay)

        self._queue: DramatiqJobQueue | None = None
        self._create = create
        # Concurrent first calls must not each build a queue (and leak all but one).
        self._creating = anyio.Lock()

    async def _relay(self, record: JobRecord) -> None:
        # On the asyncio loop: hand the record to the caller's loop from a worker thread,
        # so that neither loop blocks the other; the notification (a Redis publish) spends
        # the budget of the call that made it, as on asyncio.
        assert self._notify is not None
        notify = self._notify
        over = current()

        async def tell_record() -> None:
            with carried(over):
                await notify(record)

        tell = functools.partial(anyio.from_thread.run, tell_record, token=self._token)
        await asyncio.get_running_loop().run_in_executor(None, tell)

    async def _on_loop(self, method: Callable[..., Awaitable[T]], *args: Any, **kw: Any) -> T:
        return await self._thread.call(_invoke(method, *args, **kw))

    async def _ready(self) -> DramatiqJobQueue:
        if self._queue is None:
            async with self._creating:
                if self._queue is None:
                    self._queue = await self._build()
        return self._queue

    async def _build(self) -> DramatiqJobQueue:
        # Shielded: a caller cancelled while the loop builds the queue would leave it built
        # there with nobody to close it. Building connects nothing (the clients connect on
        # first use), so the shield holds a cancel up only briefly.
        with anyio.CancelScope(shield=True):
            built = await self._thread.call(self._create())
        return built

    async def enqueue(
        self,
        kind: str,
        payload: dict[str, Any],
        *,
        queue: str | None = None,
        owner: str | None = None,
        idempotency_key: str | None = None,
    ) -> str:
        jobs = await self._ready()
        job_id: str = await self._on_loop(
            jobs.enqueue,
            kind,
            payload,
            queue=queue,
            owner=owner,
            idempotency_key=idempotency_key,
        )
        return job_id

    async def get(self, job_id: str) -> JobRecord:
        jobs = await self._ready()
        record: JobRecord = await self._on_loop(jobs.get, job_id)
        return record

    async def cancel(self, job_id: str) -> JobRecord:
        jobs = await self._ready()
        record: JobRecord = await self._on_loop(jobs.cancel, job_id)
        return record

    async def dead(self, *, limit: int = 100) -> list[JobRecord]:
        jobs = await self._ready()
        records: list[JobRecord] = await self._on_loop(jobs.dead, limit=limit)
        return records

    async def retry(self, job_id: str) -> JobRecord:
        jobs = await self._ready()
        record: JobRecord = await self._on_loop(jobs.retry, job_id)
        return record

    async def list_jobs(
        self,
        owner: str,
        *,
        state: JobState | None = None,
        kind: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> JobPage:
        jobs = await self._ready()
        page: JobPage = await self._on_loop(
            jobs.list_jobs, owner, state=state, kind=kind, limit=limit, cursor=cursor
        )
        return page

    async def failures(self, *, limit: int = 50) -> list[JobRecord]:
        jobs = await self._ready()
        records: list[JobRecord] = await self._on_loop(jobs.failures, limit=limit)
        return records

    async def workers(self) -> list[WorkerInfo]:
        jobs = await self._ready()
        workers: list[WorkerInfo] = await self._on_loop(jobs.workers)
        return workers

    async def announce(self, instance: InstanceInfo) -> None:
        jobs = await self._ready()
        await self._on_loop(jobs.announce, instance)

    async def withdraw(self, instance_id: str) -> None:
        jobs = await self._ready()
        await self._on_loop(jobs.withdraw, instance_id)

    async def instances(self) -> list[InstanceInfo]:
        jobs = await self._ready()
        found: list[InstanceInfo] = await self._on_loop(jobs.instances)
        return found

    async def stats(self) -> JobStats:
        jobs = await self._ready()
        stats: JobStats = await self._on_loop(jobs.stats)
        return stats

    async def ping(self) -> None:
        jobs = await self._ready()
        await self._on_loop(jobs.ping)

    async def aclose(self) -> None:
        # Under the build's lock: a queue being built meanwhile is closed too.
        with anyio.CancelScope(shield=True):
            async with self._creating:
                try:
                    if self._queue is not None:
                        await self._on_loop(self._queue.aclose)
                finally:
                    await self._thread.aclose()


async def _invoke(method: Callable[..., Awaitable[T]], *args: Any, **kw: Any) -> T:
    return await method(*args, **kw)


def open_job_queue(
    url: str, *, kinds: JobKinds, notify: JobNotify | None = None, **options: Any
) -> JobQueue:
    """A `DramatiqJobQueue` for `url` (`options` are its own), on the running event loop:
    directly on asyncio, through `ThreadedJobQueue` on trio."""

    def build(relay: JobNotify | None) -> DramatiqJobQueue:
        return DramatiqJobQueue(url, kinds=kinds, notify=relay, **options)

    if running_library() == "trio":
        return ThreadedJobQueue(build, notify=notify)
    return build(notify)
