"""Everything ondoki assumes about dramatiq beyond its public API, in one place.

dramatiq's public surface (brokers, `Message`, `Actor`, `Worker`, middleware hooks) covers
sending and consuming. Three needs go past it, and they live here only:

1. **When queue maintenance runs.** dramatiq's Redis broker requeues the messages of workers
   whose heartbeat is stale on a random 0.1% of broker commands (`maintenance_chance`,
   public, says how often but not which commands). ondoki runs it on every `qsize` (sent by
   its janitor each `requeue_interval`) and never otherwise: a crash is then recovered
   within a bounded time, and enqueues never pay for the maintenance Lua (it runs KEYS).
   This overrides `RedisBroker._should_do_maintenance`, the broker's one hook for it.
2. **A worker-wide limit on fetched messages.** dramatiq's prefetch is per queue; a worker
   busy with a long `media` job would otherwise sit on a `celery` message an idle worker
   could run. This wraps the broker's `do_fetch`/`do_ack`/`do_nack`/`do_requeue`
   commands, which `RedisBroker.__getattr__` resolves to its Lua dispatch.
3. **Reading the backlog.** The queue lists `{ns}:{queue}` and `{ns}:{queue}.DQ` and the
   message hashes `{ns}:{queue}.msgs` are dramatiq's Redis layout; ondoki reads their
   lengths and the oldest message (decoded with the public `Message.decode`) for metrics,
   and the heartbeat sorted set `{ns}:__heartbeats__` to tell live brokers from dead ones.

dramatiq is pinned to the minor version this was written against (`SERIES`); importing
this module with another version fails at once with the reason, and
`tests/integration/test_dramatiq_surface.py` checks each assumption against the installed
dramatiq and a real Redis, so an upgrade that breaks one fails loudly there.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

import dramatiq
import redis
import redis.exceptions as rex
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import dq_name

from ondoki_adapters.redis.connection import wait_out

#: The dramatiq release series (major, minor) this module was written and tested against.
SERIES = (2, 2)

log = logging.getLogger("ondoki.worker")

#: Redis errors that mean "not now" rather than "never": a full server under `noeviction`
#: (OOM) and a read-only replica during a failover. Worth waiting out, unlike a wrong type.
REFUSED_FOR_NOW: tuple[type[rex.RedisError], ...] = (rex.OutOfMemoryError, rex.ReadOnlyError)
#: How long an ack, nack or requeue waits out `REFUSED_FOR_NOW` (dramatiq gives up at once).
SETTLE_PATIENCE = 60.0


def check_version(version: str) -> None:
    """Raise `ImportError` naming both versions unless `version` is of `SERIES`."""
    try:
        found = tuple(int(part) for part in version.split(".")[:2])
    except ValueError:
        found = ()
    if found != SERIES:
        wanted = ".".join(map(str, SERIES))
        raise ImportError(
            f"ondoki needs dramatiq {wanted}.x (it relies on that series' Redis broker "
            f"internals, see ondoki_adapters/redis/dramatiq_surface.py); found dramatiq "
            f"{version}. Install the pinned version: pip install 'dramatiq[redis]=={wanted}.*'"
        )


check_version(dramatiq.__version__)


# -- dramatiq's Redis layout -----------------------------------------------------------------


def queue_key(namespace: str, queue: str) -> str:
    """The list of message ids waiting on `queue` (RPUSHed: the head waited longest)."""
    return f"{namespace}:{queue}"


def delay_queue_key(namespace: str, queue: str) -> str:
    """The list of message ids waiting out a delay before they go back to `queue`."""
    return f"{namespace}:{dq_name(queue)}"


def messages_key(namespace: str, queue: str) -> str:
    """The hash of message id -> encoded message for `queue`."""
    return f"{namespace}:{queue}.msgs"


def heartbeats_key(namespace: str) -> str:
    """The sorted set of broker id -> its last command's time in milliseconds."""
    return f"{namespace}:__heartbeats__"


def delay_queue(queue: str) -> str:
    """The name of `queue`'s delay queue."""
    return dq_name(queue)


def enqueued_at(raw: bytes) -> float | None:
    """When an encoded message (a `messages_key` value) was first sent, in UNIX seconds;
    None for what does not decode."""
    try:
        message = dramatiq.Message.decode(raw)
    except Exception:  # dramatiq raises DecodeError, or the encoder's own errors
        return None
    return message.message_timestamp / 1000


# -- the broker and worker -------------------------------------------------------------------


