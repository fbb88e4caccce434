"""The composition root: the one place that reads settings and wires adapters to the core."""

from __future__ import annotations

import logging
import os
import secrets
import socket
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from functools import partial
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import anyio
import anyio.abc

from ondoki.domain.imports import Imports
from ondoki.domain.job_view import for_owner
from ondoki.domain.jobs import JobKinds, register_demo_kinds
from ondoki.domain.media import KIND, QUEUE, CaptionsFirst, MediaImporter
from ondoki.domain.namespaces import NamespacedCache
from ondoki.domain.notifications import NotificationHub, Publisher, job_notifier
from ondoki.domain.notifications.job_events import PublishesEvents
from ondoki.domain.sessions import Sessions
from ondoki.domain.signed_urls import UrlSigner
from ondoki.domain.state import TemporaryState
from ondoki.domain.uploads import ImportFiles, UploadLimits, notify_all
from ondoki.entrypoints.services import Services
from ondoki.errors import ConfigError, OndokiError
from ondoki.models import InstanceInfo
from ondoki.ports.cache import Cache
from ondoki.ports.jobs import JobNotify, JobObserver, JobQueue
from ondoki.ports.media import MediaDecoder, SubtitleReader, Transcriber
from ondoki.ports.pubsub import Publishes, PubSub
from ondoki.ports.sessions import SessionStore
from ondoki.support.redact import redact_url
from ondoki.support.settings import Settings, with_db

log = logging.getLogger("ondoki")


@runtime_checkable
class Runnable(Protocol):
    """An adapter with background work, started in the composition root's task group."""

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = ...) -> None: ...


def resolve_api_key(settings: Settings) -> str:
    """The configured API key; in development a generated one (printed), never in production."""
    if settings.api_key is not None:
        return settings.api_key
    if settings.env == "production":  # load_settings refuses this; a hand-built Settings may not
        raise ConfigError("ONDOKI_API_KEY", "is required when ONDOKI_ENV=production")
    key = secrets.token_urlsafe(24)
    # Printed, not logged: the operator needs it once, log collectors never should.
    print(f"ondoki: development API key (set ONDOKI_API_KEY to choose one): {key}", file=sys.stderr)
    return key


def resolve_signing_key(settings: Settings) -> str:
    """The configured URL signing key; in development a generated one (this process's own:
    set ONDOKI_URL_SIGNING_KEY to share one between instances), never in production."""
    if settings.url_signing_key is not None:
        return settings.url_signing_key
    if settings.env == "production":  # load_settings refuses this; a hand-built Settings may not
        raise ConfigError("ONDOKI_URL_SIGNING_KEY", "is required when ONDOKI_ENV=production")
    return secrets.token_urlsafe(32)


def check_backend(settings: Settings) -> None:
    """Prepare what must be ready before anything is opened: the media directory, refusing
    one uploads cannot be written to."""
    ImportFiles(Path(settings.media_dir), upload_limits(settings)).prepare()


def build_cache(settings: Settings) -> Cache:
    if settings.redis_url is None:
        from ondoki_adapters.memory.cache import MemoryCache

        return MemoryCache(
            max_entries=settings.memory_cache_max_entries,
            max_bytes=settings.memory_cache_max_bytes,
            default_ttl=settings.cache_default_ttl_seconds,
        )
    from ondoki_adapters.redis.cache import RedisCache

    return RedisCache(
        settings.redis_url,
        default_ttl=settings.cache_default_ttl_seconds,
        timeout=settings.redis_timeout_seconds,
    )


def build_session_store(settings: Settings) -> SessionStore | None:
    """The durable session store DATABASE_URL names, or None (sessions only in the cache)."""
    if settings.database_url is None:
        return None
    from ondoki_adapters.postgres.store import PostgresSessionStore

    return PostgresSessionStore(
        settings.database_url,
        timeout=settings.database_timeout_seconds,
        pool_size=settings.database_pool_size,
    )


def build_session_cache(settings: Settings, cache: Cache) -> Cache:
    """Where sessions are cached. On the memory adapters a cache of their own, so that no
    amount of state evicts a session; on Redis a namespace of the one cache (an evicted
    session is read again from the database, when there is one)."""
    if settings.redis_url is None:
        from ondoki_adapters.memory.cache import MemoryCache

        return MemoryCache(
            max_entries=settings.memory_cache_max_entries,
            max_bytes=settings.memory_cache_max_bytes,
            default_ttl=settings.cache_default_ttl_seconds,
        )
    return NamespacedCache(cache, f"{settings.namespace}:session:")


