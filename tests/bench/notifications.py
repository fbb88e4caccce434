"""Notifications: latency across instances, fan-out to 1,000 WebSockets, idle memory.

Everything runs on this machine, against the bench's own redis-server, with real processes:
`ondoki serve` instances (REDIS_URL and ONDOKI_API_KEY set, application pings every hour so
they stay out of the way), the broadcaster peer (`tests/bench/peer_broadcaster.py`, hypercorn
in its own process), and ONE client process (spawned by multiprocessing, asyncio on uvloop
when it is installed) that holds every WebSocket, so that no client work runs in a server's
process. Its WebSockets are the bench's own minimal client (tests/bench/wsclient.py), which
costs far less per frame than the servers it measures. The bench process itself only publishes.

1. Latency: a client of instance B; the bench POSTs `/internal/notifications` to instance A
   at a steady 200 msg/s (open loop, raw HTTP/1.1 keep-alive so that the publisher costs
   little), each event carrying `time.time()` at sending. The client takes `time.time()` when
   the frame is handed to it: p50 and p99, after a 1 s warm-up.
2. Fan-out: 1,000 clients of ONE user on one instance (one publish reaches all 1,000 through
   one Redis channel), side by side with 1,000 WebSockets on the peer subscribed to one
   broadcaster channel: the same shape of work (one Redis message in, 1,000 frames out), and
   the frames are the same bytes. Publishing goes straight to Redis (ondoki's own publish path,
   the Lua script, for ondoki; PUBLISH for the peer, as `broadcast.publish` does) and is
   closed-loop: at most WINDOW messages ahead of the slowest client, so the figure is the
   rate a server sustains, not how much it can buffer. Rounds alternate ondoki and peer so
   that drift in the machine falls on both; the median round is reported, with the CPU share
   of each server and of the client process (the ratio holds only while the servers, not the
   client, are the limit). The floor is redis-py pub/sub with no WebSocket: one subscriber
   connection (in the client process) receiving the same messages, published as raw RESP
   batches; it is in messages/s into one process, to set against ondoki's published msg/s.
3. Idle capacity: 5,000 clients of 5,000 users on a fresh instance (one session each, so each
   connection also costs its user's channel subscription); memory per connection is
   (VmRSS with the clients - VmRSS before) / 5,000, once Redis shows every channel subscribed.
   The same on a fresh peer process (one broadcaster channel per connection).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import faulthandler
import functools
import importlib.util
import json
import multiprocessing
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread
import httpx2 as httpx
import redis.asyncio as aioredis

from ondoki.domain.notifications import NotificationHub
from ondoki_adapters.redis.pubsub import RedisPubSub
from tests.bench.report import Figure
from tests.bench.wsclient import WebSocket
from tests.e2e.process import ServeProcess, clean_env
from tests.redis_server import RedisServer, free_port

ROOT = Path(__file__).resolve().parents[2]
SECTION = "notifications"
KEY = "bench-api-key-0123456789abcdef"
GOAL = 1.5

LATENCY_RATE = 200.0  # msg/s
FANOUT_CLIENTS = 1000
IDLE_CLIENTS = 5000
#: Messages a publisher may be ahead of its slowest client (ondoki's per-client queue is 256).
WINDOW = 32
FLOOR_BATCH, FLOOR_WINDOW = 500, 20_000
ROUNDS = 3  # 2 in a quick run
#: Handshakes in flight at once. `ondoki serve` closes some clients with 1011 in a connection
#: storm (its Redis pool holds 64 and does not wait: "Too many connections"): at 50 about 9%
#: of them, at 16 up to 2%. Those are reopened and counted (`reopened_at_connect`).
CONNECT_CONCURRENCY = 16

#: Every frame that counts starts so; anything else (warm-up, ping) is counted apart.
PREFIX = '{"type":"notification"'
PREFIX_BYTES = PREFIX.encode()
GROUPS = 8
LATENCY, ONDOKI, PEER, FLOOR, IDLE_ONDOKI, IDLE_PEER = range(6)

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


# -- the client process ------------------------------------------------------------------------


@dataclass
class _Group:
    """Connections opened together; counted together."""

    latency: bool = False
    connections: list[WebSocket] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)  # notification frames, per connection
    frames: list[int] = field(default_factory=list)  # any frame, per connection
    total: int = 0
    seen: int = 0
    synced: int = -1
    closes: Counter[int] = field(default_factory=Counter)
    samples: list[tuple[int, float]] = field(default_factory=list)
    targets: list[tuple[str, str | None]] = field(default_factory=list)  # (url, token)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)  # the floor's subscriber
    redis: aioredis.Redis | None = None

    def message(self, index: int, payload: bytes, text: bool) -> None:
        """A message on connection `index`: counted on its bytes, decoded only for latency."""
        self.frames[index] += 1
        self.seen += 1
        if text and payload.startswith(PREFIX_BYTES):
            self.counts[index] += 1
            self.total += 1
            if self.latency:
                now = time.time()
                data = json.loads(payload)["event"]["data"]
                self.samples.append((data["n"], now - data["t"]))

    def closed(self, code: int) -> None:
        self.closes[code] += 1


class _Clients:
    """The client process: holds the WebSockets, counts frames, answers the bench's requests.

    Shared counters (per group): `totals` notification frames received in all, `lows` the
    fewest notification frames any one connection has, `anys` the fewest frames of any kind.
    """

    def __init__(
        self,
        conn: Connection,
        totals: ctypes.Array[ctypes.c_int64],
        lows: ctypes.Array[ctypes.c_int64],
        anys: ctypes.Array[ctypes.c_int64],
    ) -> None:
        self.conn = conn
        self.totals, self.lows, self.anys = totals, lows, anys
        self.groups: dict[int, _Group] = {}

    async def serve(self) -> None:
        def receive() -> dict[str, Any]:
            try:
                request: dict[str, Any] = self.conn.recv()
            except (EOFError, OSError):  # the bench went away
                return {"op": "exit"}
            return request

        sync = asyncio.create_task(self._sync())
        try:
            while True:
                # A thread reads: the pipe stays blocking (a big request is read whole).
                request = await asyncio.to_thread(receive)
                if request["op"] == "exit":
                    return
                try:
                    reply: tuple[str, Any] = ("ok", await self._handle(request))
                except Exception:
                    reply = ("error", traceback.format_exc())
                self.conn.send(reply)
        finally:
            sync.cancel()
            for number in list(self.groups):
                await self._close(number)

    async def _sync(self) -> None:
        while True:
            await asyncio.sleep(0.002)
            for number, group in self.groups.items():
                if group.seen == group.synced:
                    continue
                group.synced = group.seen
                self.totals[number] = group.total
                if group.counts:
                    self.lows[number] = min(group.counts)
                    self.anys[number] = min(group.frames)

    async def _handle(self, request: dict[str, Any]) -> Any:
        op = request["op"]
        if op == "connect":
            return await self._connect(**request["args"])
        if op == "floor":
            return await self._floor(**request["args"])
        group = self.groups[request["group"]]
        if op == "stats":
            return {
                "total": group.total,
                "low": min(group.counts, default=0),
                "open": sum(1 for c in group.connections if c.close_code is None),
                "closes": {str(code): n for code, n in group.closes.items()},
            }
        if op == "samples":
            return group.samples
        if op == "close":
            return await self._close(request["group"])
        raise ValueError(f"unknown request {op!r}")

    async def _connect(
        self,
        group: int,
        urls: Sequence[str],
        tokens: Sequence[str],
        count: int,
        latency: bool = False,
        settle: float = 1.0,
    ) -> dict[str, Any]:
        entry = self.groups.setdefault(group, _Group(latency=latency))
        gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
        errors: list[str] = []
        started = time.perf_counter()
        first = len(entry.connections)

        async def one(url: str, token: str | None, index: int | None) -> None:
            async with gate:
                try:
                    ws = await WebSocket.open(url, token)
                except Exception as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
                    return
            if index is None:
                index = len(entry.connections)
                entry.connections.append(ws)
                entry.targets.append((url, token))
                entry.counts.append(0)
                entry.frames.append(0)
            else:
                entry.connections[index] = ws
            ws.start(functools.partial(entry.message, index), entry.closed)

        await asyncio.gather(
            *(
                one(urls[n % len(urls)], tokens[n % len(tokens)] if tokens else None, None)
                for n in range(count)
            )
        )
        # A server may close clients while it sets them up (ondoki closes some with 1011 in
        # a connection storm): reconnect those, as a desktop client does, and say how many.
        reconnected = 0
        for _ in range(5):
            await asyncio.sleep(settle)
            dead = [
                index
                for index in range(first, len(entry.connections))
                if entry.connections[index].close_code is not None
            ]
            if not dead:
                break
            reconnected += len(dead)
            await asyncio.gather(*(one(*entry.targets[index], index) for index in dead))
        entry.seen += 1
        return {
            "opened": len(entry.connections) - first,
            "errors": errors[:3],
            "reconnected": reconnected,
            "seconds": time.perf_counter() - started,
        }

    async def _floor(self, group: int, url: str, channel: str) -> None:
        """One redis-py subscriber, counting what arrives on `channel`."""
        entry = self.groups.setdefault(group, _Group())
        entry.counts.append(0)
        entry.frames.append(0)
        client = entry.redis = aioredis.Redis.from_url(url)
        subscribed = asyncio.Event()

        async def listen() -> None:
            pubsub = client.pubsub()
            await pubsub.subscribe(channel)
            async for message in pubsub.listen():
                if message["type"] == "message":
                    entry.counts[0] += 1
                    entry.frames[0] += 1
                    entry.total += 1
                    entry.seen += 1
                elif message["type"] == "subscribe":
                    subscribed.set()

        entry.tasks.append(asyncio.create_task(listen()))
        await asyncio.wait_for(subscribed.wait(), 10)

    async def _close(self, number: int) -> dict[str, int]:
        group = self.groups.pop(number)
        for ws in group.connections:
            ws.abort()
        for task in group.tasks:
            task.cancel()
        await asyncio.gather(*group.tasks, return_exceptions=True)
        if group.redis is not None:
            await group.redis.aclose()
        self.totals[number] = self.lows[number] = self.anys[number] = 0
        return {"closed": len(group.connections)}


def _client_main(
    conn: Connection,
    totals: ctypes.Array[ctypes.c_int64],
    lows: ctypes.Array[ctypes.c_int64],
    anys: ctypes.Array[ctypes.c_int64],
) -> None:
    faulthandler.enable()
    raise_fd_limit()
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:
        pass
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(_Clients(conn, totals, lows, anys).serve())


class ClientProcess:
    """The bench's handle on the client process."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self.totals = context.RawArray(ctypes.c_int64, GROUPS)
        self.lows = context.RawArray(ctypes.c_int64, GROUPS)
        self.anys = context.RawArray(ctypes.c_int64, GROUPS)
        self._conn, child = context.Pipe()
        self.process = context.Process(
            target=_client_main,
            args=(child, self.totals, self.lows, self.anys),
            name="ondoki-bench-clients",
            daemon=True,
        )
        self.process.start()
        child.close()

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    async def call(self, op: str, *, within: float = 180, **args: Any) -> Any:
        request: dict[str, Any] = {"op": op, "args": args, "group": args.get("group")}

        def exchange() -> tuple[str, Any]:
            self._conn.send(request)
            if not self._conn.poll(within):
                raise TimeoutError(f"the client process did not answer {op!r} in {within} s")
            reply: tuple[str, Any] = self._conn.recv()
            return reply

        try:
            status, value = await anyio.to_thread.run_sync(exchange)
        except (EOFError, OSError) as exc:
            self.process.join(1)
            raise RuntimeError(
                f"the client process is gone (exit code {self.process.exitcode}) during {op!r}"
            ) from exc
        if status != "ok":
            raise RuntimeError(f"client process, {op!r}: {value}")
        return value

    async def connect(
        self,
        group: int,
        urls: Sequence[str],
        tokens: Sequence[str],
        count: int,
        *,
        latency: bool = False,
        settle: float = 1.0,
    ) -> int:
        """Open `count` WebSockets (`tokens` taken in turn); how many had to be reopened
        because the server closed them while setting them up."""
        result = await self.call(
            "connect", group=group, urls=list(urls), tokens=list(tokens), count=count,
            latency=latency, settle=settle,
        )  # fmt: skip
        if result["opened"] != count:
            raise RuntimeError(
                f"opened {result['opened']} of {count} WebSockets to {urls[0]}: "
                f"{'; '.join(result['errors'])}"
            )
        reconnected: int = result["reconnected"]
        return reconnected

    async def wait_low(self, group: int, at_least: int) -> None:
        """Until every connection of `group` has `at_least` notifications."""
        with anyio.move_on_after(30):
            while True:
                if self.lows[group] >= at_least:
                    return
                await anyio.sleep(0.005)
        stats = await self.call("stats", group=group)
        raise TimeoutError(f"group {group} stalled below {at_least} frames per client: {stats}")

    def close(self) -> None:
        if self.process.is_alive():
            with contextlib.suppress(OSError, ValueError):
                self._conn.send({"op": "exit"})
            self.process.join(10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)
        self._conn.close()


