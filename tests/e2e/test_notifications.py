"""Notifications across real `ondoki serve` processes, real Redis, real WebSocket clients."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from websockets.exceptions import ConnectionClosed

from tests.e2e.conftest import Start
from tests.e2e.process import ServeProcess
from tests.e2e.ws import WsClient, login, publish, publish_retrying
from tests.redis_server import RedisServer
from tests.waits import metric

pytestmark = pytest.mark.e2e

KEY = "e2e-api-key-0123456789abcdef"


def pair(
    start: Start, redis: RedisServer, *args: str, **env: str
) -> tuple[ServeProcess, ServeProcess]:
    a = start(*args, REDIS_URL=redis.url(0), ONDOKI_API_KEY=KEY, **env)
    b = start(*args, REDIS_URL=redis.url(0), ONDOKI_API_KEY=KEY, **env)
    return a.wait_ready(), b.wait_ready()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.parametrize("worker_class", ["asyncio", "trio"])
def test_single_process_delivery_on_memory_adapters(start: Start, worker_class: str) -> None:
    server = start("--worker-class", worker_class, ONDOKI_API_KEY=KEY).wait_ready()
    client = WsClient(server.url, login(server.url, KEY, "alice"), via="subprotocol")
    assert client.connection.subprotocol == "ondoki.v1"
    time.sleep(0.7)  # past the resume window
    for n in range(3):
        publish(server.url, KEY, "alice", "hello", {"n": n})
    assert [f["event"]["data"]["n"] for f in client.notifications(3)] == [0, 1, 2]
    client.close()


def websocket_gauges(base_url: str) -> tuple[float, float]:
    """(open, direct) WebSockets, from /metrics."""
    text = httpx.get(f"{base_url}/metrics").text
    return metric(text, "ondoki_websockets_open"), metric(text, "ondoki_websockets_direct")


@pytest.mark.parametrize("worker_class", ["asyncio", "uvloop", "trio"])
def test_frames_go_straight_to_the_transport_on_every_worker_class(
    start: Start, worker_class: str
) -> None:
    # hypercorn's asyncio and trio workers: frames are written under ASGI
    # (adapters/ondoki_adapters/web/direct.py). Clients see the same frames, with or without
    # permessage-deflate negotiated.
    server = start(
        "--worker-class", worker_class, ONDOKI_API_KEY=KEY, ONDOKI_NOTIFICATION_MAX_BYTES="200000"
    ).wait_ready()
    token = login(server.url, KEY, "alice")
    plain, deflate = WsClient(server.url, token), WsClient(server.url, token, compression="deflate")
    time.sleep(0.7)
    assert websocket_gauges(server.url) == (2, 2)
    sizes = [10, 200, 100_000]  # frame lengths in 7, 16 and 64 bits
    for n, size in enumerate(sizes):
        publish(server.url, KEY, "alice", "sized", {"n": n, "blob": "y" * size})
    for client in (plain, deflate):
        frames = client.notifications(len(sizes))
        assert [len(f["event"]["data"]["blob"]) for f in frames] == sizes
        client.close()


@pytest.mark.redis
def test_published_on_a_reaches_clients_on_b_in_order_and_only_theirs(
    start: Start, redis_server: RedisServer
) -> None:
    redis_server.flushall()
    a, b = pair(start, redis_server)
    alice = WsClient(b.url, login(a.url, KEY, "alice"))
    bob = WsClient(b.url, login(b.url, KEY, "bob"))
    time.sleep(0.7)
    sent = [publish(a.url, KEY, "alice", "step", {"n": n}) for n in range(50)]
    publish(a.url, KEY, "bob", "for-bob", {})
    frames = alice.notifications(50)
    assert [(f["epoch"], f["offset"]) for f in frames] == sent
    assert [f["event"]["data"]["n"] for f in frames] == list(range(50))
    assert bob.recv()["event"]["type"] == "for-bob"  # and nothing of alice's before it
    alice.close()
    bob.close()


@pytest.mark.redis
def test_auth_failures_are_closes_a_browser_can_read(
    start: Start, redis_server: RedisServer
) -> None:
    # A refused upgrade shows a browser nothing (1006): the upgrade is accepted, with the
    # subprotocol when offered, then closed with a code and reason it can act on.
    server = start(REDIS_URL=redis_server.url(0), ONDOKI_API_KEY=KEY).wait_ready()
    cases = [
        ("not-a-session", "header", (4001, "session expired")),
        (KEY, "header", (4001, "session expired")),  # the API key is no session
        ("", "subprotocol", (4003, "invalid token: offer 'ondoki.v1' and exactly one")),
        ("", "nothing", (4003, "invalid token: no credentials")),
    ]
    for token, via, (code, reason) in cases:
        client = WsClient(server.url, token, via=via)
        if via == "subprotocol":
            assert client.connection.subprotocol == "ondoki.v1"
        closed_code, closed_reason = client.closed()
        assert closed_code == code and closed_reason.startswith(reason), (via, closed_reason)
        client.close()


@pytest.mark.redis
def test_killed_pubsub_connections_lose_nothing(start: Start, fresh_redis: RedisServer) -> None:
    a, b = pair(start, fresh_redis)
    token = login(a.url, KEY, "alice")
    clients = [WsClient(b.url, token), WsClient(a.url, token)]
    time.sleep(0.7)
    total = 300
    errors: list[str] = []

    def publisher() -> None:
        for n in range(total):
            # A publish whose connection was killed is retried with the same id: idempotent.
            publish_retrying(a.url, KEY, n, errors)
            time.sleep(0.005)

    def received(client: WsClient) -> list[Any]:
        return [f["event"]["data"] for f in client.notifications(total, timeout=60)]

    # The clients read (and answer pings) while the publisher runs: on a busy machine the
    # run can outlast a ping interval.
    with ThreadPoolExecutor(len(clients)) as readers:
        reading = [readers.submit(received, client) for client in clients]
        thread = threading.Thread(target=publisher)
        thread.start()
        with fresh_redis.client() as admin:
            for _ in range(4):
                time.sleep(0.3)
                admin.client_kill_filter(_type="pubsub")
                admin.client_kill_filter(_type="normal", skipme=True)
        thread.join(60)
        for client, result in zip(clients, reading, strict=True):
            assert result.result(timeout=60) == list(range(total))
            client.close()


@pytest.mark.redis
def test_redis_restart_gives_resync_then_live(start: Start, fresh_redis: RedisServer) -> None:
    # The restart ends alice's session too (no persistence, no PostgreSQL here): the session
    # check before a ping would close the socket with 4001 if a loaded run reached one.
    a, b = pair(start, fresh_redis, ONDOKI_WS_PING_INTERVAL_SECONDS="3600")
    client = WsClient(b.url, login(a.url, KEY, "alice"))
    time.sleep(0.7)
    publish(a.url, KEY, "alice", "before")
    assert client.recv()["event"]["type"] == "before"
    fresh_redis.restart()  # no persistence: history and sessions are gone
    deadline = time.monotonic() + 20
    while True:
        response = httpx.post(
            f"{a.url}/internal/notifications",
            json={"user_id": "alice", "type": "after", "data": 1},
            headers={"Authorization": f"Bearer {KEY}"},
            timeout=10,
        )
        if response.status_code == 202:
            break
        assert time.monotonic() < deadline, response.text
        time.sleep(0.1)
    assert client.recv()["type"] == "resync"
    publish(a.url, KEY, "alice", "after", 2)
    frames = client.notifications(2)
    assert [f["event"]["data"] for f in frames] == [1, 2]
    client.close()


@pytest.mark.redis
def test_reconnect_with_resume_gets_exactly_what_was_missed(
    start: Start, redis_server: RedisServer
) -> None:
    redis_server.flushall()
    a, b = pair(start, redis_server)
    token = login(a.url, KEY, "alice")
    first = WsClient(b.url, token)
    time.sleep(0.7)
    for n in range(3):
        publish(a.url, KEY, "alice", "seen", n)
    first.notifications(3)
    assert first.last is not None
    first.close()
    missed = [publish(a.url, KEY, "alice", "missed", n) for n in range(5)]
    again = WsClient(a.url, token, resume=first.last)
    frames = again.notifications(5)
    assert [(f["epoch"], f["offset"]) for f in frames] == missed
    publish(b.url, KEY, "alice", "live")
    assert again.recv()["event"]["type"] == "live"
    again.close()


def slow_closes(base_url: str) -> float:
    return metric(httpx.get(f"{base_url}/metrics").text, "ondoki_ws_slow_client_closes_total")


def established(port: int, peer_port: int) -> bool:
    """Whether this machine holds an established TCP connection from `port` to `peer_port`."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, remote, state = line.split()[1:4]
            if (
                state == "01"
                and int(local.rsplit(":", 1)[1], 16) == port
                and int(remote.rsplit(":", 1)[1], 16) == peer_port
            ):
                return True
    return False