async def check_session_store(settings: Settings, store: SessionStore | None) -> None:
    """Say where sessions live; refuse to serve on a database whose schema is behind."""
    if store is None:
        if settings.redis_url is not None:
            log.warning(
                "DATABASE_URL is unset: sessions live only in Redis and do not survive a "
                "Redis restart (see docs/sessions.md)"
            )
        return
    from ondoki_adapters.postgres.schema import VERSION
    from ondoki_adapters.postgres.store import PostgresSessionStore

    assert isinstance(store, PostgresSessionStore)
    assert settings.database_url is not None
    where = redact_url(settings.database_url)
    try:
        with anyio.fail_after(settings.database_timeout_seconds * 2):
            version = await store.schema_version()
    except (OndokiError, TimeoutError) as exc:
        # Like Redis: not fatal. /readyz says 503 until the database answers (and its
        # schema is current); sessions already cached keep working meanwhile.
        log.warning("the session database at %s is not answering yet: %s", where, exc)
        return
    if version < VERSION:
        raise ConfigError(
            "DATABASE_URL",
            f"the session database's schema is at version {version}, this ondoki needs "
            f"{VERSION}: run `ondoki migrate` first",
        )
    log.info("keeping sessions in PostgreSQL at %s (schema version %d)", where, version)


def build_pubsub(settings: Settings) -> PubSub:
    # A replayed page of history is bounded like a socket's unsent frames.
    if settings.redis_url is None:
        from ondoki_adapters.memory.pubsub import MemoryPubSub

        return MemoryPubSub(
            namespace=settings.namespace,
            history_size=settings.history_size,
            history_ttl=settings.history_ttl_seconds,
            replay_page_bytes=settings.ws_send_buffer_bytes,
        )
    from ondoki_adapters.redis.pubsub import RedisPubSub

    return RedisPubSub(
        settings.redis_url,
        namespace=settings.namespace,
        history_size=settings.history_size,
        history_ttl=settings.history_ttl_seconds,
        timeout=settings.redis_timeout_seconds,
        replay_page_bytes=settings.ws_send_buffer_bytes,
    )


def build_decoder(settings: Settings) -> MediaDecoder:
    """What reads uploaded videos: PyAV (FFmpeg)."""
    from ondoki_adapters.media import PyAVDecoder

    return PyAVDecoder()


def build_transcriber(settings: Settings, subtitles: SubtitleReader) -> Transcriber:
    """Captions when the video has any, else speech recognition: faster-whisper with the
    operator's model when `ONDOKI_WHISPER_MODEL_DIR` is set, else pocketsphinx."""
    from ondoki_adapters.media import PocketsphinxTranscriber, WhisperTranscriber

    speech: Transcriber = PocketsphinxTranscriber()
    if settings.whisper_model_dir is not None:
        speech = WhisperTranscriber(Path(settings.whisper_model_dir))
    return CaptionsFirst(speech, subtitles=subtitles)


def build_importer(settings: Settings) -> MediaImporter:
    """The `media.import` job handler, with the media adapters the settings ask for."""
    decoder = build_decoder(settings)
    return MediaImporter(decoder=decoder, transcriber=build_transcriber(settings, decoder))


def build_kinds(settings: Settings) -> JobKinds:
    """Every job kind this deployment runs."""
    kinds = register_demo_kinds(JobKinds())
    kinds.register(KIND, build_importer(settings), queue=QUEUE)
    return kinds


def build_jobs(settings: Settings, kinds: JobKinds, notify: JobNotify) -> JobQueue:
    if settings.broker is None:
        from ondoki_adapters.memory.jobs import MemoryJobQueue

        return MemoryJobQueue(
            kinds,
            notify=notify,
            record_ttl=settings.job_record_ttl_seconds,
            time_limits=settings.job_time_limits,
        )
    from ondoki_adapters.redis.bridge import open_job_queue

    return open_job_queue(
        settings.broker,
        kinds=kinds,
        notify=notify,
        namespace=settings.namespace,
        record_ttl=settings.job_record_ttl_seconds,
        timeout=settings.redis_timeout_seconds,
        worker_timeout=settings.worker_heartbeat_timeout_seconds,
    )


