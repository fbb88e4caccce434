"""Waiting in tests for what the ports deliver: deliveries, final job records, metrics."""

from __future__ import annotations

import re
from collections.abc import Callable

import anyio

from ondoki.models import FINAL_STATES, Delivery, JobRecord
from ondoki.ports.jobs import JobQueue
from ondoki.ports.pubsub import Subscription


async def take(subscription: Subscription, count: int, *, within: float = 5.0) -> list[Delivery]:
    """The next `count` deliveries; fails the test if they do not come in time."""
    got: list[Delivery] = []
    if count == 0:
        return got
    with anyio.fail_after(within):
        async for delivery in subscription:
            got.append(delivery)
            if len(got) == count:
                break
    return got


async def until(condition: Callable[[], bool], *, within: float = 5.0) -> None:
    """Poll state that has no event to wait on (diagnostics, not API); fails the test if
    `condition` is not true in time."""
    with anyio.fail_after(within):
        while not condition():  # noqa: ASYNC110
            await anyio.sleep(0.01)


async def finished(jobs: JobQueue, job_id: str, *, within: float = 15.0) -> JobRecord:
    """The job's record once it is final; fails the test if it is not in time."""
    with anyio.fail_after(within):
        while True:
            record = await jobs.get(job_id)
            if record.state in FINAL_STATES:
                return record
            await anyio.sleep(0.02)


def metric(text: str, name: str, labels: str = "") -> float:
    """One sample's value in Prometheus text; fails the test if it is not there."""
    pattern = re.escape(name) + (re.escape("{" + labels + "}") if labels else "") + r" (\S+)"
    found = re.search(rf"^{pattern}$", text, re.MULTILINE)
    assert found, f"{name}{{{labels}}} not in:\n{text}"
    return float(found.group(1))
