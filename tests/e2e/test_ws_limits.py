"""WebSocket limits and closes on real `ondoki serve` processes (docs/websocket-limits.md):
bytes counted, malformed messages answered, sockets per user bounded, replays paged, the
outage close, direct frames off, and pings, pongs and closes among many direct frames."""

from __future__ import annotations

import base64
import os
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx2 as httpx
import pytest
from websockets.exceptions import ConnectionClosed

from tests.e2e.conftest import Start
from tests.e2e.process import ServeProcess
from tests.e2e.test_notifications import KEY, rss_kib, websocket_gauges
from tests.e2e.ws import WsClient, login, publish
from tests.redis_server import RedisServer

pytestmark = pytest.mark.e2e


def memory_server(start: Start, *args: str, **env: str) -> ServeProcess:
    return start(*args, ONDOKI_API_KEY=KEY, **env).wait_ready()


def wait_for(condition: Callable[[], bool], what: str, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"not in {within:g} s: {what}"
        time.sleep(0.05)


def test_the_message_limit_counts_bytes(start: Start) -> None:
    server = memory_server(start)
    client = WsClient(server.url, login(server.url, KEY, "alice"))
    # 1,100 characters (under hypercorn's 4,096-character cap) but 4,400 bytes of UTF-8.
    client.connection.send('{"type": "pong", "pad": "' + "\U0001f600" * 1100 + '"}')
    assert client.closed() == (1009, "messages are limited to 4096 bytes")
    fits = WsClient(server.url, login(server.url, KEY, "alice"))
    fits.connection.send('{"type": "pong", "pad": "' + "\U0001f600" * 1000 + '"}')  # 4,026
    time.sleep(0.7)
    publish(server.url, KEY, "alice", "still-open")
    assert fits.recv()["event"]["type"] == "still-open"
    fits.close()


def test_malformed_messages_get_error_frames_or_1007_and_no_traceback(start: Start) -> None:
    server = memory_server(start)
    token = login(server.url, KEY, "alice")
    client = WsClient(server.url, token)
    time.sleep(0.7)
    deep = '{"type": "resume", "epoch": "e", "offset": ' + "[" * 2000 + "]" * 2000 + "}"
    for message in (deep, '{"type": "resume", "epoch": 7, "offset": 1}', "[[[", b"{}"):
        client.connection.send(message)
        error = client.recv()
        assert error["type"] == "error" and error["code"] == "bad_message", error
    publish(server.url, KEY, "alice", "still-open")
    assert client.recv()["event"]["type"] == "still-open"
    client.connection.send(b'{"type": "pong", "x": "\xff"}')  # a binary frame, not UTF-8
    assert client.closed() == (1007, "messages must be UTF-8")
    client.close()
    server.stop()
    assert "Traceback" not in server.output()


def test_sockets_per_user_are_bounded(start: Start) -> None:
    server = memory_server(start, ONDOKI_WS_MAX_SOCKETS_PER_USER="3")
    token = login(server.url, KEY, "alice")
    kept = [WsClient(server.url, token) for _ in range(3)]
    time.sleep(0.7)
    refused = WsClient(server.url, token)
    assert refused.closed() == (4029, "too many sockets: at most 3 per user")
    other = WsClient(server.url, login(server.url, KEY, "bob"))  # counted per user
    kept.pop().close()
    time.sleep(0.3)
    again = WsClient(server.url, token)
    time.sleep(0.7)
    publish(server.url, KEY, "alice", "hello")
    assert again.recv()["event"]["type"] == "hello"
    for client in [*kept, again, other, refused]:
        client.close()


@pytest.mark.parametrize("worker_class", ["asyncio", "trio"])
def test_a_bad_token_is_accepted_then_closed_on_either_loop(
    start: Start, worker_class: str
) -> None:
    server = start("--worker-class", worker_class, ONDOKI_API_KEY=KEY).wait_ready()
    client = WsClient(server.url, "no-such-session", via="subprotocol")
    assert client.connection.subprotocol == "ondoki.v1"
    assert client.closed() == (4001, "session expired")
    client.close()


def test_direct_frames_can_be_turned_off(start: Start) -> None:
    server = memory_server(start, ONDOKI_WS_DIRECT_FRAMES="false")
    client = WsClient(server.url, login(server.url, KEY, "alice"))
    time.sleep(0.7)
    assert websocket_gauges(server.url) == (1, 0)
    publish(server.url, KEY, "alice", "queued")
    assert client.recv()["event"]["type"] == "queued"
    client.close()


@pytest.mark.redis
def test_a_redis_outage_accepts_then_closes_with_1011(
    start: Start, fresh_redis: RedisServer
) -> None:
    server = start(
        REDIS_URL=fresh_redis.url(0), ONDOKI_API_KEY=KEY, ONDOKI_REDIS_TIMEOUT_SECONDS="1"
    ).wait_ready()
    token = login(server.url, KEY, "alice")
    fresh_redis.kill()
    client = WsClient(server.url, token, via="subprotocol")
    assert client.connection.subprotocol == "ondoki.v1"  # accepted, not refused with 403
    assert client.closed(timeout=20) == (1011, "backend unavailable; reconnect and resume")
    client.close()


@pytest.mark.redis
def test_resume_from_the_start_of_a_long_history_stays_bounded(
    start: Start, redis_server: RedisServer
) -> None:
    # 10 MB of history; 10 sockets resume from offset 0 and do not read: each holds a page
    # and its send buffer, not the history (which took ~13 MB per socket before).
    redis_server.flushall()
    server = start(REDIS_URL=redis_server.url(0), ONDOKI_API_KEY=KEY).wait_ready()
    token = login(server.url, KEY, "alice")
    blob = "h" * 32_000
    with ThreadPoolExecutor(8) as pool:
        sent = list(pool.map(lambda n: publish(server.url, KEY, "alice", "old", blob), range(300)))
    epoch = sent[0][0]
    before = rss_kib(server.process.pid)
    stalled = [WsClient(server.url, token, resume=(epoch, 0), max_queue=1) for _ in range(10)]
    time.sleep(3)
    grown_mib = (rss_kib(server.process.pid) - before) / 1024
    print(f"10 stalled resumes from offset 0 grew the server by {grown_mib:.1f} MiB")
    assert grown_mib < 40, f"10 resumes from offset 0 grew the server by {grown_mib:.0f} MiB"
    reader = WsClient(server.url, token, resume=(epoch, 0), max_queue=None)
    frames = reader.notifications(300, timeout=20)
    assert [f["offset"] for f in frames] == sorted(offset for _, offset in sent)
    for client in stalled:
        client.connection.close_timeout = 0.2  # it reads nothing: no close handshake
        client.close()
    reader.close()


@pytest.mark.parametrize("worker_class", ["asyncio", "trio"])
def test_pings_pongs_and_closes_interleave_with_direct_frames_under_load(
    start: Start, worker_class: str
) -> None:
    # Many frames in flight written straight to the transport, while hypercorn writes its
    # own frames (pongs to client pings, the close) to the same connection and the hub
    # sends application pings (a missed pong would close with 4000 within a second): every
    # frame parses, each ping is answered, and the close comes last. (On trio, hypercorn
    # writes under its send lock, which first writes out any frame of ours partly written.)
    server = memory_server(
        start,
        "--worker-class",
        worker_class,
        ONDOKI_WS_PING_INTERVAL_SECONDS="0.2",
        ONDOKI_WS_PING_TIMEOUT_SECONDS="1",
    )
    token = login(server.url, KEY, "alice")
    client = WsClient(server.url, token, max_queue=None)
    time.sleep(0.7)
    assert websocket_gauges(server.url) == (1, 1)
    total = 600

    with httpx.Client() as http:

        def post(n: int) -> None:
            response = http.post(
                f"{server.url}/internal/notifications",
                json={"user_id": "alice", "type": "load", "data": {"n": n, "pad": "p" * 2000}},
                headers={"Authorization": f"Bearer {KEY}"},
            )
            assert response.status_code == 202

        def post_all(numbers: range) -> None:
            with ThreadPoolExecutor(6) as pool:
                list(pool.map(post, numbers))

        publishing = threading.Thread(target=post_all, args=(range(total),))
        publishing.start()
        pongs = []
        got: list[int] = []
        while len(got) < total:
            if len(got) % 50 == 0:
                pongs.append(client.connection.ping())  # a protocol-level ping
            frame = client.recv(timeout=20)  # answers application pings with pongs
            assert frame["type"] == "notification", frame
            got.append(frame["event"]["data"]["n"])
        publishing.join()
        assert sorted(got) == list(range(total))
        assert all(pong.wait(10) for pong in pongs), "a protocol pong was lost among frames"
        assert client.pings >= 2, "no application ping came among the frames"
        # The server closes while frames are still in flight: the close comes last, whole.
        more = threading.Thread(target=post_all, args=(range(total, total + 200),))
        more.start()
        time.sleep(0.05)
        response = http.delete(
            f"{server.url}/sessions/me", headers={"Authorization": f"Bearer {token}"}
        )
        assert response.status_code == 204
        more.join()
    try:
        while True:
            frame = client.recv(timeout=10)
            assert frame["type"] == "notification", frame
    except ConnectionClosed as closed:
        assert closed.rcvd is not None and closed.rcvd.code == 4001, closed
    client.close()


@pytest.mark.parametrize("worker_class", ["asyncio", "trio"])
def test_a_client_leaving_with_frames_waiting_ends_only_its_connection(
    start: Start, worker_class: str
) -> None:
    # A client that stops reading (a small receive buffer, nothing read) while large frames
    # pile up, then sends its close and goes, as a closed tab does: the server's writes to
    # it fail with bytes of ours still waiting. On trio that once raised out of hypercorn's
    # reader and ended the whole worker; now only that connection ends.
    server = memory_server(
        start, "--worker-class", worker_class, ONDOKI_WS_SEND_BUFFER_BYTES="4000000"
    )
    token = login(server.url, KEY, "alice")
    with socket.create_connection(("127.0.0.1", server.port)) as raw:
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        key = base64.b64encode(os.urandom(16)).decode()
        raw.sendall(
            "GET /ws HTTP/1.1\r\nHost: ondoki\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Authorization: Bearer {token}\r\n\r\n".encode()
        )
        assert raw.recv(12) == b"HTTP/1.1 101"
        wait_for(lambda: websocket_gauges(server.url) == (1, 1), "the socket is served")
        time.sleep(0.7)  # past the resume window: what is published now is live
        for n in range(60):
            publish(server.url, KEY, "alice", "big", {"n": n, "blob": "x" * 32_000})
        mask = os.urandom(4)
        code = (1001).to_bytes(2, "big")
        raw.sendall(bytes((0x88, 0x80 | len(code))) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(code)))  # fmt: skip
    wait_for(lambda: websocket_gauges(server.url)[0] == 0, "the connection ends")
    assert server.process.poll() is None, "the server process ended"
    assert httpx.get(f"{server.url}/healthz").status_code == 200
    # And it still serves WebSockets.
    client = WsClient(server.url, token)
    time.sleep(0.7)
    publish(server.url, KEY, "alice", "after", 1)
    assert client.recv()["event"]["type"] == "after"
    client.close()
