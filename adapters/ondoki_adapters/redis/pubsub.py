"""`RedisPubSub`: the PubSub port on Redis: history in streams, live delivery over pub/sub.

Layout, for a namespace `ns` and a channel `c` (every key expires `history_ttl` after the
channel's last publish):

- `ns:meta:c`, a hash: `epoch` (random) and `offset` (the latest message's offset);
- `ns:history:c`, a stream with explicit entry ids `0-<offset>`, trimmed to `history_size`;
- `ns:idem:<sha256(c, key)>`, the position an idempotency key was first published at;
- `ns:notify:c`, the pub/sub channel, carrying msgpack `(epoch, offset, payload)`.

One Lua script publishes (so offsets, history and pub/sub order always agree; it is
`ondoki_adapters.redis.publisher`'s, shared with the publisher library) and another reads a
position and the history after it. Each instance holds one pub/sub connection,
owned by `run`; whenever it is lost, every subscription is repaired from history.
"""

from __future__ import annotations

import logging
import random
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import TypeVar

import anyio
import anyio.lowlevel
import msgspec
import redis.asyncio as aioredis
import redis.exceptions as rex
from anyio.abc import TaskGroup, TaskStatus

from ondoki.adapterkit.cursor import Cursor
from ondoki.adapterkit.subscription import REPLAY_PAGE_ENTRIES, BufferedSubscription
from ondoki.errors import InvalidInput, PubSubError
from ondoki.models import Gap, Message, Position, PubSubStats
from ondoki.ports.pubsub import Publication
from ondoki_adapters.redis.connection import call, describe, milliseconds
from ondoki_adapters.redis.driver import (
    Driver,
    PubSubConnection,
    driver_for,
)
from ondoki_adapters.redis.publisher import RedisChannels

T = TypeVar("T")

log = logging.getLogger("ondoki.pubsub")

# KEYS: meta, history. ARGV: candidate epoch, ttl (ms), the caller's epoch after a '='
# ('' for none: an empty epoch is one the channel never had), first offset wanted, most
# entries, most payload bytes. Returns {epoch, latest offset, one page of entries from that
# offset if the epoch matches, or from offset 1 if it changed (none without an epoch)}:
# at most that many entries, and no more payload bytes than that (but at least one entry).
# A channel without state gets its epoch here, like MemoryPubSub.
_READ = """
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'offset', 0)
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
local latest = tonumber(redis.call('HGET', KEYS[1], 'offset') or '0')
local first = nil
if ARGV[3] == '' then
  -- A fresh subscription only needs the position.
elseif epoch ~= string.sub(ARGV[3], 2) then
  -- A changed epoch is read from its start (see ondoki.adapterkit.cursor.Cursor.catch_up).
  first = '0-1'
elseif tonumber(ARGV[4]) <= latest then
  first = '0-' .. ARGV[4]
end
local entries = {}
if first then
  local found = redis.call('XRANGE', KEYS[2], first, '+', 'COUNT', ARGV[5])
  local size, limit = 0, tonumber(ARGV[6])
  for i, entry in ipairs(found) do
    size = size + #entry[2][2]
    if i > 1 and size > limit then break end
    entries[i] = entry
  end
end
return {epoch, latest, entries}
"""

_decode_envelope = msgspec.msgpack.Decoder(tuple[str, int, bytes]).decode

# How many channels one SUBSCRIBE or UNSUBSCRIBE names, after a reconnect of a busy instance.
_BATCH = 1000


class _Unhealthy(Exception):
    """The pub/sub connection did not answer a PING in time (half-open or stalled)."""


# Failures after which the pub/sub connection is dropped and made again.
_DROPS = (rex.RedisError, OSError, _Unhealthy)


