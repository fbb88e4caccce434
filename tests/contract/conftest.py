"""Adapters under contract test: each port's suite runs against every adapter here."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Protocol

import anyio
import psycopg
import pytest

from ondoki.domain.jobs import DEFAULT_RECORD_TTL
from ondoki.models import JobRecord
from ondoki.ports.cache import Cache
from ondoki.ports.jobs import JobQueue
from ondoki.ports.pubsub import PubSub
from ondoki.ports.sessions import SessionStore
from ondoki_adapters.memory.cache import MemoryCache
from ondoki_adapters.memory.jobs import MemoryJobQueue
from ondoki_adapters.memory.pubsub import MemoryPubSub
from ondoki_adapters.memory.sessions import MemorySessionStore
from ondoki_adapters.postgres.store import PostgresSessionStore
from ondoki_adapters.redis.bridge import open_job_queue
from ondoki_adapters.redis.cache import RedisCache
from ondoki_adapters.redis.pubsub import RedisPubSub
from ondoki_adapters.redis.worker import run_worker
from tests.integration.worker_main import build_kinds, fast_worker_options
from tests.redis_server import RedisServer

REDIS = pytest.mark.redis


@pytest.fixture(
    params=[
        "memory",
        pytest.param("redis", marks=REDIS),
        pytest.param("redis-password", marks=REDIS),
    ]
)
async def cache(request: pytest.FixtureRequest, anyio_backend: str) -> AsyncIterator[Cache]:
    if request.param == "memory":
        yield MemoryCache()
        return
    fixture = "redis_server" if request.param == "redis" else "redis_server_password"
    server: RedisServer = request.getfixturevalue(fixture)
    server.flushall()
    adapter = RedisCache(server.url(0))
    yield adapter
    await adapter.aclose()


# -- jobs ------------------------------------------------------------------------------------


class JobEvents:
    """Collects every record a JobQueue (and its worker) notifies about, in order."""

    def __init__(self) -> None:
        self.records: list[JobRecord] = []

    async def __call__(self, record: JobRecord) -> None:
        self.records.append(record)

    def of(self, job_id: str) -> list[JobRecord]:
        return [record for record in self.records if record.id == job_id]

    def states(self, job_id: str) -> list[str]:
        """The job's states as notified, repeats (progress reports) collapsed."""
        states: list[str] = []
        for record in self.of(job_id):
            if not states or states[-1] != record.state:
                states.append(record.state)
        return states

    async def wait_for(self, job_id: str, state: str, *, within: float = 15.0) -> JobRecord:
        with anyio.fail_after(within):
            while True:
                for record in self.of(job_id):
                    if record.state == state:
                        return record
                await anyio.sleep(0.01)


@pytest.fixture
def job_events() -> JobEvents:
    return JobEvents()


@pytest.fixture
def record_ttl() -> float:
    """The job record TTL of the `jobs` fixture; parametrize a test on it to change it."""
    return DEFAULT_RECORD_TTL


#: `test.timeboxed` (a handler that checkpoints every 10 ms) under a 0.3 s time limit. Not
#: `test.stuck`: past its grace it would make the in-process worker exit the test run.
TIME_LIMITS = {"test.timeboxed": 0.3}


@pytest.fixture(params=["memory", pytest.param("redis", marks=REDIS)])
async def jobs(
    request: pytest.FixtureRequest,
    anyio_backend: str,
    job_events: JobEvents,
    record_ttl: float,
) -> AsyncIterator[JobQueue]:
    """A JobQueue with the test job kinds, and something running its jobs: the memory
    adapter's own runner, or an in-process dramatiq worker (threads) for Redis."""
    kinds = build_kinds()
    if request.param == "memory":
        memory = MemoryJobQueue(
            kinds, notify=job_events, record_ttl=record_ttl, time_limits=TIME_LIMITS
        )
        async with anyio.create_task_group() as tasks:
            await tasks.start(memory.run)
            yield memory
            tasks.cancel_scope.cancel()
        await memory.aclose()
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    server.flushall()
    queue = open_job_queue(server.url(1), kinds=kinds, notify=job_events, record_ttl=record_ttl)
    worker = functools.partial(
        run_worker,
        server.url(1),
        kinds=kinds,
        notify=job_events,
        options=fast_worker_options(),
        record_ttl=record_ttl,
        time_limits=TIME_LIMITS,
    )
    async with anyio.create_task_group() as tasks:
        await tasks.start(worker)
        yield queue
        tasks.cancel_scope.cancel()
    await queue.aclose()


# -- pubsub ----------------------------------------------------------------------------------


class InspectablePubSub(PubSub, Protocol):
    """What the PubSub contract tests look at beyond the port (both adapters offer it)."""

    def local_subscribers(self, channel: str) -> int: ...


#: Opens an adapter with the given settings and (unless `run=False`) its `run` started;
#: closes it on exit.
PubSubFactory = Callable[..., AbstractAsyncContextManager[InspectablePubSub]]


@pytest.fixture(params=["memory", pytest.param("redis", marks=REDIS)])
def make_pubsub(request: pytest.FixtureRequest, anyio_backend: str) -> PubSubFactory:
    server: RedisServer | None = None
    if request.param == "redis":
        server = request.getfixturevalue("redis_server")
        server.flushall()

    @asynccontextmanager
    async def open_pubsub(*, run: bool = True, **options: Any) -> AsyncIterator[InspectablePubSub]:
        adapter: InspectablePubSub
        if server is None:
            adapter = MemoryPubSub(**options)
        else:
            options.setdefault("timeout", 2.0)
            adapter = RedisPubSub(server.url(0), **options)
        try:
            async with anyio.create_task_group() as tasks:
                if run:
                    await tasks.start(adapter.run)
                yield adapter
                tasks.cancel_scope.cancel()
        finally:
            await adapter.aclose()

    return open_pubsub


@pytest.fixture
async def pubsub(make_pubsub: PubSubFactory) -> AsyncIterator[InspectablePubSub]:
    """An adapter with the default settings (as the composition root builds it), running."""
    async with make_pubsub() as adapter:
        yield adapter


# -- session stores --------------------------------------------------------------------------


@pytest.fixture(params=["memory", pytest.param("postgres", marks=pytest.mark.postgres)])
async def session_store(
    request: pytest.FixtureRequest, anyio_backend: str
) -> AsyncIterator[SessionStore]:
    if request.param == "memory":
        yield MemorySessionStore()
        return
    url: str = request.getfixturevalue("database_url")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE ondoki_sessions")
    store = PostgresSessionStore(url, timeout=5.0, pool_size=4)
    yield store
    await store.aclose()