def stall_one_client(
    start: Start, redis_server: RedisServer, worker_class: str
) -> tuple[ServeProcess, ServeProcess, WsClient, WsClient, int, int]:
    """Instances A and B (on `worker_class`); on B a stalled and a healthy client;
    publishes 32 kB events on A until B closes the stalled client as too slow (the kernel's
    buffers full, then the outbox's: on trio, partial writes). Also: how many events that
    took, and B's RSS (KiB) before the first."""
    redis_server.flushall()
    a, b = pair(
        start, redis_server, "--worker-class", worker_class, ONDOKI_WS_SEND_BUFFER_BYTES="65536"
    )
    token = login(a.url, KEY, "alice")
    # max_queue=1: the client library stops reading the socket once one frame is waiting.
    stalled = WsClient(b.url, token, max_queue=1)
    healthy = WsClient(b.url, token)
    time.sleep(0.7)
    before = rss_kib(b.process.pid)
    blob = "x" * 32_000
    n = 0
    while not slow_closes(b.url):
        assert n < 400, "the stalled client was never closed"
        publish(a.url, KEY, "alice", "big", {"n": n, "blob": blob})
        assert healthy.recv()["event"]["data"]["n"] == n
        n += 1
    return a, b, stalled, healthy, n, before


@pytest.mark.redis
@pytest.mark.parametrize("worker_class", ["asyncio", "trio"])
def test_stalled_client_is_closed_and_memory_stays_bounded(
    start: Start, redis_server: RedisServer, worker_class: str
) -> None:
    a, b, stalled, healthy, n, before = stall_one_client(start, redis_server, worker_class)
    # It reads again at once: the frames it had not taken, whole and in order (however
    # they were split between writes), then its 4008.
    taken = []
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            taken.append(stalled.recv(timeout=20)["event"]["data"]["n"])
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4008, closed.value
    assert taken == list(range(len(taken))) and 0 < len(taken) <= n, taken
    blob = "x" * 32_000
    for more in range(n, n + 300):
        publish(a.url, KEY, "alice", "big", {"n": more, "blob": blob})
        assert healthy.recv()["event"]["data"]["n"] == more
    grown_mib = (rss_kib(b.process.pid) - before) / 1024
    print(f"instance B grew by {grown_mib:.1f} MiB ({n} events closed the stalled client)")
    # 32 kB x (n + 300) went to the healthy client; the stalled one held at most its send
    # buffer (64 KiB) and one frame in the process, plus socket buffers in the kernel.
    assert grown_mib < 8, f"instance B grew by {grown_mib:.1f} MiB"
    healthy.close()


