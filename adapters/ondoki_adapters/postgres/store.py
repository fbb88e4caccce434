"""`PostgresSessionStore`: the SessionStore port on PostgreSQL.

psycopg's blocking API, called in worker threads: one design that runs under asyncio and
trio alike (psycopg's async API runs on asyncio only). The threads come from a limiter as
large as the pool, so the store never holds more connections, nor takes the threads other
work needs.

The pool is a small one of its own rather than psycopg_pool's: that one reconnects in the
background with an exponential backoff, so after an outage requests kept failing for
seconds after PostgreSQL was back, and while it was down each waited the whole timeout.
Here a request that finds no idle connection connects itself: it fails at once when the
server refuses, and succeeds as soon as the server is back.
"""

from __future__ import annotations

import logging
import math
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import anyio
import anyio.abc
import msgspec
import psycopg

from ondoki.errors import InvalidInput, SessionStoreError
from ondoki.ports.sessions import StoredSession
from ondoki_adapters.postgres import schema

log = logging.getLogger("ondoki.postgres")

T = TypeVar("T")

_encode = msgspec.json.Encoder().encode
_decode_data = msgspec.json.Decoder(dict[str, Any]).decode

_COLUMNS = (
    "user_id, data::text, extract(epoch FROM created_at)::float8, ttl_seconds, "
    "extract(epoch FROM expires_at)::float8, extract(epoch FROM absolute_expires_at)::float8"
)
_GET = (
    f"SELECT {_COLUMNS} FROM ondoki_sessions WHERE id = %(id)s "
    "AND expires_at > to_timestamp(%(now)s) AND absolute_expires_at > to_timestamp(%(now)s)"
)
_CREATE = (
    "INSERT INTO ondoki_sessions "
    "(id, user_id, data, created_at, ttl_seconds, expires_at, absolute_expires_at) VALUES "
    "(%s, %s, %s::jsonb, to_timestamp(%s), %s, to_timestamp(%s), to_timestamp(%s)) "
    "ON CONFLICT (id) DO NOTHING"
)
_EXTEND = (
    "UPDATE ondoki_sessions SET expires_at = "
    "least(greatest(expires_at, to_timestamp(%(at)s)), absolute_expires_at) WHERE id = %(id)s "
    "AND expires_at > to_timestamp(%(now)s) AND absolute_expires_at > to_timestamp(%(now)s)"
)
_DELETE = "DELETE FROM ondoki_sessions WHERE id = %s"
_PURGE = (
    "DELETE FROM ondoki_sessions WHERE expires_at <= to_timestamp(%(now)s) "
    "OR absolute_expires_at <= to_timestamp(%(now)s)"
)


