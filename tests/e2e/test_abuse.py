"""What one client can do to a real `ondoki serve`: HTTP/2 over cleartext, trickled
bodies, many uploads at once."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import h2.connection
import h2.events
import httpx2 as httpx
import pytest

from tests.e2e.conftest import Start
from tests.e2e.test_serve import API_KEY, login

pytestmark = pytest.mark.e2e


def h2c_upgrade_status(port: int) -> tuple[bytes, int]:
    """The HTTP/1.1 answer to `Upgrade: h2c` and, if it switched, the status of the
    request served over HTTP/2."""
    connection = h2.connection.H2Connection()
    settings = connection.initiate_upgrade_connection()
    assert settings is not None
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade, HTTP2-Settings\r\n"
            b"Upgrade: h2c\r\nHTTP2-Settings: " + settings + b"\r\n\r\n"
        )
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        first_line = head.split(b"\r\n", 1)[0]
        if b" 101 " not in first_line:
            return first_line, 0
        sock.sendall(connection.data_to_send())
        while True:
            for event in connection.receive_data(rest):
                if isinstance(event, h2.events.ResponseReceived) and event.stream_id == 1:
                    return first_line, int(dict(event.headers)[b":status"])
            sock.sendall(connection.data_to_send())
            rest = sock.recv(65536)
            assert rest, "the server closed the HTTP/2 connection without answering"


def test_http2_over_cleartext_is_off_unless_configured(start: Start) -> None:
    off = start(ONDOKI_API_KEY=API_KEY)
    on = start(ONDOKI_API_KEY=API_KEY, ONDOKI_ALLOW_H2C="true")
    off.wait_ready()
    on.wait_ready()
    for server, expected in ((off, 505), (on, 200)):
        with httpx.Client(http1=False, http2=True) as prior_knowledge:
            response = prior_knowledge.get(f"{server.url}/healthz")
        assert response.http_version == "HTTP/2"
        assert response.status_code == expected, response.text
        assert h2c_upgrade_status(server.port)[1] == expected
    # HTTP/1.1 is unaffected.
    assert httpx.get(f"{off.url}/healthz").status_code == 200


def send_partial(port: int, head: str, body: bytes) -> socket.socket:
    """A request whose body stops after `body`: the connection is left open."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(head.encode() + b"\r\n\r\n" + body)
    return sock


def status_of(sock: socket.socket) -> tuple[int, str]:
    """The status and the whole head of the response on `sock`."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head = data.partition(b"\r\n\r\n")[0].decode("latin-1")
    return int(head.split(" ", 2)[1]), head.lower()


def upload_head(port: int, token: str, length: int) -> str:
    return (
        f"POST /imports HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: video/mp4\r\nContent-Length: {length}"
    )


def token_of(base: str, user_id: str) -> str:
    return login(base, API_KEY, user_id)["Authorization"].split(" ", 1)[1]


def test_a_trickled_body_is_given_up_after_the_idle_timeout(start: Start, tmp_path: Path) -> None:
    media = tmp_path / "media"
    server = start(
        ONDOKI_API_KEY=API_KEY,
        ONDOKI_BODY_IDLE_TIMEOUT_SECONDS="1",
        ONDOKI_MEDIA_DIR=str(media),
    ).wait_ready()
    token = token_of(server.url, "alice")
    json_head = (
        f"PUT /state/k HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
        "Content-Type: application/json\r\nContent-Length: 100"
    )
    for head, first in (
        (json_head, b'{"a": '),
        (upload_head(server.port, token, 10**7), b"\0" * 1000),
    ):
        started = time.monotonic()
        with send_partial(server.port, head, first) as sock:
            # Before: no answer, ever (hypercorn has no read timeout by default).
            status, response = status_of(sock)
        assert status == 408, response
        assert time.monotonic() - started < 10
    assert list((media / "imports").iterdir()) == []


def test_many_uploads_at_once_are_bounded(start: Start, tmp_path: Path) -> None:
    media = tmp_path / "media"
    server = start(
        ONDOKI_API_KEY=API_KEY,
        ONDOKI_MEDIA_DIR=str(media),
        ONDOKI_MAX_CONCURRENT_UPLOADS="3",
        ONDOKI_MAX_CONCURRENT_UPLOADS_PER_USER="2",
    ).wait_ready()
    alice, bob, carol = (token_of(server.url, user) for user in ("alice", "bob", "carol"))
    held: list[socket.socket] = []
    try:
        for token in (alice, alice, bob):
            sock = send_partial(server.port, upload_head(server.port, token, 10**8), b"\0" * 4096)
            held.append(sock)
        # Wait until the three are being written to disk (their slots are taken).
        deadline = time.monotonic() + 20
        while len(list((media / "imports").glob("*/source.part"))) < 3:
            assert time.monotonic() < deadline, "the held uploads never started"
            time.sleep(0.05)
        for token, says in ((alice, "2 uploads in progress"), (carol, "as many uploads")):
            with send_partial(server.port, upload_head(server.port, token, 10**8), b"") as sock:
                status, head = status_of(sock)
            assert status == 429, head
            assert "retry-after: " in head
            assert (
                says
                in httpx.post(
                    f"{server.url}/imports",
                    content=b"x",
                    headers={"Authorization": f"Bearer {token}", "Content-Type": "video/mp4"},
                ).json()["error"]["message"]
            )
    finally:
        for sock in held:
            sock.close()
    # The abandoned uploads give their places back and leave nothing on disk.
    deadline = time.monotonic() + 20
    while True:
        answer = httpx.post(
            f"{server.url}/imports",
            content=b"not a video",
            headers={"Authorization": f"Bearer {alice}", "Content-Type": "video/mp4"},
        )
        if answer.status_code != 429 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert answer.status_code == 415, answer.text
    assert list((media / "imports").iterdir()) == []


def test_partial_uploads_of_a_killed_process_are_swept_at_start(
    start: Start, tmp_path: Path
) -> None:
    imports = tmp_path / "media" / "imports"
    abandoned = imports / "0123abandoned"
    abandoned.mkdir(parents=True)
    (abandoned / "source.part").write_bytes(b"\0" * 1000)
    long_ago = time.time() - 3600
    os.utime(abandoned / "source.part", (long_ago, long_ago))
    start(ONDOKI_API_KEY=API_KEY, ONDOKI_MEDIA_DIR=str(tmp_path / "media")).wait_ready()
    deadline = time.monotonic() + 10
    while abandoned.exists():
        assert time.monotonic() < deadline, "the abandoned upload is still there"
        time.sleep(0.05)
