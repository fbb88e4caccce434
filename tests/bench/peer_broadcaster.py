"""The fan-out peer: WebSockets over encode/broadcaster's Redis backend, built the common way.

A Starlette app served by hypercorn in its own process, as broadcaster's README builds its
chat example: one `Broadcast` on its Redis backend per process, connected in the lifespan; each
WebSocket at `/ws/{channel}` is accepted, subscribes with `broadcast.subscribe(channel)` and
forwards every message's text as it comes, while a receiver task notices the client leaving.
Nothing of ondoki is used here (no auth, no history, no per-client bound: broadcaster has
none of these). One fix to broadcaster is needed for it to deliver at all: see `_RedisBackend`.

    REDIS_URL=redis://127.0.0.1:PORT/0 python -m tests.bench.peer_broadcaster HTTP_PORT

`broadcaster` is not a project dependency: the benchmark skips the peer when it is missing
(`pip install 'broadcaster[redis]==0.3.1'`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from broadcaster import Broadcast  # type: ignore[import-not-found, unused-ignore]
from broadcaster._backends.redis import (  # type: ignore[import-not-found, unused-ignore]
    RedisBackend,
)
from hypercorn.asyncio import serve
from hypercorn.config import Config
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket


class _RedisBackend(RedisBackend):  # type: ignore[misc, unused-ignore]
    """broadcaster's Redis backend with its `subscribe` in the working order.

    broadcaster 0.3.1 sets the `_ready` event before awaiting redis-py's `subscribe`, which
    records the channel only after it has sent the command. On redis-py 8 that send yields,
    the listener task wakes, finds nothing subscribed, ends `listen()` at once and waits for
    `_ready` again, which only the next *new* channel sets: nothing is ever delivered (0 of
    20 tries in one process). Recording first and waking the listener second is the whole
    change; it adds no speed.
    """

    async def subscribe(self, channel: str) -> None:
        await self._pubsub.subscribe(channel)
        self._ready.set()


def create_app(redis_url: str) -> Starlette:
    broadcast = Broadcast(backend=_RedisBackend(redis_url))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await broadcast.connect()
        try:
            yield
        finally:
            await broadcast.disconnect()

    async def receiver(websocket: WebSocket) -> None:
        async for _ in websocket.iter_text():
            pass  # clients send nothing that matters here; the loop ends when they leave

    async def sender(websocket: WebSocket, channel: str) -> None:
        async with broadcast.subscribe(channel=channel) as subscriber:
            # broadcaster annotates `Subscriber.__aiter__` as possibly None: hence the ignores.
            async for event in subscriber:  # type: ignore[union-attr, unused-ignore]
                await websocket.send_text(event.message)  # type: ignore[union-attr, unused-ignore]

    async def endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        channel = websocket.path_params["channel"]
        async with anyio.create_task_group() as tasks:

            async def run_receiver() -> None:
                await receiver(websocket)
                tasks.cancel_scope.cancel()

            tasks.start_soon(run_receiver)
            await sender(websocket, channel)

    return Starlette(routes=[WebSocketRoute("/ws/{channel}", endpoint)], lifespan=lifespan)


async def main(port: int, redis_url: str) -> None:
    # The same hypercorn settings `ondoki serve` uses, so that only the app differs.
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    config.graceful_timeout = 2
    config.websocket_max_message_size = 4096
    config.errorlog = logging.getLogger("hypercorn.error")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await serve(create_app(redis_url), config, shutdown_trigger=stop.wait)  # type: ignore[arg-type]


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    asyncio.run(main(int(sys.argv[1]), os.environ["REDIS_URL"]))
