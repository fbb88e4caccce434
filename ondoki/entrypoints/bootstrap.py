"""The composition root: the one place that reads settings and wires adapters to the core."""

from __future__ import annotations

import logging
import secrets
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Protocol, runtime_checkable

import anyio
import anyio.abc

from ondoki.domain.imports import Imports, public
from ondoki.domain.jobs import JobKinds, register_demo_kinds
from ondoki.domain.media import KIND, QUEUE, CaptionsFirst, MediaImporter
from ondoki.domain.namespaces import NamespacedCache
from ondoki.domain.notifications import NotificationHub, job_notifier
from ondoki.domain.sessions import Sessions
from ondoki.domain.state import TemporaryState
from ondoki.entrypoints.services import Services
from ondoki.errors import ConfigError, OndokiError
from ondoki.ports.cache import Cache
from ondoki.ports.jobs import JobNotify, JobQueue
from ondoki.ports.media import MediaDecoder, SubtitleReader, Transcriber
from ondoki.ports.pubsub import PubSub
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


def build_pubsub(settings: Settings) -> PubSub:
    if settings.redis_url is None:
        from ondoki_adapters.memory.pubsub import MemoryPubSub

        return MemoryPubSub(
            namespace=settings.namespace,
            history_size=settings.history_size,
            history_ttl=settings.history_ttl_seconds,
        )
    from ondoki_adapters.redis.pubsub import RedisPubSub

    return RedisPubSub(
        settings.redis_url,
        namespace=settings.namespace,
        history_size=settings.history_size,
        history_ttl=settings.history_ttl_seconds,
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

        return MemoryJobQueue(kinds, notify=notify, record_ttl=settings.job_record_ttl_seconds)
    from ondoki_adapters.redis.bridge import open_job_queue

    return open_job_queue(
        settings.broker,
        kinds=kinds,
        notify=notify,
        namespace=settings.namespace,
        record_ttl=settings.job_record_ttl_seconds,
        timeout=settings.redis_timeout_seconds,
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


def hub_for(settings: Settings, pubsub: PubSub) -> NotificationHub:
    return NotificationHub(
        pubsub,
        send_buffer_bytes=settings.ws_send_buffer_bytes,
        max_event_bytes=settings.notification_max_bytes,
        ping_interval=settings.ws_ping_interval_seconds,
        ping_timeout=settings.ws_ping_timeout_seconds,
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
        if pubsub is None:
            pubsub = build_pubsub(settings)
            stack.push_async_callback(pubsub.aclose)
        await tasks.start(pubsub.run)
        hub = hub_for(settings, pubsub)
        jobs = build_jobs(settings, kinds or build_kinds(settings), job_notifier(hub, public))
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
        )
        await tasks.start(imports.run)
        services = Services(
            settings=settings,
            api_key=api_key if api_key is not None else resolve_api_key(settings),
            cache=cache,
            sessions=Sessions(
                NamespacedCache(cache, f"{ns}:session:"),
                ttl=settings.session_ttl_seconds,
                max_ttl=settings.session_max_ttl_seconds,
                max_data_bytes=settings.state_max_bytes,
            ),
            state=TemporaryState(
                NamespacedCache(cache, f"{ns}:state:"),
                ttl=settings.state_ttl_seconds,
                max_ttl=settings.state_max_ttl_seconds,
                max_bytes=settings.state_max_bytes,
            ),
            pubsub=pubsub,
            notifications=hub,
            jobs=jobs,
            imports=imports,
            parts={"cache": cache, "pubsub": pubsub, "jobs": jobs},
        )
        yield services
        tasks.cancel_scope.cancel()


async def _report_reachability(settings: Settings, cache: Cache) -> None:
    # An unreachable Redis at start-up is not fatal: the service starts, /readyz says 503
    # and requests succeed again as soon as Redis is back (an orchestrator restarts nothing).
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
    async with AsyncExitStack() as stack, anyio.create_task_group() as tasks:
        pubsub = build_pubsub(settings)
        stack.push_async_callback(pubsub.aclose)
        await tasks.start(pubsub.run)
        await warn_if_queue_can_be_evicted(settings)
        log.info("worker consuming %s on %s", ",".join(queues), redact_url(settings.broker))
        await run_dramatiq_worker(
            settings.broker,
            kinds=kinds,
            queues=queues,
            notify=job_notifier(hub_for(settings, pubsub), public),
            namespace=settings.namespace,
            threads=1,
            record_ttl=settings.job_record_ttl_seconds,
            handle_signals=True,
            options=WorkerOptions(
                heartbeat_timeout=settings.worker_heartbeat_timeout_seconds,
                requeue_interval=settings.worker_requeue_interval_seconds,
                lease_ttl=settings.worker_lease_ttl_seconds,
                poll_interval=settings.worker_poll_interval_seconds,
                stop_timeout=settings.worker_stop_timeout_seconds,
                redis_timeout=settings.redis_timeout_seconds,
            ),
        )
        tasks.cancel_scope.cancel()