class JobBroker(RedisBroker):
    """dramatiq's RedisBroker with maintenance on `qsize` only and, with `capacity` set (by
    a worker), at most that many messages fetched and not yet acked across all of its queues
    (delay queues excepted: their messages only wait there for their time to come).

    `fetch_wait` is how long a consumer waits for a free slot before it gives up a fetch.
    """

    def __init__(
        self,
        *,
        client: redis.Redis,
        namespace: str,
        heartbeat_timeout_ms: int,
        middleware: Sequence[dramatiq.Middleware] = (),
        capacity: int | None = None,
        fetch_wait: float = 0.0,
    ) -> None:
        # dramatiq annotates little of RedisBroker (its __init__ not at all).
        super().__init__(  # type: ignore[no-untyped-call]
            client=client,
            namespace=namespace,
            heartbeat_timeout=heartbeat_timeout_ms,
            middleware=list(middleware),
        )
        self.capacity = capacity
        self.fetch_wait = fetch_wait
        self._gate = threading.Condition()
        self._in_flight = 0
        #: Set when the worker stops: acks then stop waiting out a Redis refusing writes.
        self.stopping = threading.Event()

    def _should_do_maintenance(self, command: str) -> int:
        return 1 if command == "qsize" else 0

    def _command(self, name: str) -> Any:
        # RedisBroker resolves `do_<command>` through __getattr__ to its Lua dispatch.
        return super().__getattr__(f"do_{name}")  # type: ignore[no-untyped-call]

    def maintain(self, queue: str) -> None:
        """Heartbeat, and requeue the unacked messages of dead brokers on `queue` and its
        delay queue (see the module docstring)."""
        for name in (queue, dq_name(queue)):
            self._command("qsize")(name)

    def _gated(self, queue_name: str) -> bool:
        return self.capacity is not None and not queue_name.endswith(".DQ")

    def do_fetch(self, queue_name: str, prefetch: int) -> list[bytes | None]:
        fetch = self._command("fetch")
        if not self._gated(queue_name):
            messages: list[bytes | None] = fetch(queue_name, prefetch)
            return messages
        assert self.capacity is not None
        # One lock for check and fetch, or two consumers could both take the last slot.
        with self._gate:
            free = self.capacity - self._in_flight
            if free <= 0:
                # Wait for an ack instead of returning empty: dramatiq's consumer would
                # then sleep several ms before asking again, which caps a busy worker at
                # one job per sleep (measured: 130 no-op jobs/s against 295 with the wait).
                self._gate.wait(self.fetch_wait)
                free = self.capacity - self._in_flight
                if free <= 0:
                    return []
            messages = fetch(queue_name, min(prefetch, free))
            # dramatiq skips (and never acks) a message whose body has vanished.
            self._in_flight += sum(1 for message in messages if message is not None)
            return messages

    def _done(self, queue_name: str, count: int) -> None:
        if self._gated(queue_name):
            with self._gate:
                self._in_flight = max(0, self._in_flight - count)
                self._gate.notify_all()

    def _settle(self, name: str, queue_name: str, *message_ids: str) -> None:
        """Ack, nack or requeue, waiting out a Redis that refuses writes for now (for up to
        `SETTLE_PATIENCE` seconds, and not once the worker stops: dramatiq retries only
        connection errors, and gives up on the others); the capacity slot is freed whatever
        happens, or the worker would never fetch again."""
        try:
            wait_out(
                lambda: self._command(name)(queue_name, *message_ids),
                what=f"job message {name}",
                errors=REFUSED_FOR_NOW,
                stopping=self.stopping,
                log=log,
                patience=SETTLE_PATIENCE,
            )
        finally:
            self._done(queue_name, len(message_ids))

    def do_ack(self, queue_name: str, message_id: str) -> None:
        self._settle("ack", queue_name, message_id)

    def do_nack(self, queue_name: str, message_id: str) -> None:
        self._settle("nack", queue_name, message_id)

    def do_requeue(self, queue_name: str, *message_ids: str) -> None:
        self._settle("requeue", queue_name, *message_ids)


class JobWorker(dramatiq.Worker):
    """A dramatiq Worker whose consumers each hold at most `queue_prefetch` messages
    (dramatiq's default is two per thread and queue, settable only process-wide through
    the `dramatiq_queue_prefetch` environment variable)."""

    def __init__(
        self,
        broker: dramatiq.Broker,
        *,
        queues: set[str],
        worker_timeout_ms: int,
        worker_threads: int,
        queue_prefetch: int,
    ) -> None:
        super().__init__(
            broker, queues=queues, worker_timeout=worker_timeout_ms, worker_threads=worker_threads
        )
        self.queue_prefetch = queue_prefetch
