"""Value types shared by the ports, the services and the wire (msgspec Structs)."""

from __future__ import annotations

from typing import Any, Literal

import msgspec


class Position(msgspec.Struct, frozen=True):
    """Where a message sits in a channel's history.

    `epoch` changes whenever the history is lost (a new server, an expired channel); offsets
    only compare within one epoch.
    """

    epoch: str
    offset: int


class Message(msgspec.Struct, frozen=True, tag="message"):
    """A published message, as a subscriber receives it."""

    channel: str
    position: Position
    payload: bytes


class Gap(msgspec.Struct, frozen=True, tag="gap"):
    """History could not cover what the subscriber missed: it must refetch its state.

    `position` is where the stream continues from; `reason` says why the gap happened.
    """

    channel: str
    position: Position
    reason: str


Delivery = Message | Gap


class PubSubStats(msgspec.Struct, frozen=True):
    """What a PubSub adapter counts about its own delivery since it was made (per process).

    `reconnects`: times the backend connection was lost (or failed a health check) and is
    made again (always 0 for an adapter without a connection); `repaired`: messages a
    subscription missed live (a lost connection, or its buffer overflowed) and got from
    history instead; `unrepaired_gaps`: gaps history could not cover in such a repair
    (subscribers told to resync).
    """

    reconnects: int = 0
    repaired: int = 0
    unrepaired_gaps: int = 0


JobState = Literal["queued", "running", "succeeded", "failed", "dead", "cancelled"]

#: States a job never leaves (but `dead` may be replayed by an operator, making a new attempt).
FINAL_STATES: frozenset[str] = frozenset({"succeeded", "dead", "cancelled"})


class JobRecord(msgspec.Struct, kw_only=True):
    """Everything known about one job; readable from any API instance."""

    id: str
    kind: str
    queue: str
    owner: str | None = None
    state: JobState = "queued"
    stage: str | None = None
    progress: float = 0.0
    attempts: int = 0
    max_attempts: int = 3
    created_at: float
    updated_at: float
    started_at: float | None = None
    finished_at: float | None = None
    result: Any = None
    error: str | None = None
    idempotency_key: str | None = None


class Session(msgspec.Struct, kw_only=True):
    """A logged-in user's session, stored in the cache under a hash of its token."""

    user_id: str
    created_at: float
    ttl_seconds: float
    data: dict[str, Any] = msgspec.field(default_factory=dict)
    #: When the session ends however often it is used (None: cached before lifetimes existed).
    absolute_expires_at: float | None = None
    #: The expiry last written to the durable store (None: there is none).
    persisted_expires_at: float | None = None


class QueueStats(msgspec.Struct):
    """One queue, now: jobs waiting, waiting to retry after a backoff, the oldest's age."""

    waiting: int
    delayed: int
    oldest_age: float | None


class JobStats(msgspec.Struct):
    """What the queue can count cheaply: per-queue backlogs and jobs per state (only the
    states the backend counts without scanning every record)."""

    queues: dict[str, QueueStats]
    states: dict[str, int]


class JobPage(msgspec.Struct):
    """One page of a listing of jobs, newest first; `next_cursor` fetches the next page
    (None on the last one). Cursors are opaque strings."""

    jobs: list[JobRecord]
    next_cursor: str | None = None


class WorkerJob(msgspec.Struct, kw_only=True):
    """A job a worker is running now, as far as its last heartbeat tells."""

    job_id: str
    kind: str
    attempt: int
    started_at: float
    stage: str | None = None
    progress: float = 0.0


class WorkerInfo(msgspec.Struct, kw_only=True):
    """A worker process as it registered itself; `alive` is False once its heartbeat is
    older than the heartbeat timeout (it crashed or lost Redis: its jobs will be retried)."""

    id: str
    host: str
    pid: int
    queues: list[str]
    started_at: float
    heartbeat_at: float
    jobs: list[WorkerJob] = msgspec.field(default_factory=list)
    alive: bool = True


class InstanceInfo(msgspec.Struct, kw_only=True):
    """An API instance (`ondoki serve` process) as it last announced itself: its open
    WebSockets and whether its pub/sub connection answered."""

    id: str
    host: str
    pid: int
    started_at: float
    heartbeat_at: float
    websockets: int = 0
    notifications_published: int = 0
    pubsub_ok: bool = True
    pubsub_error: str | None = None
    alive: bool = True