async def warn_if_queue_can_be_evicted(settings: Settings) -> None:
    """Say it loudly at start-up: an evicting policy on the broker silently drops jobs."""
    if settings.broker is None or settings.redis_url is None:
        return
    from ondoki_adapters.redis.bridge import on_asyncio
    from ondoki_adapters.redis.doctor import eviction_warning

    shared = with_db(settings.broker, 0) == with_db(settings.redis_url, 0)
    warning = await on_asyncio(eviction_warning(settings.broker, shared=shared))
    if warning is not None:
        log.warning("JOBS MAY BE LOST: %s (run `ondoki doctor`)", warning)


def upload_limits(settings: Settings) -> UploadLimits:
    return UploadLimits(
        max_bytes=settings.max_upload_bytes,
        max_concurrent=settings.max_concurrent_uploads,
        max_concurrent_per_user=settings.max_concurrent_uploads_per_user,
        max_active_imports_per_user=settings.max_active_imports_per_user,
        min_free_bytes=settings.media_min_free_bytes,
        idle_timeout=settings.body_idle_timeout_seconds,
        retention=settings.import_retention_seconds,
    )


def job_callbacks(settings: Settings, events: PublishesEvents) -> JobNotify:
    """What every process that changes job records does on each change: drop a finished
    import's video, and tell the job's owner."""
    files = ImportFiles(Path(settings.media_dir), upload_limits(settings))
    return notify_all(files.job_changed, job_notifier(events, for_owner))


def publisher_for(settings: Settings, pubsub: Publishes) -> Publisher:
    """The service's publisher, with the event and batch limits from the settings."""
    return Publisher(
        pubsub,
        max_event_bytes=settings.notification_max_bytes,
        max_batch_events=settings.notification_batch_max_events,
        max_batch_bytes=settings.notification_batch_max_bytes,
    )


def hub_for(settings: Settings, pubsub: PubSub) -> NotificationHub:
    return NotificationHub(
        pubsub,
        send_buffer_bytes=settings.ws_send_buffer_bytes,
        max_event_bytes=settings.notification_max_bytes,
        ping_interval=settings.ws_ping_interval_seconds,
        ping_timeout=settings.ws_ping_timeout_seconds,
        publisher=publisher_for(settings, pubsub),
        max_sockets_per_user=settings.ws_max_sockets_per_user,
        resume_burst=settings.ws_resume_burst,
        resume_per_second=settings.ws_resumes_per_minute / 60,
    )