def describe(exc: BaseException) -> str:
    """A short, secret-free account of a driver error (psycopg never echoes the password)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class PostgresSessionStore:
    """Sessions in the `ondoki_sessions` table (see `schema`), through a connection pool of
    at most `pool_size` connections. Operations that are safe to repeat are tried once more
    on a fresh connection when the first one turns out broken (a restarted server)."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 5.0,
        pool_size: int = 10,
        purge_interval: float = 3600.0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.timeout = timeout
        self.purge_interval = purge_interval
        self._clock = clock
        self._limiter = anyio.CapacityLimiter(pool_size)
        self._pool = _Pool(
            url,
            size=pool_size,
            autocommit=True,
            connect_timeout=max(1, math.ceil(timeout)),
            options=f"-c statement_timeout={int(timeout * 1000)}",
            application_name="ondoki",
        )

    async def _call(self, work: Callable[[psycopg.Connection], T], *, repeat: bool) -> T:
        # The connection the thread waits on, if any; the lock orders the thread's taking
        # and leaving it against `_shut` from the event loop.
        in_use: list[psycopg.Connection] = []
        lock = threading.Lock()
        given_up = threading.Event()  # no one waits for this call any more

        def run() -> T:
            attempts = 2 if repeat else 1
            for attempt in range(attempts):
                try:
                    with self._pool.connection() as conn:
                        with lock:
                            if given_up.is_set():
                                conn.close()  # (not returned to the pool)
                                raise psycopg.OperationalError("the caller gave up")
                            in_use.append(conn)
                        try:
                            return work(conn)
                        finally:
                            with lock:
                                in_use.clear()
                                if given_up.is_set():
                                    conn.close()  # perhaps shut: never back to the pool
                except psycopg.OperationalError:
                    # A broken connection is dropped; the next attempt gets another, unless
                    # the caller has given up (no statement then runs after its answer).
                    if attempt + 1 == attempts or given_up.is_set():
                        raise
            raise AssertionError("unreachable")  # pragma: no cover

        # `statement_timeout` is the server's: a server that stops answering on an open
        # connection (hung, or a peer gone half-open) never sends it, and libpq waits on.
        # So each call is bounded here too, with room for a connect, the statement and one
        # retry. However the wait ends (this deadline, or the caller cancelled), a thread
        # still at work is stopped: the socket it waits on is shut, and it tries no more.
        limit = 2 * self.timeout
        try:
            with anyio.move_on_after(limit):
                try:
                    return await anyio.to_thread.run_sync(
                        run, limiter=self._limiter, abandon_on_cancel=True
                    )
                except psycopg.Error as exc:
                    raise SessionStoreError(f"session database: {describe(exc)}") from None
            raise SessionStoreError(f"session database: no answer within {limit:g} s")
        finally:
            with lock:
                given_up.set()
                for conn in in_use:
                    _shut(conn)

    async def create(self, session: StoredSession) -> None:
        params = (
            session.id,
            session.user_id,
            _encode(session.data).decode(),
            session.created_at,
            session.ttl_seconds,
            session.expires_at,
            session.absolute_expires_at,
        )

        attempts = 0

        def insert(conn: psycopg.Connection) -> bool:
            nonlocal attempts
            attempts += 1
            stored = conn.execute(_CREATE, params).rowcount > 0
            # Ids are 256-bit hashes of random tokens: a conflict on a repeated attempt is
            # the first attempt, which committed before its connection broke.
            return stored or attempts > 1

        if not await self._call(insert, repeat=True):
            raise InvalidInput("a session with this id exists")

    async def get(self, session_id: str, *, now: float) -> StoredSession | None:
        def select(conn: psycopg.Connection) -> tuple[Any, ...] | None:
            return conn.execute(_GET, {"id": session_id, "now": now}).fetchone()

        row = await self._call(select, repeat=True)
        if row is None:
            return None
        user_id, data, created_at, ttl, expires_at, absolute = row
        return StoredSession(
            id=session_id,
            user_id=user_id,
            data=_decode_data(data),
            created_at=created_at,
            ttl_seconds=ttl,
            expires_at=expires_at,
            absolute_expires_at=absolute,
        )

    async def extend(self, session_id: str, expires_at: float, *, now: float) -> bool:
        params = {"id": session_id, "at": expires_at, "now": now}

        def update(conn: psycopg.Connection) -> bool:
            return conn.execute(_EXTEND, params).rowcount > 0

        return await self._call(update, repeat=True)

    async def delete(self, session_id: str) -> bool:
        def delete(conn: psycopg.Connection) -> bool:
            return conn.execute(_DELETE, (session_id,)).rowcount > 0

        return await self._call(delete, repeat=True)

    async def purge_expired(self, *, now: float) -> int:
        def purge(conn: psycopg.Connection) -> int:
            return conn.execute(_PURGE, {"now": now}).rowcount

        return await self._call(purge, repeat=True)

    async def schema_version(self) -> int:
        """The version the database's schema is at (0: never migrated)."""
        return await self._call(schema.current_version, repeat=True)

    async def ping(self) -> None:
        version = await self.schema_version()
        if version < schema.VERSION:
            raise SessionStoreError(
                f"session database schema is at version {version}; this ondoki needs "
                f"{schema.VERSION}: run `ondoki migrate`"
            )

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Remove expired sessions every `purge_interval` seconds, until cancelled."""
        clock = self._clock or time.time
        task_status.started()
        while True:
            await anyio.sleep(self.purge_interval)
            try:
                removed = await self.purge_expired(now=clock())
            except SessionStoreError as exc:
                log.warning("could not remove expired sessions: %s", exc)
            else:
                if removed:
                    log.info("removed %d expired sessions", removed)

    async def aclose(self) -> None:
        await anyio.to_thread.run_sync(self._pool.close)


def _shut(conn: psycopg.Connection) -> None:
    """Shut `conn`'s socket down (not closing it: the thread using it still owns it), so that
    libpq waiting on it fails at once instead of waiting for a server that does not answer."""
    try:
        sock = socket.socket(fileno=conn.pgconn.socket)
    except (OSError, psycopg.Error):
        return  # already closed
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.detach()


class _Pool:
    """Idle connections kept for reuse (at most `size`); a caller that finds none connects.
    Thread-safe: it is used from worker threads."""

    def __init__(self, url: str, *, size: int, **options: Any) -> None:
        self.url = url
        self.size = size
        self.options = options
        self._idle: list[psycopg.Connection] = []
        self._lock = threading.Lock()
        self._closed = False

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = psycopg.connect(self.url, **self.options)
        try:
            yield conn
        except BaseException:
            conn.close()  # broken, or in a state nobody should inherit
            raise
        with self._lock:
            if not self._closed and not conn.closed and len(self._idle) < self.size:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


async def migrate_database(url: str, *, connect_timeout: float = 5.0) -> tuple[int, int]:
    """`ondoki migrate`: bring the schema at `url` to the version this code needs, on a
    connection of its own (a pool would hide why it cannot connect); (before, after)."""

    def run() -> tuple[int, int]:
        with psycopg.connect(url, connect_timeout=max(1, math.ceil(connect_timeout))) as conn:
            conn.autocommit = True
            return schema.migrate(conn)

    try:
        return await anyio.to_thread.run_sync(run)
    except psycopg.Error as exc:
        raise SessionStoreError(f"session database: {describe(exc)}") from None
