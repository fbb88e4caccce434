"""Job progress as notifications: each change of a job reaches its owner's clients."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from ondoki.models import JobRecord, Position


class PublishesEvents(Protocol):
    """Where job events go: a `Publisher`, the hub, or the Redis publisher library."""

    async def publish(
        self, user_id: str, type: str, data: Any = None, *, id: str | None = None
    ) -> Position: ...


_JOB_EVENTS = {
    "running": "job.progress",
    "succeeded": "job.succeeded",
    "failed": "job.failed",
    "dead": "job.dead",
    "cancelled": "job.cancelled",
}


def job_notifier(
    publisher: PublishesEvents, present: Callable[[JobRecord], JobRecord] = lambda record: record
) -> Callable[[JobRecord], Awaitable[None]]:
    """The JobQueue's `notify` callback: each change of a job reaches its owner's clients as
    `job.progress`, `job.succeeded`, `job.failed`, `job.dead` or `job.cancelled`, as
    `present` shows the record to its owner."""

    async def notify(record: JobRecord) -> None:
        record = present(record)
        event = _JOB_EVENTS.get(record.state)
        if record.owner is None or event is None:
            return  # `queued` is what the client saw when it enqueued; nothing to add
        data: dict[str, Any] = {
            "job_id": record.id,
            "kind": record.kind,
            "state": record.state,
            "stage": record.stage,
            "progress": record.progress,
            "attempts": record.attempts,
        }
        if record.state == "succeeded":
            data["result"] = record.result
        if record.error is not None:
            data["error"] = record.error
        # Final events are idempotent: a redelivered job must not announce its end twice.
        key = None if event == "job.progress" else f"{record.id}:{record.state}:{record.attempts}"
        await publisher.publish(record.owner, event, data, id=key)

    return notify
