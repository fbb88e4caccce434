"""Each assumption `ondoki_adapters.redis.dramatiq_surface` makes about dramatiq, checked
against the installed dramatiq and a real Redis. A dramatiq upgrade that breaks one fails
here, by name, rather than as lost or stuck jobs."""

from __future__ import annotations

import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import dramatiq
import pytest
import redis

from ondoki_adapters.redis import dramatiq_surface as surface
from ondoki_adapters.redis.dramatiq_surface import JobBroker, JobWorker
from tests.redis_server import RedisServer

pytestmark = pytest.mark.redis

NAMESPACE = "surface-test"


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    redis_server.flushall()
    found = redis_server.client(1)
    yield found
    found.close()


def broker(client: redis.Redis, capacity: int | None = None, fetch_wait: float = 0.0) -> JobBroker:
    made = JobBroker(
        client=client,
        namespace=NAMESPACE,
        heartbeat_timeout_ms=200,
        capacity=capacity,
        fetch_wait=fetch_wait,
    )
    made.declare_queue("q")
    made.declare_queue("other")
    return made


def send(on: JobBroker, queue: str = "q", **options: int) -> dramatiq.Message[object]:
    message: dramatiq.Message[object] = dramatiq.Message(
        queue_name=queue, actor_name="a", args=(), kwargs={}, options={}
    )
    on.enqueue(message, **options)
    return message


def test_the_installed_dramatiq_is_the_pinned_series() -> None:
    surface.check_version(dramatiq.__version__)
    with pytest.raises(ImportError, match=r"needs dramatiq 2\.2\.x .* found dramatiq 3\.0\.0"):
        surface.check_version("3.0.0")
    with pytest.raises(ImportError):
        surface.check_version("2.3.0")
    # pyproject.toml pins the same series.
    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    pins = [d for d in pyproject["project"]["dependencies"] if d.startswith("dramatiq")]
    major, minor = surface.SERIES
    assert pins == [f"dramatiq[redis]>={major}.{minor},<{major}.{minor + 1}"]


def test_the_redis_layout_is_dramatiqs(client: redis.Redis) -> None:
    sender = broker(client)
    before = time.time()
    message = send(sender)
    ids = client.lrange(surface.queue_key(NAMESPACE, "q"), 0, -1)
    assert len(ids) == 1
    raw = client.hget(surface.messages_key(NAMESPACE, "q"), ids[0])
    assert isinstance(raw, bytes)
    sent = surface.enqueued_at(raw)
    assert sent == message.message_timestamp / 1000
    assert before - 1 <= sent <= time.time() + 1
    assert surface.enqueued_at(b"not a message") is None
    send(sender, delay=60_000)
    assert client.llen(surface.delay_queue_key(NAMESPACE, "q")) == 1
    assert surface.delay_queue("q") == "q.DQ"
    # Every command a broker sends heartbeats it in the sorted set.
    heartbeat = client.zscore(surface.heartbeats_key(NAMESPACE), sender.broker_id)
    assert heartbeat is not None and heartbeat / 1000 >= before - 1


def test_maintenance_runs_on_qsize_and_on_nothing_else(client: redis.Redis) -> None:
    sender = broker(client)
    send(sender)
    # A worker takes the message and dies without acking it.
    doomed = broker(client)
    assert len([m for m in doomed.do_fetch("q", 1) if m is not None]) == 1
    queue = surface.queue_key(NAMESPACE, "q")
    assert client.llen(queue) == 0
    time.sleep(0.5)  # its heartbeat is now past the 200 ms timeout
    janitor = broker(client)
    for _ in range(300):
        # dramatiq's default would run maintenance on about 0.1% of these: ondoki's never.
        janitor.do_fetch("other", 1)
    assert client.llen(queue) == 0
    janitor.maintain("q")
    assert client.llen(queue) == 1, "maintenance on qsize did not requeue the dead's message"


def test_capacity_limits_what_a_worker_holds_across_queues(client: redis.Redis) -> None:
    sender = broker(client)
    first, _ = send(sender, "q"), send(sender, "other")
    gated = broker(client, capacity=1, fetch_wait=0.01)
    fetched = [m for m in gated.do_fetch("q", 5) if m is not None]
    assert len(fetched) == 1
    assert gated.do_fetch("other", 5) == []
    held = dramatiq.Message.decode(fetched[0])
    assert held.message_id == first.message_id
    gated.do_ack("q", held.options["redis_message_id"])
    assert len([m for m in gated.do_fetch("other", 5) if m is not None]) == 1
    # Delay queues are not limited.
    send(sender, delay=60_000)
    assert len(gated.do_fetch("q.DQ", 5)) == 1


def test_worker_consumers_use_the_given_prefetch(client: redis.Redis) -> None:
    plain = dramatiq.Worker(broker(client), queues={"q"}, worker_threads=1)
    assert "queue_prefetch" in vars(plain), "dramatiq.Worker no longer has queue_prefetch"
    ours = JobWorker(
        broker(client), queues={"q"}, worker_timeout_ms=10, worker_threads=1, queue_prefetch=3
    )
    ours.start()
    try:
        # dramatiq reads it when it adds a queue's consumer.
        assert ours.consumers["q"].prefetch == 3
    finally:
        ours.stop()