# -- processes under test ---------------------------------------------------------------------


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


def frame_text(n: int) -> str:
    """The bytes ondoki sends for a bench event, for the peer and the floor to carry."""
    event = {"type": "bench", "data": {"n": n, "t": time.time()}}
    frame = {"type": "notification", "epoch": "0123456789abcdef", "offset": n, "event": event}
    return json.dumps(frame, separators=(",", ":"))


def resp(*parts: bytes) -> bytes:
    """One Redis command in the wire protocol."""
    return b"".join([b"*%d\r\n" % len(parts), *(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)])


def percentile(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


# -- 1. latency ---------------------------------------------------------------------------------


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

    async def post(self, body: Callable[[], dict[str, Any]]) -> float:
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


async def latency(
    a: ServeProcess, b: ServeProcess, clients: ClientProcess, scale: float
) -> list[Figure]:
    warmup = int(LATENCY_RATE)  # one second
    count = warmup + int(LATENCY_RATE * max(2.0, 10.0 * scale))
    async with httpx.AsyncClient(timeout=10) as http:
        (token,) = await login(http, a.url, ["bench-latency"])
    # (`connect` waits a second: past the server's wait for a `resume`.)
    await clients.connect(LATENCY, [ws_url(b.url, "/ws")], [token], 1, latency=True)
    posts: list[float] = []
    pids = (a.process.pid, b.process.pid, os.getpid(), clients.pid)
    async with HttpPublisher(a.port, connections=16) as publisher:

        async def post(n: int) -> None:
            posts.append(
                await publisher.post(
                    lambda: {"user_id": "bench-latency", "type": "bench",
                             "data": {"n": n, "t": time.time()}}
                )
            )  # fmt: skip

        start = time.perf_counter()
        cpu_before = [cpu_seconds(pid) for pid in pids]
        async with anyio.create_task_group() as tasks:
            for n in range(count):
                delay = start + n / LATENCY_RATE - time.perf_counter()
                if delay > 0:
                    await anyio.sleep(delay)
                tasks.start_soon(post, n)
        elapsed = time.perf_counter() - start
        cpu = [(cpu_seconds(pid) - c) / elapsed for pid, c in zip(pids, cpu_before, strict=True)]
        with contextlib.suppress(TimeoutError):
            await clients.wait_low(LATENCY, count)
    samples: list[tuple[int, float]] = await clients.call("samples", group=LATENCY)
    stats = await clients.call("stats", group=LATENCY)
    await clients.call("close", group=LATENCY)
    measured = [seconds * 1000 for n, seconds in samples if n >= warmup]
    if not measured:
        raise RuntimeError(f"the latency client received nothing: {stats}")
    detail = {
        "rate_per_s": LATENCY_RATE,
        "samples": float(len(measured)),
        "missing": float(count - len(samples)),
        "max_ms": max(measured),
        "post_p50_ms": statistics.median(posts) * 1000,
        "cpu_a": cpu[0],
        "cpu_b": cpu[1],
        "cpu_publisher": cpu[2],
        "cpu_client": cpu[3],
    }
    name = f"latency, POST on A to a client on B at {LATENCY_RATE:.0f} msg/s"
    return [
        Figure(SECTION, f"{name}: p50", percentile(measured, 50), "ms", detail=detail),
        Figure(SECTION, f"{name}: p99", percentile(measured, 99), "ms", detail=detail),
    ]


# -- 2. fan-out ---------------------------------------------------------------------------------


@dataclass
class Round:
    delivered_per_s: float
    server_cpu: float
    client_cpu: float
    redis_cpu: float
    published: int
    undelivered: int


async def drive(
    publish: Callable[[int], Awaitable[int]],
    group: int,
    clients: ClientProcess,
    *,
    seconds: float,
    ramp: float,
    window: int,
    pids: tuple[int, int, int],
) -> Round:
    """Publish closed-loop (at most `window` ahead of the slowest receiver) for `ramp` +
    `seconds`; the delivery rate and CPU shares over the last `seconds`."""
    base = clients.lows[group]
    published = 0
    start = time.perf_counter()
    first: tuple[float, int, list[float]] | None = None
    while True:
        now = time.perf_counter()
        if first is None and now - start >= ramp:
            first = (now, clients.totals[group], [cpu_seconds(p) for p in pids])
        if now - start >= ramp + seconds:
            break
        if published - (clients.lows[group] - base) < window:
            published += await publish(published)
        else:
            await anyio.sleep(0.0005)
    end, total, cpus = time.perf_counter(), clients.totals[group], [cpu_seconds(p) for p in pids]
    assert first is not None
    elapsed = end - first[0]
    shares = [(c - c0) / elapsed for c, c0 in zip(cpus, first[2], strict=True)]
    with contextlib.suppress(TimeoutError):  # drain: what never arrives is reported
        await clients.wait_low(group, base + published)
    return Round(
        delivered_per_s=(total - first[1]) / elapsed,
        server_cpu=shares[0],
        client_cpu=shares[1],
        redis_cpu=shares[2],
        published=published,
        undelivered=base + published - clients.lows[group],
    )


async def fanout(
    server: RedisServer,
    a: ServeProcess,
    peer: PeerProcess | None,
    clients: ClientProcess,
    scale: float,
) -> list[Figure]:
    seconds, ramp = max(1.0, 3.0 * scale), 0.5
    redis_pid = server.process.pid if server.process else os.getpid()
    async with httpx.AsyncClient(timeout=10) as http:
        (token,) = await login(http, a.url, ["bench-fanout"])
    reopened = {"ondoki": 0, "peer": 0}
    reopened["ondoki"] = await clients.connect(
        ONDOKI, [ws_url(a.url, "/ws")], [token], FANOUT_CLIENTS
    )

    pubsub = RedisPubSub(server.url(0))
    hub = NotificationHub(pubsub)
    bare = aioredis.Redis.from_url(server.url(0))

    async def publish_ondoki(n: int) -> int:
        await hub.publish("bench-fanout", "bench", {"n": n, "t": time.time()})
        return 1

    async def publish_peer(n: int) -> int:
        await bare.publish("bench-fanout", frame_text(n))  # what `broadcast.publish` does
        return 1

    # The floor's publisher must outrun one redis-py subscriber: a batch of PUBLISH commands
    # encoded once, written as raw RESP on its own connection; the replies are only counted.
    batch = b"".join(
        resp(b"PUBLISH", b"bench-floor", frame_text(k).encode()) for k in range(FLOOR_BATCH)
    )
    raw = await anyio.connect_tcp("127.0.0.1", server.port)
    if server.password:
        await raw.send(resp(b"AUTH", server.password.encode()))
        await raw.receive()

    async def publish_floor(n: int) -> int:
        await raw.send(batch)
        replies = 0
        while replies < FLOOR_BATCH:
            replies += (await raw.receive()).count(b"\n")  # one ":<receivers>\r\n" each
        return FLOOR_BATCH

    async def warm_peer() -> None:
        """Until every peer client has had a frame (a PUBLISH before a subscription is live is
        lost: keep publishing; these frames are not counted as notifications)."""
        with anyio.fail_after(30):
            while clients.anys[PEER] < 1:
                await bare.publish("bench-fanout", '{"type":"warmup"}')
                await anyio.sleep(0.05)

    rounds: dict[str, list[Round]] = {"ondoki": [], "peer": []}
    try:
        # Every client subscribed and delivering before anything is measured.
        await publish_ondoki(0)
        await clients.wait_low(ONDOKI, 1)
        if peer is not None:
            # broadcaster loses a subscriber that joins a channel while the channel's first
            # subscriber is still subscribing (`Broadcast.subscribe` awaits, then replaces the
            # set of queues): one client first, then the rest, as a long-lived channel has it.
            url = ws_url(peer.url, "/ws/bench-fanout")
            reopened["peer"] += await clients.connect(PEER, [url], [], 1, settle=0.1)
            await warm_peer()
            reopened["peer"] += await clients.connect(PEER, [url], [], FANOUT_CLIENTS - 1)
            await warm_peer()
        for _ in range(ROUNDS if scale >= 1 else ROUNDS - 1):
            rounds["ondoki"].append(
                await drive(
                    publish_ondoki, ONDOKI, clients, seconds=seconds, ramp=ramp,
                    window=WINDOW, pids=(a.process.pid, clients.pid, redis_pid),
                )
            )  # fmt: skip
            if peer is not None:
                rounds["peer"].append(
                    await drive(
                        publish_peer, PEER, clients, seconds=seconds, ramp=ramp,
                        window=WINDOW, pids=(peer.process.pid, clients.pid, redis_pid),
                    )
                )  # fmt: skip
        ondoki_stats = await clients.call("stats", group=ONDOKI)
        await clients.call("close", group=ONDOKI)
        if peer is not None:
            await clients.call("close", group=PEER)
        await clients.call("floor", group=FLOOR, url=server.url(0), channel="bench-floor")
        floor = await drive(
            publish_floor, FLOOR, clients, seconds=seconds, ramp=ramp, window=FLOOR_WINDOW,
            pids=(clients.pid, os.getpid(), redis_pid),
        )  # fmt: skip
        await clients.call("close", group=FLOOR)
    finally:
        await pubsub.aclose()
        await bare.aclose()
        await raw.aclose()

    def summary(name: str) -> tuple[float, dict[str, float]]:
        these = rounds[name]
        rates = [r.delivered_per_s for r in these]
        middle = sorted(these, key=lambda r: r.delivered_per_s)[len(these) // 2]
        return middle.delivered_per_s, {
            "min_per_s": min(rates),
            "max_per_s": max(rates),
            "published_msg_per_s": middle.delivered_per_s / FANOUT_CLIENTS,
            "server_cpu": middle.server_cpu,
            "server_cpu_us_per_frame": middle.server_cpu / middle.delivered_per_s * 1e6,
            "client_cpu": middle.client_cpu,
            "redis_cpu": middle.redis_cpu,
            "undelivered": float(sum(r.undelivered for r in these)),
            "reopened_at_connect": float(reopened[name]),
        }

    ours, ours_detail = summary("ondoki")
    closes = ondoki_stats["closes"]
    # Every connection that ended so far, less those reopened at connect: closed while measured.
    ours_detail["closed_during_run"] = float(sum(closes.values()) - reopened["ondoki"])
    what = f"fan-out, 1 user x {FANOUT_CLIENTS:,} clients"
    figures = [Figure(SECTION, f"{what}: ondoki", ours, "frames/s", detail=ours_detail)]
    if peer is not None:
        theirs, theirs_detail = summary("peer")
        figures.append(
            Figure(SECTION, f"{what}: broadcaster peer", theirs, "frames/s", detail=theirs_detail)
        )
        ratio = ours / theirs
        figures.append(
            Figure(
                SECTION,
                "fan-out ondoki / broadcaster peer",
                ratio,
                "x",
                goal=f">= {GOAL}x",
                met=ratio >= GOAL,
            )
        )
    figures.append(
        Figure(
            SECTION,
            "floor: redis-py pub/sub into one process (no WebSocket)",
            floor.delivered_per_s,
            "msg/s",
            detail={
                "subscriber_cpu": floor.server_cpu,
                "publisher_cpu": floor.client_cpu,
                "redis_cpu": floor.redis_cpu,
            },
        )
    )
    # The ratio means something only if the servers, not the client process, were the limit.
    figures.append(
        Figure(SECTION, "fan-out CPU: ondoki server", ours_detail["server_cpu"] * 100, "%")
    )
    if peer is not None:
        figures.append(
            Figure(SECTION, "fan-out CPU: broadcaster peer server",
                   theirs_detail["server_cpu"] * 100, "%")
        )  # fmt: skip
    busiest = max(r.client_cpu for r in rounds["ondoki"] + rounds["peer"])
    figures.append(
        Figure(SECTION, "fan-out CPU: client process, busiest round", busiest * 100, "%",
               goal="< 90% (else the client, not a server, was the limit)", met=busiest < 0.9)
    )  # fmt: skip
    if busiest >= 0.9:
        print(
            f"notifications: the client process used {busiest:.0%} of a core in a fan-out "
            "round: it may have been the limit there, not the server",
            file=sys.stderr,
        )
    return figures


# -- 3. idle capacity ---------------------------------------------------------------------------


async def idle_memory(
    server: RedisServer,
    clients: ClientProcess,
    group: int,
    pid: int,
    urls: Sequence[str],
    tokens: Sequence[str],
    count: int,
    channels: str,
) -> dict[str, float]:
    """KiB per connection once `count` clients are connected and subscribed."""
    # Warm up: the code paths of a connection are loaded before the baseline is read.
    await clients.connect(group, urls[:10], tokens[:10], 10, settle=0.6)
    await clients.call("close", group=group)
    await anyio.sleep(0.5)
    before = rss_kib(pid)
    started = time.perf_counter()
    reopened = await clients.connect(group, urls, tokens, count)
    redis = server.client()
    try:
        with anyio.fail_after(60):
            while True:
                subscribed = await anyio.to_thread.run_sync(redis.pubsub_channels, channels)
                if len(subscribed) >= count:
                    break
                await anyio.sleep(0.1)
    finally:
        redis.close()
    connected = time.perf_counter() - started
    await anyio.sleep(1.0)
    after = rss_kib(pid)
    stats = await clients.call("stats", group=group)
    await clients.call("close", group=group)
    if stats["open"] != count:
        raise RuntimeError(f"only {stats['open']} of {count} idle clients stayed open: {stats}")
    return {
        "kib_per_connection": (after - before) / count,
        "rss_before_mib": before / 1024,
        "rss_after_mib": after / 1024,
        "clients": float(count),
        "connect_seconds": connected,
        "reopened_at_connect": float(reopened),
    }


async def idle(
    server: RedisServer,
    c: ServeProcess,
    peer: PeerProcess | None,
    clients: ClientProcess,
    scale: float,
) -> list[Figure]:
    count = max(200, int(IDLE_CLIENTS * scale))
    users = [f"bench-idle-{n}" for n in range(count)]
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=16), timeout=30) as http:
        tokens = await login(http, c.url, users)
    ours = await idle_memory(
        server, clients, IDLE_ONDOKI, c.process.pid, [ws_url(c.url, "/ws")] * count,
        tokens, count, "ondoki:notify:bench-idle-*",
    )  # fmt: skip
    stop(c.process)
    what = f"idle, {count:,} clients of {count:,} users"
    figures = [
        Figure(SECTION, f"{what}: ondoki memory per connection", ours["kib_per_connection"],
               "KiB", detail=ours),
    ]  # fmt: skip
    if peer is not None:
        theirs = await idle_memory(
            server, clients, IDLE_PEER, peer.process.pid,
            [ws_url(peer.url, f"/ws/{user}") for user in users], [], count, "bench-idle-*",
        )  # fmt: skip
        figures.append(
            Figure(SECTION, f"{what}: broadcaster peer memory per connection",
                   theirs["kib_per_connection"], "KiB", detail=theirs)
        )  # fmt: skip
        figures.append(
            Figure(
                SECTION,
                "idle memory per connection, ondoki / broadcaster peer",
                ours["kib_per_connection"] / theirs["kib_per_connection"],
                "x",
            )
        )
    return figures


