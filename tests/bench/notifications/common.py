"""What the notification benchmarks share: settings, the processes under test, small helpers."""

from __future__ import annotations

import importlib.util
import json
import os
import resource
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import httpx2 as httpx

from tests.e2e.process import clean_env
from tests.redis_server import free_port

ROOT = Path(__file__).resolve().parents[3]
SECTION = "notifications"
KEY = "bench-api-key-0123456789abcdef"
GOAL = 1.5
#: Messages (or steps) a publisher may be ahead of its slowest client.
WINDOW = 32
ROUNDS = 3  # 2 in a quick run
#: Every frame that counts starts so; anything else (warm-up, ping) is counted apart.
PREFIX = '{"type":"notification"'
PREFIX_BYTES = PREFIX.encode()

HAVE_BROADCASTER = importlib.util.find_spec("broadcaster") is not None
BROADCASTER_PIP = "broadcaster[redis]==0.3.1"


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


class PeerProcess:
    """`python -m tests.bench.peer_broadcaster PORT`, its output kept in a file."""

    def __init__(self, workdir: Path, redis_url: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / f"peer-{self.port}.log"
        command = [sys.executable, "-m", "tests.bench.peer_broadcaster", str(self.port)]
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                command, cwd=ROOT, env=clean_env(REDIS_URL=redis_url), stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip

    def wait_ready(self, timeout: float = 20.0) -> PeerProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the broadcaster peer exited:\n{self.log.read_text()}")
            try:
                httpx.get(f"{self.url}/", timeout=1)  # any answer (404) means it serves
                return self
            except httpx.TransportError:
                time.sleep(0.05)
        raise RuntimeError(f"the broadcaster peer did not serve in {timeout}s")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def show_warnings(workdir: Path) -> None:
    """The last lines above `info` of every server's log, on stderr."""
    for log in sorted(workdir.glob("*.log")):
        lines = [line for line in log.read_text().splitlines() if '"info"' not in line]
        print(f"--- {log.name}", *lines[-15:], sep="\n", file=sys.stderr)


def ws_url(http_url: str, path: str) -> str:
    return http_url.replace("http://", "ws://") + path


async def login(client: httpx.AsyncClient, base_url: str, user_ids: Sequence[str]) -> list[str]:
    """One session per user, through `POST /internal/sessions`, a few at a time."""
    tokens = [""] * len(user_ids)
    gate = anyio.Semaphore(16)

    async def one(n: int) -> None:
        async with gate:
            response = await client.post(
                f"{base_url}/internal/sessions",
                json={"user_id": user_ids[n]},
                headers={"Authorization": f"Bearer {KEY}"},
            )
        if response.status_code != 201:
            raise RuntimeError(f"login failed: {response.status_code} {response.text}")
        tokens[n] = response.json()["token"]

    async with anyio.create_task_group() as tasks:
        for n in range(len(user_ids)):
            tasks.start_soon(one, n)
    return tokens


def frame_text(n: int, t: float | None = None) -> str:
    """The bytes ondoki sends for a bench event, for the peer and the floor to carry; `t`
    (default: now) is the time the latency client measures from."""
    event = {"type": "bench", "data": {"n": n, "t": time.time() if t is None else t}}
    frame = {"type": "notification", "epoch": "0123456789abcdef", "offset": n, "event": event}
    return json.dumps(frame, separators=(",", ":"))


def resp(*parts: bytes) -> bytes:
    """One Redis command in the wire protocol."""
    return b"".join([b"*%d\r\n" % len(parts), *(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)])


def percentile(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


class HttpPublisher:
    """`POST /internal/notifications` on raw HTTP/1.1 keep-alive connections: a publisher
    cheap enough not to be what is measured (an HTTP client library costs a millisecond of
    CPU per request, which at 200 msg/s queues requests in the bench process itself)."""

    def __init__(self, port: int, *, connections: int) -> None:
        self.port = port
        self.connections = connections
        # Used in turn (first in, first out), so none sits idle past hypercorn's keep-alive.
        self._idle: deque[anyio.abc.SocketStream] = deque()
        self._free = anyio.Semaphore(connections)
        self._head = (
            f"POST /internal/notifications HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Authorization: Bearer {KEY}\r\nContent-Type: application/json\r\n"
        ).encode()

    async def __aenter__(self) -> HttpPublisher:
        for _ in range(self.connections):
            self._idle.append(await anyio.connect_tcp("127.0.0.1", self.port))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for stream in self._idle:
            await stream.aclose()

    async def post(self, body: Callable[[], Any]) -> float:
        """Send `body()` (made once a connection is free, so its timestamps exclude waiting
        for one) and wait for the 202; the seconds that took."""
        async with self._free:
            stream = self._idle.popleft()
            try:
                for attempt in (1, 2):
                    sent = time.time()
                    payload = json.dumps(body(), separators=(",", ":")).encode()
                    request = b"%sContent-Length: %d\r\n\r\n%s" % (
                        self._head,
                        len(payload),
                        payload,
                    )
                    try:
                        await stream.send(request)
                        await self._response(stream)
                        return time.time() - sent
                    except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                        # The server closed an idle connection before reading the request:
                        # nothing was published; once more on a new connection.
                        await stream.aclose()
                        stream = await anyio.connect_tcp("127.0.0.1", self.port)
                        if attempt == 2:
                            raise
                raise AssertionError("unreachable")
            finally:
                self._idle.append(stream)

    @staticmethod
    async def _response(stream: anyio.abc.SocketStream) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            data += await stream.receive()
        head, _, body = data.partition(b"\r\n\r\n")
        status = head.split(b" ", 2)[1]
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(body) < length:
            body += await stream.receive()
        if status != b"202":
            raise RuntimeError(f"publish answered {status.decode()}: {body.decode()}")