@pytest.mark.redis
@pytest.mark.parametrize("worker_class", ["asyncio", "trio"])
def test_a_client_that_never_reads_again_is_dropped(
    start: Start, redis_server: RedisServer, worker_class: str
) -> None:
    # Its close frame can never be written: after the close timeout (2 s) the server drops
    # the connection with what it holds, instead of keeping buffers for a dead reader.
    a, _, stalled, healthy, n, _ = stall_one_client(start, redis_server, worker_class)
    socket = stalled.connection.socket
    mine, theirs = socket.getsockname()[1], socket.getpeername()[1]
    assert established(theirs, mine), "the server side is gone before its close timeout"
    deadline = time.monotonic() + 10
    while established(theirs, mine):
        assert time.monotonic() < deadline, "B still holds the stalled client's connection"
        time.sleep(0.2)
    publish(a.url, KEY, "alice", "after", {"n": n})
    assert healthy.recv()["event"]["data"]["n"] == n
    healthy.close()


@pytest.mark.redis
def test_logout_on_a_closes_the_sessions_socket_on_b(
    start: Start, redis_server: RedisServer
) -> None:
    redis_server.flushall()
    a, b = pair(start, redis_server)
    token = login(a.url, KEY, "alice")
    other = WsClient(b.url, login(a.url, KEY, "alice"))
    client = WsClient(b.url, token)
    time.sleep(0.7)
    response = httpx.delete(f"{a.url}/sessions/me", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 204
    assert client.close_code() == 4001
    publish(a.url, KEY, "alice", "still-there")
    assert other.recv()["event"]["type"] == "still-there"
    other.close()


def test_shutdown_closes_sockets_with_1012(start: Start) -> None:
    server = start(ONDOKI_API_KEY=KEY).wait_ready()
    client = WsClient(server.url, login(server.url, KEY, "alice"))
    time.sleep(0.7)
    started = time.monotonic()
    server.process.terminate()
    assert client.close_code() == 1012
    assert server.exit_code() == 0
    assert time.monotonic() - started < 8