# -- the section ---------------------------------------------------------------------------------


async def run(server: RedisServer, *, scale: float = 1.0) -> list[Figure]:
    raise_fd_limit()  # inherited by every process started below
    if not HAVE_BROADCASTER:
        print(
            f"notifications: broadcaster is not installed, the peer figures are skipped "
            f"(pip install '{BROADCASTER_PIP}')",
            file=sys.stderr,
        )
    env = clean_env(
        REDIS_URL=server.url(0),
        ONDOKI_API_KEY=KEY,
        ONDOKI_WS_PING_INTERVAL_SECONDS="3600",
        ONDOKI_SHUTDOWN_GRACE_SECONDS="2",
        ONDOKI_LOG_LEVEL="warning",
    )
    figures: list[Figure] = []
    processes: list[subprocess.Popen[bytes]] = []
    clients: ClientProcess | None = None
    with tempfile.TemporaryDirectory(prefix="ondoki-bench-") as tmp:
        workdir = Path(tmp)
        try:
            a, b, c = (ServeProcess(workdir, env) for _ in range(3))
            processes += [a.process, b.process, c.process]
            peer = peer_idle = None
            if HAVE_BROADCASTER:
                peer, peer_idle = (PeerProcess(workdir, server.url(0)) for _ in range(2))
                processes += [peer.process, peer_idle.process]
            clients = ClientProcess()
            for started in (a, b, c, peer, peer_idle):
                if started is not None:
                    await anyio.to_thread.run_sync(started.wait_ready)
            figures += await latency(a, b, clients, scale)
            stop(b.process)
            figures += await fanout(server, a, peer, clients, scale)
            stop(a.process)
            if peer is not None:
                stop(peer.process)
            figures += await idle(server, c, peer_idle, clients, scale)
        except BaseException:
            show_warnings(workdir)  # the folder, and the servers' logs, are about to go
            raise
        finally:
            if clients is not None:
                clients.close()
            for process in processes:
                stop(process)
    return figures