@asynccontextmanager
async def open_services(
    settings: Settings,
    *,
    api_key: str | None = None,
    cache: Cache | None = None,
    pubsub: PubSub | None = None,
    kinds: JobKinds | None = None,
) -> AsyncIterator[Services]:
    """Open every adapter the settings ask for (or use the ones given), yield the services,
    and close everything in reverse order on the way out, whatever happened."""
    async with AsyncExitStack() as stack, anyio.create_task_group() as tasks:
        if cache is None:
            cache = build_cache(settings)
            stack.push_async_callback(cache.aclose)
        await _report_reachability(settings, cache)
        store = build_session_store(settings)
        if store is not None:
            stack.push_async_callback(store.aclose)
        await check_session_store(settings, store)
        housekeeping: object = store  # the PostgreSQL store removes expired sessions
        if isinstance(housekeeping, Runnable):
            await tasks.start(housekeeping.run)
        if pubsub is None:
            pubsub = build_pubsub(settings)
            stack.push_async_callback(pubsub.aclose)
        await tasks.start(pubsub.run)
        hub = hub_for(settings, pubsub)
        await tasks.start(hub.run)
        jobs = build_jobs(settings, kinds or build_kinds(settings), job_callbacks(settings, hub))
        stack.push_async_callback(jobs.aclose)
        if isinstance(jobs, Runnable):
            # The memory queue runs jobs inside this process (the embedded default).
            await tasks.start(jobs.run)
        await warn_if_queue_can_be_evicted(settings)
        ns = settings.namespace
        imports = Imports(
            jobs,
            NamespacedCache(cache, f"{ns}:import:"),
            Path(settings.media_dir),
            max_bytes=settings.max_upload_bytes,
            key_ttl=settings.job_record_ttl_seconds,
            probe=build_decoder(settings),
            uploads=upload_limits(settings),
        )
        await tasks.start(imports.run)
        services = Services(
            settings=settings,
            api_key=api_key if api_key is not None else resolve_api_key(settings),
            cache=cache,
            sessions=Sessions(
                build_session_cache(settings, cache),
                store=store,
                ttl=settings.session_ttl_seconds,
                max_ttl=settings.session_max_ttl_seconds,
                max_data_bytes=settings.state_max_bytes,
                absolute_ttl=settings.session_absolute_ttl_seconds,
                persist_interval=settings.session_persist_interval_seconds,
            ),
            state=TemporaryState(
                NamespacedCache(cache, f"{ns}:state:"),
                ttl=settings.state_ttl_seconds,
                max_ttl=settings.state_max_ttl_seconds,
                max_bytes=settings.state_max_bytes,
                max_keys_per_user=settings.state_max_keys_per_user,
                max_bytes_per_user=settings.state_max_bytes_per_user,
            ),
            pubsub=pubsub,
            notifications=hub,
            jobs=jobs,
            imports=imports,
            urls=UrlSigner(resolve_signing_key(settings), ttl=settings.frame_url_ttl_seconds),
            parts={
                "cache": cache,
                "pubsub": pubsub,
                "jobs": jobs,
                **({"database": store} if store is not None else {}),
            },
            diagnose=partial(_diagnose, settings),
        )
        tasks.start_soon(announce, services, settings.worker_requeue_interval_seconds)
        yield services
        tasks.cancel_scope.cancel()


async def _diagnose(settings: Settings) -> list[Any]:
    """What `ondoki doctor` finds, for the dashboard: the Redis servers (their checks use
    redis-py's asyncio client: on trio on a private asyncio loop) and the database."""
    from ondoki_adapters.postgres.doctor import diagnose as diagnose_database
    from ondoki_adapters.redis.bridge import on_asyncio
    from ondoki_adapters.redis.doctor import diagnose

    return [*await on_asyncio(diagnose(settings)), *await diagnose_database(settings)]


async def announce(services: Services, interval: float) -> None:
    """Announce this instance (open WebSockets, pub/sub health) in the deployment's
    registry every `interval` seconds, for the operators' dashboard."""
    started = time.time()
    host, pid = socket.gethostname(), os.getpid()
    instance_id = f"{host}-{pid}-{secrets.token_hex(3)}"
    try:
        while True:
            await _announce_once(services, instance_id, host, pid, started)
            await anyio.sleep(interval)
    finally:
        # A clean stop leaves the registry, so the dashboard does not show it as silent.
        with anyio.CancelScope(shield=True), anyio.move_on_after(2.0):
            try:
                await services.jobs.withdraw(instance_id)
            except OndokiError as exc:
                log.debug("instance not withdrawn: %s", exc)


async def _announce_once(
    services: Services, instance_id: str, host: str, pid: int, started: float
) -> None:
    error: str | None = None
    try:
        with anyio.fail_after(2.0):
            await services.pubsub.ping()
    except (OndokiError, TimeoutError) as exc:
        error = str(exc) or "no answer within 2s"
    info = InstanceInfo(
        id=instance_id,
        host=host,
        pid=pid,
        started_at=started,
        heartbeat_at=time.time(),
        websockets=services.notifications.stats.connections,
        notifications_published=services.notifications.publisher.published,
        pubsub_ok=error is None,
        pubsub_error=error,
    )
    try:
        await services.jobs.announce(info)
    except OndokiError as exc:
        log.debug("instance not announced: %s", exc)


async def _report_reachability(settings: Settings, cache: Cache) -> None:
    # An unreachable Redis at start-up is not fatal: the service starts, /readyz says 503
    # and requests succeed again as soon as Redis is back (an orchestrator restarts nothing).
    for note in settings.compatibility_notes:
        log.info("%s", note)
    if settings.redis_url is None:
        log.info("using in-memory adapters (REDIS_URL is unset)")
        return
    where = redact_url(settings.redis_url)
    try:
        with anyio.fail_after(settings.redis_timeout_seconds):
            await cache.ping()
    except (OndokiError, TimeoutError) as exc:
        log.warning("Redis at %s is not answering yet: %s", where, exc)
    else:
        log.info("using Redis at %s", where)


