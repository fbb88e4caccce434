"""Notifications: latency across instances, fan-out in three shapes, a steady load, idle
memory; one module per figure.

Everything runs on this machine, against the bench's own redis-server, with real processes:
`ondoki serve` instances (REDIS_URL and ONDOKI_API_KEY set, application pings every hour so
they stay out of the way), the broadcaster peer (`tests/bench/peer_broadcaster.py`, hypercorn
in its own process), and ONE client process (`clients`) that holds every WebSocket, so that no
client work runs in a server's process. The bench process itself only publishes.

- `latency`: POST on instance A, a client on B, at a steady 200 msg/s: p50 and p99;
- `fanout`: 1,000 WebSockets on B in three shapes (1 x 1,000, 100 x 10, 1,000 x 1), published
  to over HTTP (single events, batches) and through the publisher library, against the peer;
- `steady`: 1,000 events/s over 1,000 users, p99 against the peer's (and the delivery path
  alone, without the publish's history write);
- `idle`: memory per connection at 5,000 idle WebSockets, against the peer's;
- `trio`: fan-out and idle memory again with `--worker-class trio`;
- `publishing`: sequential `RedisPublisher.publish` on trio against asyncio, straight to
  Redis (run first, while no `ondoki serve` runs).

`python -m tests.bench notifications:steady` (or `notifications:latency,fanout`) runs only
those parts.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import anyio
import anyio.to_thread

from tests.bench.notifications.clients import ClientProcess
from tests.bench.notifications.common import (
    BROADCASTER_PIP,
    HAVE_BROADCASTER,
    KEY,
    PeerProcess,
    raise_fd_limit,
    show_warnings,
    stop,
)
from tests.bench.notifications.fanout import fanout
from tests.bench.notifications.idle import idle
from tests.bench.notifications.latency import latency
from tests.bench.notifications.publishing import publishing
from tests.bench.notifications.steady import steady
from tests.bench.report import Figure, print_figures
from tests.e2e.process import ServeProcess, clean_env
from tests.redis_server import RedisServer

PARTS = ("publishing", "latency", "fanout", "steady", "idle", "trio")


async def run(
    server: RedisServer, *, scale: float = 1.0, parts: Sequence[str] = PARTS
) -> list[Figure]:
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise ValueError(f"unknown notification parts {sorted(unknown)}; choose from {PARTS}")
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
        # One user with 1,000 sockets is one of the fan-out shapes (the default bound is 64).
        ONDOKI_WS_MAX_SOCKETS_PER_USER="100000",
        ONDOKI_SHUTDOWN_GRACE_SECONDS="2",
        ONDOKI_LOG_LEVEL="warning",
    )
    figures: list[Figure] = []
    if "publishing" in parts:
        figures += shown(await publishing(server, scale))
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
            if "latency" in parts:
                figures += shown(await latency(a, b, clients, scale))
            if "fanout" in parts:
                figures += shown(await fanout(server, a, b, peer, clients, scale))
            if "steady" in parts:
                figures += shown(await steady(server, a, b, peer, clients, scale))
            stop(a.process)
            stop(b.process)
            if peer is not None:
                stop(peer.process)
            if "idle" in parts:
                figures += shown(await idle(server, c, peer_idle, clients, scale))
            if "trio" in parts:
                figures += await on_trio(server, workdir, env, clients, processes, scale)
        except BaseException:
            show_warnings(workdir)  # the folder, and the servers' logs, are about to go
            raise
        finally:
            if clients is not None:
                clients.close()
            for process in processes:
                stop(process)
    return figures


async def on_trio(
    server: RedisServer,
    workdir: Path,
    env: dict[str, str],
    clients: ClientProcess,
    processes: list[subprocess.Popen[bytes]],
    scale: float,
) -> list[Figure]:
    """Fan-out and idle memory again with `--worker-class trio` (coredis; frames written
    straight to each trio socket, see web/direct.py's `TrioTransport`), beside the
    asyncio figures: the peer runs on asyncio only, so these are reported, not compared."""
    a, b, c = (ServeProcess(workdir, env, "--worker-class", "trio") for _ in range(3))
    processes += [a.process, b.process, c.process]
    for started in (a, b, c):
        await anyio.to_thread.run_sync(started.wait_ready)
    fanned = await fanout(server, a, b, None, clients, scale)
    stop(a.process)
    stop(b.process)
    figures = fanned + await idle(server, c, None, clients, scale)
    return shown([replace(f, name=f"trio: {f.name}") for f in figures if "floor" not in f.name])


def shown(figures: list[Figure]) -> list[Figure]:
    """`figures`, printed as they come: a long run that fails later keeps them."""
    print_figures(figures)
    return figures