class _Channel:
    """This instance's subscribers of one channel, and the channel's state on the pub/sub
    connection: `sent` when SUBSCRIBE is the last command sent for it, `pending` acks not
    yet read, `live` once the server confirmed the latest SUBSCRIBE."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.subscribers: set[_RedisSubscription] = set()
        self.sent = False
        self.pending = 0
        self.live = False

    def reset(self) -> None:
        self.sent, self.pending, self.live = False, 0, False


class _Counters:
    """What `RedisPubSub.stats` reports, counted by the adapter and its subscriptions."""

    def __init__(self) -> None:
        self.reconnects = 0
        self.repaired = 0
        self.unrepaired_gaps = 0


class _RedisSubscription(BufferedSubscription):
    """One subscriber's view of a channel on this instance's pub/sub connection."""

    def __init__(self, pubsub: RedisPubSub, channel: _Channel, counters: _Counters) -> None:
        super().__init__(Cursor(channel.name, "", 0), pubsub.buffer, pubsub.replay_page_bytes)
        self._pubsub = pubsub
        self._channel = channel
        self._counters = counters

    async def _wait_live(self) -> None:
        while not self._channel.live:
            if self._closed:
                raise PubSubError(f"subscription to {self._channel.name!r} was closed")
            await self._sleep()

    async def _open(self, since: Position | None) -> None:
        pubsub, name = self._pubsub, self._channel.name
        # Live first, history second: anything published after the read arrives live.
        with anyio.move_on_after(pubsub.timeout):
            await self._wait_live()
        if not self._channel.live:
            raise PubSubError(f"subscribe to {name!r}: {pubsub._unavailable()}")
        drops = self._drops
        if since is None:
            epoch, latest, _ = await pubsub._read(name, None, 0)
            self._cursor = Cursor(name, epoch, latest)
        else:
            self._cursor = Cursor(name, since.epoch, since.offset)
            epoch, latest, entries = await pubsub._read(name, since.epoch, since.offset)
            if drops == self._drops:
                self._stale = False
            self._queue_ready(self._cursor.catch_up(epoch, latest, entries), latest)
            return
        if drops == self._drops:
            self._stale = False

    async def _repair(self) -> None:
        if not self._channel.live:
            # Reading history now could miss what is published before SUBSCRIBE is back.
            await self._sleep()
            return
        drops, cursor = self._drops, self._cursor
        try:
            snapshot = await self._pubsub._read(cursor.channel, cursor.epoch, cursor.offset)
        except PubSubError:
            if drops == self._drops:
                raise
            return  # the connection went away meanwhile: repair once it is back
        if drops == self._drops:
            self._stale = False
        repaired = cursor.catch_up(*snapshot)
        self._counters.repaired += sum(isinstance(d, Message) for d in repaired)
        self._counters.unrepaired_gaps += sum(isinstance(d, Gap) for d in repaired)
        self._queue_ready(repaired, snapshot[1])


class RedisPubSub:
    """The PubSub port on Redis, for many instances sharing one server (DB 0).

    Pass an already-built redis-py `client` (asyncio only; left open by `aclose`) or a `url`
    (the running event loop's driver, `ondoki_adapters.redis.driver`). The client must
    return bytes (`decode_responses=False`). Publishing needs nothing else; subscribing
    needs `run` going: it owns this instance's single pub/sub connection, SUBSCRIBEs while a
    channel has local subscribers, PINGs it every `health_interval` seconds (no answer in
    `health_timeout` counts as a lost connection) and reconnects with jittered backoff up
    to `reconnect_max` seconds between attempts. After a reconnect each subscription reads
    history from its last delivered offset, or yields a `Gap` when history cannot cover it.

    History is replayed in pages of at most `replay_page_bytes` of payloads (and
    `REPLAY_PAGE_ENTRIES` entries), each read when the subscriber has taken the one before.
    Each subscription buffers up to `buffer` live messages and `replay_page_bytes` of their
    payloads; past that it is refilled from history.

    `timeout` bounds connecting and how long `subscribe` waits for the server to confirm.
    Publishing without an idempotency key is never retried (a lost reply could mean it was
    stored); with one, retries are safe and done. While the pub/sub connection is down,
    subscriptions wait for it; one whose history read fails while it is up raises
    `PubSubError` from iteration (the caller resubscribes from its last position).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        client: aioredis.Redis | None = None,
        namespace: str = "ondoki",
        history_size: int = 1000,
        history_ttl: float = 3600.0,
        buffer: int = 1024,
        timeout: float = 5.0,
        health_interval: float = 5.0,
        health_timeout: float = 3.0,
        reconnect_max: float = 2.0,
        replay_page_bytes: int = 256 * 1024,
    ) -> None:
        if history_size < 1 or buffer < 1 or not history_ttl > 0:
            raise ValueError("history_size, history_ttl and buffer must be positive")
        if not (timeout > 0 and health_interval > 0 and health_timeout > 0):
            raise ValueError("timeout, health_interval and health_timeout must be positive")
        self.driver: Driver = driver_for("RedisPubSub", url, client, timeout=timeout)
        self.namespace = namespace
        self.history_size = history_size
        self.history_ttl = history_ttl
        self.buffer = buffer
        self.timeout = timeout
        self.health_interval = health_interval
        self.health_timeout = health_timeout
        self.reconnect_max = reconnect_max
        if replay_page_bytes < 1:
            raise ValueError("replay_page_bytes must be positive")
        self.replay_page_bytes = replay_page_bytes
        self._counters = _Counters()
        self._ttl_ms = milliseconds(history_ttl)
        self.channels = RedisChannels(
            self.driver,
            namespace=namespace,
            history_size=history_size,
            history_ttl=history_ttl,
            timeout=timeout,
        )
        self._read_script = self.driver.script(_READ)
        self._channels: dict[str, _Channel] = {}
        self._running = False
        self._closed = False
        self._connected = False
        self._last_error = "not connected yet"
        self._failures = 0
        self._run_scope: anyio.CancelScope | None = None
        # Made in `run`: anyio primitives need the event loop.
        self._write_lock: anyio.Lock | None = None
        self._plan_changed: anyio.Event | None = None
        self._pong: anyio.Event | None = None
        self._state_changed: anyio.Event | None = None

    # -- keys and commands -----------------------------------------------------------------

    def _key(self, kind: str, channel: str) -> str:
        return self.channels.calls.key(kind, channel)

    async def _call(
        self, what: str, operation: Callable[[], Awaitable[T]], *, idempotent: bool = True
    ) -> T:
        if self._closed:
            raise PubSubError(f"{what}: pub/sub is closed")
        return await call(
            operation, error=PubSubError, what=what, idempotent=idempotent, deadline=self.timeout
        )

    async def _read(
        self, channel: str, epoch: str | None, offset: int
    ) -> tuple[str, int, list[tuple[int, bytes]]]:
        """The channel's epoch, latest offset, and (in `epoch`) one page of the history after
        `offset`."""
        keys = [self._key("meta", channel), self._key("history", channel)]
        args: list[str | int] = [
            secrets.token_hex(8),
            self._ttl_ms,
            "" if epoch is None else "=" + epoch,
            offset + 1,
            REPLAY_PAGE_ENTRIES,
            self.replay_page_bytes,
        ]
        reply = await self._call(
            f"pubsub read {channel!r}", lambda: self._read_script(keys=keys, args=args)
        )
        raw_epoch, latest, entries = reply
        history = [(int(entry_id.split(b"-")[1]), fields[1]) for entry_id, fields in entries]
        return raw_epoch.decode(), int(latest), history

    def _unavailable(self) -> str:
        if not self._running:
            return "not running"
        return f"the pub/sub connection is not ready (last error: {self._last_error})"

    def _signal(self) -> None:
        if self._state_changed is not None:
            self._state_changed.set()
            self._state_changed = anyio.Event()

    def _plan(self) -> None:
        if self._plan_changed is not None:
            self._plan_changed.set()

    # -- the port --------------------------------------------------------------------------

    async def publish(
        self, channel: str, payload: bytes, *, idempotency_key: str | None = None
    ) -> Position:
        if self._closed:
            raise PubSubError(f"pubsub publish {channel!r}: pub/sub is closed")
        return await self.channels.publish(channel, payload, idempotency_key=idempotency_key)

    async def publish_many(self, publications: Sequence[Publication]) -> list[Position]:
        if self._closed:
            raise PubSubError("pubsub publish: pub/sub is closed")
        return await self.channels.publish_many(publications)

    @asynccontextmanager
    async def subscribe(
        self, channel: str, *, since: Position | None = None
    ) -> AsyncIterator[_RedisSubscription]:
        if self._closed:
            raise PubSubError(f"subscribe to {channel!r}: pub/sub is closed")
        if not self._running:
            raise PubSubError(f"subscribe to {channel!r}: not running (start run() first)")
        if since is not None and since.offset < 0:
            raise InvalidInput(f"since.offset must be >= 0, got {since.offset}")
        entry = self._channels.get(channel)
        if entry is None:
            entry = self._channels[channel] = _Channel(channel)
        subscription = _RedisSubscription(self, entry, self._counters)
        entry.subscribers.add(subscription)
        self._plan()
        try:
            await subscription._open(since)
            yield subscription
        finally:
            subscription.close()
            entry.subscribers.discard(subscription)
            if not entry.subscribers:
                self._plan()

    async def position(self, channel: str) -> Position:
        epoch, latest, _ = await self._read(channel, None, 0)
        return Position(epoch, latest)

    async def ping(self) -> None:
        execute = self.driver.execute
        await self._call("pubsub ping", lambda: execute("PING"))
        if not self._running:
            return
        with anyio.move_on_after(self.timeout):
            while not self._connected and self._state_changed is not None:
                await self._state_changed.wait()
        if not self._connected:
            raise PubSubError(f"pubsub ping: {self._unavailable()}")

    async def aclose(self) -> None:
        self._closed = True
        if self._run_scope is not None:
            self._run_scope.cancel()
        for entry in self._channels.values():
            for subscription in entry.subscribers:
                subscription.close()
        await self.driver.aclose()

    def local_subscribers(self, channel: str) -> int:
        """How many subscriptions to `channel` are open here (for tests and diagnostics)."""
        entry = self._channels.get(channel)
        return 0 if entry is None else len(entry.subscribers)

    @property
    def stats(self) -> PubSubStats:
        """Reconnects (counted when the connection is lost), messages repaired from history
        after one, and gaps history could not cover."""
        counters = self._counters
        return PubSubStats(
            reconnects=counters.reconnects,
            repaired=counters.repaired,
            unrepaired_gaps=counters.unrepaired_gaps,
        )

    @property
    def connected(self) -> bool:
        """Whether the pub/sub connection is up (as far as the last health check knows)."""
        return self._connected

    # -- the pub/sub connection ------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Own the pub/sub connection until cancelled or `aclose`d, reconnecting as needed."""
        if self._closed:
            raise PubSubError("pub/sub is closed")
        if self._running:
            raise RuntimeError("RedisPubSub.run is already running")
        self._write_lock = anyio.Lock()
        self._state_changed = anyio.Event()
        self._running = True
        try:
            with anyio.CancelScope() as self._run_scope:
                task_status.started()
                await self._keep_connected()
        finally:
            self._running = False
            self._run_scope = None
            for entry in self._channels.values():
                for subscription in entry.subscribers:
                    subscription.close()
            self._signal()

    async def _keep_connected(self) -> None:
        while True:
            started = anyio.current_time()
            try:
                connection = await self._connect()
            except _DROPS as exc:
                self._last_error = describe(exc)
                log.warning("cannot open the pub/sub connection: %s", self._last_error)
            else:
                self._last_error = await self._session(connection)
                self._counters.reconnects += 1
                log.warning("lost the pub/sub connection: %s; reconnecting", self._last_error)
                if anyio.current_time() - started >= self.health_interval:
                    self._failures = 0
            self._failures += 1
            # Full jitter: many instances that lost the same server do not return in step.
            cap = min(self.reconnect_max, 0.05 * 2**self._failures)
            await anyio.sleep(random.uniform(0, cap))

    async def _connect(self) -> PubSubConnection:
        # Its own connection, outside the pool: it never goes back to serve commands.
        return await self.driver.open_pubsub(self.timeout)

    async def _session(self, connection: PubSubConnection) -> str:
        """Use one connection until it fails; why it ended."""
        reasons: list[str] = []
        self._connected = True
        self._signal()
        try:
            async with anyio.create_task_group() as tasks:
                for work in (self._receive, self._send_plan, self._check_health):
                    tasks.start_soon(self._until_failure, work, connection, tasks, reasons)
        finally:
            self._connected = False
            with anyio.CancelScope(shield=True):
                await connection.aclose()
            for name, entry in list(self._channels.items()):
                entry.reset()
                if not entry.subscribers:
                    del self._channels[name]
                for subscription in entry.subscribers:
                    subscription.lose_buffer()
            self._signal()
        return reasons[0] if reasons else "closed"

    async def _until_failure(
        self,
        work: Callable[[PubSubConnection], Awaitable[None]],
        connection: PubSubConnection,
        tasks: TaskGroup,
        reasons: list[str],
    ) -> None:
        try:
            await work(connection)
        except _DROPS as exc:
            reasons.append(describe(exc))
        tasks.cancel_scope.cancel()

    async def _receive(self, connection: PubSubConnection) -> None:
        prefix = f"{self.namespace}:notify:".encode()
        while True:
            reply = await connection.receive()
            if not isinstance(reply, list) or not reply:
                if reply == b"PONG":  # the PING answer while subscribed to nothing
                    self._pong_received()
            elif reply[0] == b"pong":
                self._pong_received()
            elif len(reply) == 3 and reply[1].startswith(prefix):
                kind, name = reply[0], reply[1][len(prefix) :].decode()
                if kind == b"message":
                    self._deliver(name, reply[2])
                elif kind in (b"subscribe", b"unsubscribe"):
                    self._acknowledge(name, subscribed=kind == b"subscribe")

    def _pong_received(self) -> None:
        if self._pong is not None:
            self._pong.set()

    def _deliver(self, name: str, data: bytes) -> None:
        entry = self._channels.get(name)
        if entry is None or not entry.subscribers:
            return
        try:
            epoch, offset, payload = _decode_envelope(data)
        except msgspec.DecodeError:
            log.warning("ignoring an undecodable message on pub/sub channel %r", name)
            return
        message = Message(name, Position(epoch, offset), payload)
        for subscription in entry.subscribers:
            subscription.push(message)

    def _acknowledge(self, name: str, *, subscribed: bool) -> None:
        entry = self._channels.get(name)
        if entry is None:
            return
        entry.pending = max(0, entry.pending - 1)
        if entry.pending:
            return  # a later command for this channel is in flight; its ack decides
        if subscribed and entry.sent:
            entry.live = True
            self._failures = 0
            for subscription in entry.subscribers:
                subscription.wake()
        elif not entry.sent and not entry.subscribers:
            del self._channels[name]

    async def _send_plan(self, connection: PubSubConnection) -> None:
        """SUBSCRIBE channels that gained subscribers, UNSUBSCRIBE those that lost all."""
        assert self._write_lock is not None
        while True:
            # Made before reading the plan, so changes made while sending are not missed.
            changed = self._plan_changed = anyio.Event()
            subscribe: list[str] = []
            unsubscribe: list[str] = []
            for name, entry in list(self._channels.items()):
                if entry.subscribers and not entry.sent:
                    entry.sent = True
                    entry.pending += 1
                    subscribe.append(self._key("notify", name))
                elif not entry.subscribers and entry.sent:
                    entry.sent = entry.live = False
                    entry.pending += 1
                    unsubscribe.append(self._key("notify", name))
                elif not entry.subscribers and not entry.pending:
                    del self._channels[name]
            for command, names in (("SUBSCRIBE", subscribe), ("UNSUBSCRIBE", unsubscribe)):
                for start in range(0, len(names), _BATCH):
                    async with self._write_lock:
                        batch = names[start : start + _BATCH]
                        await connection.send(command, *batch)
            await changed.wait()

    async def _check_health(self, connection: PubSubConnection) -> None:
        assert self._write_lock is not None
        while True:
            await anyio.sleep(self.health_interval)
            pong = self._pong = anyio.Event()
            with anyio.move_on_after(self.health_timeout):
                async with self._write_lock:
                    await connection.send("PING")
                await pong.wait()
            if not pong.is_set():
                raise _Unhealthy(f"no answer to PING within {self.health_timeout} s")
