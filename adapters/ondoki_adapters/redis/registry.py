"""The deployment's registry in the broker's Redis: which workers and API instances there
are, what they run, and when each was last heard of.

- `{ns}:workers`: sorted set of worker ids by last heartbeat (UNIX seconds), and
  `{ns}:worker:{id}`: that worker's `WorkerInfo` (msgspec JSON); written by each worker on
  every heartbeat (`write_worker`), removed when it stops cleanly (`remove_worker`), and
  forgotten a day after its last heartbeat.
- `{ns}:instances` and `{ns}:instance:{id}`: the same for API instances (`InstanceInfo`),
  removed when one stops cleanly, forgotten an hour after their last announcement.

Readers mark an entry `alive` when its heartbeat is younger than the heartbeat timeout.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
import redis
import redis.asyncio as aioredis

from ondoki.models import InstanceInfo, WorkerInfo
from ondoki_adapters.redis.connection import milliseconds

#: How long a worker that stopped heartbeating stays listed (as dead).
WORKER_FORGOTTEN_AFTER = 86_400.0
#: The same for API instances (they restart more often and hold no jobs).
INSTANCE_FORGOTTEN_AFTER = 3_600.0


class RegistryKeys:
    """Key names under one namespace (see the module docstring)."""

    def __init__(self, namespace: str) -> None:
        self.workers = f"{namespace}:workers"
        self.instances = f"{namespace}:instances"
        self._namespace = namespace

    def worker(self, worker_id: str) -> str:
        return f"{self._namespace}:worker:{worker_id}"

    def instance(self, instance_id: str) -> str:
        return f"{self._namespace}:instance:{instance_id}"


# -- workers, from their (blocking) housekeeping threads -------------------------------------


def write_worker(client: redis.Redis, keys: RegistryKeys, info: WorkerInfo) -> None:
    """Register or refresh `info`, pruning workers forgotten by now."""
    with client.pipeline(transaction=True) as pipe:
        pipe.set(
            keys.worker(info.id), msgspec.json.encode(info), px=milliseconds(WORKER_FORGOTTEN_AFTER)
        )
        pipe.zadd(keys.workers, {info.id: info.heartbeat_at})
        pipe.zremrangebyscore(keys.workers, "-inf", info.heartbeat_at - WORKER_FORGOTTEN_AFTER)
        pipe.execute()


def remove_worker(client: redis.Redis, keys: RegistryKeys, worker_id: str) -> None:
    with client.pipeline(transaction=True) as pipe:
        pipe.zrem(keys.workers, worker_id)
        pipe.delete(keys.worker(worker_id))
        pipe.execute()


# -- the API side ----------------------------------------------------------------------------


async def write_instance(client: aioredis.Redis, keys: RegistryKeys, info: InstanceInfo) -> None:
    """Announce or refresh an API instance, pruning instances forgotten by now."""
    async with client.pipeline(transaction=True) as pipe:
        pipe.set(
            keys.instance(info.id),
            msgspec.json.encode(info),
            px=milliseconds(INSTANCE_FORGOTTEN_AFTER),
        )
        pipe.zadd(keys.instances, {info.id: info.heartbeat_at})
        pipe.zremrangebyscore(keys.instances, "-inf", info.heartbeat_at - INSTANCE_FORGOTTEN_AFTER)
        await pipe.execute()


async def remove_instance(client: aioredis.Redis, keys: RegistryKeys, instance_id: str) -> None:
    async with client.pipeline(transaction=True) as pipe:
        pipe.zrem(keys.instances, instance_id)
        pipe.delete(keys.instance(instance_id))
        await pipe.execute()


async def read_workers(
    client: aioredis.Redis, keys: RegistryKeys, *, alive_within: float
) -> list[WorkerInfo]:
    """Registered workers, live first (then the most recently started first)."""
    now = time.time()
    async with client.pipeline(transaction=False) as pipe:
        pipe.zremrangebyscore(keys.workers, "-inf", now - WORKER_FORGOTTEN_AFTER)
        pipe.zrange(keys.workers, 0, -1)
        _, ids = await pipe.execute()
    found = [
        msgspec.json.decode(raw, type=WorkerInfo)
        for raw in await _values(client, [keys.worker(_text(i)) for i in ids])
    ]
    for worker in found:
        worker.alive = worker.heartbeat_at >= now - alive_within
    found.sort(key=lambda worker: (not worker.alive, -worker.started_at))
    return found


async def read_instances(
    client: aioredis.Redis, keys: RegistryKeys, *, alive_within: float
) -> list[InstanceInfo]:
    """Announced API instances, live first (then the oldest first)."""
    now = time.time()
    ids: list[Any] = await client.zrange(keys.instances, 0, -1)
    found = [
        msgspec.json.decode(raw, type=InstanceInfo)
        for raw in await _values(client, [keys.instance(_text(i)) for i in ids])
    ]
    for instance in found:
        instance.alive = instance.heartbeat_at >= now - alive_within
    found.sort(key=lambda instance: (not instance.alive, instance.started_at))
    return found


async def _values(client: aioredis.Redis, keys: list[str]) -> list[bytes]:
    if not keys:
        return []
    values: list[Any] = await client.mget(keys)
    return [value for value in values if value is not None]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
