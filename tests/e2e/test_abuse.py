"""What one client can do to a real `ondoki serve`: HTTP/2 over cleartext, trickled
bodies, many uploads at once."""

from __future__ import annotations

import socket

import h2.connection
import h2.events
import httpx2 as httpx
import pytest

from tests.e2e.conftest import Start
from tests.e2e.test_serve import API_KEY

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