async def run_worker(settings: Settings, queues: tuple[str, ...]) -> None:
    """`ondoki worker`: consume `queues` on the Redis broker until SIGTERM/SIGINT; job
    progress is published to the owners' notification channels."""
    from ondoki_adapters.redis.worker import WorkerOptions
    from ondoki_adapters.redis.worker import run_worker as run_dramatiq_worker

    if settings.broker is None or settings.redis_url is None:
        raise ConfigError(
            "REDIS_URL",
            "`ondoki worker` needs Redis; with the in-memory adapters `ondoki serve` runs jobs "
            "in its own process",
        )
    kinds = build_kinds(settings)
    unknown = set(queues) - {kind.queue for kind in kinds}
    if unknown:
        raise ConfigError("--queues", f"no job kind uses {', '.join(sorted(unknown))}")
    from ondoki_adapters.redis.publisher import RedisPublisher

    async with AsyncExitStack() as stack:
        observer: JobObserver | None = None
        if settings.worker_metrics_port is not None:
            observer = stack.enter_context(
                worker_metrics(settings.host, settings.worker_metrics_port)
            )
        # Only publishing: the publisher library, no hub and no pub/sub connection.
        publisher = await stack.enter_async_context(
            RedisPublisher(
                settings.redis_url,
                namespace=settings.namespace,
                history_size=settings.history_size,
                history_ttl=settings.history_ttl_seconds,
                timeout=settings.redis_timeout_seconds,
                max_event_bytes=settings.notification_max_bytes,
                max_batch_events=settings.notification_batch_max_events,
                max_batch_bytes=settings.notification_batch_max_bytes,
            )
        )
        await warn_if_queue_can_be_evicted(settings)
        for note in settings.compatibility_notes:
            log.info("%s", note)
        log.info("worker consuming %s on %s", ",".join(queues), redact_url(settings.broker))
        await run_dramatiq_worker(
            settings.broker,
            kinds=kinds,
            queues=queues,
            notify=job_callbacks(settings, publisher),
            namespace=settings.namespace,
            threads=1,
            record_ttl=settings.job_record_ttl_seconds,
            handle_signals=True,
            time_limits=settings.job_time_limits,
            observer=observer,
            options=WorkerOptions(
                heartbeat_timeout=settings.worker_heartbeat_timeout_seconds,
                requeue_interval=settings.worker_requeue_interval_seconds,
                lease_ttl=settings.worker_lease_ttl_seconds,
                poll_interval=settings.worker_poll_interval_seconds,
                stop_timeout=settings.worker_stop_timeout_seconds,
                redis_timeout=settings.redis_timeout_seconds,
                time_limit_grace=settings.job_time_limit_grace_seconds,
            ),
        )


async def migrate_sessions(settings: Settings) -> tuple[int, int]:
    """`ondoki migrate`: bring the session database's schema up to date; (before, after)."""
    if settings.database_url is None:
        raise ConfigError("DATABASE_URL", "`ondoki migrate` needs the session database's URL")
    from ondoki_adapters.postgres.store import migrate_database

    return await migrate_database(
        settings.database_url, connect_timeout=settings.database_timeout_seconds
    )


@contextmanager
def worker_metrics(host: str, port: int) -> Iterator[JobObserver]:
    """Serve the worker's metrics (jobs, and the process's own) on `host:port` while in
    the block; `ConfigError` naming the address when it cannot be bound."""
    from prometheus_client import CollectorRegistry, ProcessCollector

    from ondoki_adapters.prometheus.jobs import JobMetrics, serve_metrics

    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    metrics = JobMetrics(registry)
    try:
        server, thread = serve_metrics(registry, host, port)
    except OSError as exc:
        raise ConfigError(
            "ONDOKI_WORKER_METRICS_PORT", f"cannot serve metrics on {host}:{port}: {exc.strerror}"
        ) from None
    log.info("worker metrics on http://%s:%d/metrics", host, port)
    try:
        yield metrics
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
