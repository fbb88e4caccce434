"""The PostgreSQL session store when its server stops and comes back (a private server)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import anyio
import pytest

from ondoki.domain.sessions import Sessions
from ondoki.errors import SessionStoreError, Unauthorized
from ondoki.ports.sessions import StoredSession
from ondoki.support.settings import Settings, load_settings
from ondoki_adapters.memory.cache import MemoryCache
from ondoki_adapters.postgres.doctor import diagnose
from ondoki_adapters.postgres.store import PostgresSessionStore, migrate_database
from tests.postgres_server import PostgresServer, throwaway_database

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]


@pytest.fixture(scope="module")
def private_postgres() -> Iterator[PostgresServer]:
    server = PostgresServer().start()
    yield server
    server.close()


@pytest.fixture
def private_url(private_postgres: PostgresServer) -> Iterator[str]:
    with throwaway_database(private_postgres.url()) as url:
        yield url


async def test_stopped_database(private_postgres: PostgresServer, private_url: str) -> None:
    await migrate_database(private_url)
    store = PostgresSessionStore(private_url, timeout=1.0, pool_size=2)
    sessions = Sessions(
        MemoryCache(), store=store, ttl=600, max_ttl=600, max_data_bytes=4096, persist_interval=0.1
    )
    try:
        token, _ = await sessions.create("alice")
        private_postgres.stop()
        try:
            # A cached session keeps working, even when its sliding expiry cannot be written.
            for _ in range(3):
                await anyio.sleep(0.15)
                assert (await sessions.get(token))[0].user_id == "alice"
            with pytest.raises(SessionStoreError):
                await sessions.create("bob")
            with pytest.raises(SessionStoreError):
                await sessions.end(token)
            with pytest.raises(SessionStoreError):
                await store.ping()
            findings = await diagnose(Settings(database_url=private_url))
            assert [(f.check, f.severity) for f in findings] == [("reachable", "error")]
        finally:
            private_postgres.start()
        # Back: the refused logout did not happen, and everything works again at once.
        await store.ping()
        assert (await sessions.get(token))[0].user_id == "alice"
        other, _ = await sessions.create("bob")
        assert await sessions.end(token)
        with pytest.raises(Unauthorized):
            await sessions.get(token)
        assert (await sessions.get(other))[0].user_id == "bob"
    finally:
        await store.aclose()


class _FreezableProxy:
    """A TCP proxy to the shared PostgreSQL that can stop passing bytes on while keeping
    its connections open: a server that hangs, or a peer gone half-open."""

    def __init__(self) -> None:
        self.frozen = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = [self.listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", 5432))
            self.sockets += [client, upstream]
            for source, target in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, target), daemon=True).start()

    def _pipe(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                while self.frozen.is_set():
                    time.sleep(0.02)
                target.sendall(data)
        except OSError:
            pass

    def close(self) -> None:
        self.frozen.clear()
        for sock in self.sockets:
            # (A thread blocked in recv on it sees the end only after a shutdown.)
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


async def test_a_database_that_stops_answering_is_a_store_error_in_bounded_time() -> None:
    # Before: `statement_timeout` is enforced by the server, which never sent its answer,
    # so a call waited for as long as the server hung (20 s in the reviewer's run), and
    # with it the request.
    with throwaway_database() as url, contextlib.closing(_FreezableProxy()) as proxy:
        await migrate_database(url)
        through = url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
        assert through != url
        store = PostgresSessionStore(through, timeout=0.5, pool_size=2)
        now = time.time()
        session = StoredSession(
            id="a" * 64,
            user_id="alice",
            data={},
            created_at=now,
            ttl_seconds=60,
            expires_at=now + 60,
            absolute_expires_at=now + 600,
        )
        try:
            await store.create(session)  # a pooled connection through the proxy
            proxy.frozen.set()
            started = anyio.current_time()
            with (
                anyio.fail_after(10),
                pytest.raises(SessionStoreError, match=r"no answer within 1 s"),
            ):
                await store.get(session.id, now=time.time())
            assert anyio.current_time() - started < 5
            proxy.frozen.clear()
            # Answering again: served as before (on the connection left waiting, or another).
            found = await store.get(session.id, now=time.time())
            assert found is not None and found.user_id == "alice"
        finally:
            proxy.frozen.clear()
            await store.aclose()


async def test_doctor_reports_a_schema_behind_then_current(private_url: str) -> None:
    settings = Settings(database_url=private_url)
    findings = {f.check: f for f in await diagnose(settings)}
    assert findings["reachable"].severity == "ok"
    assert findings["schema"].severity == "error"
    assert "ondoki migrate" in (findings["schema"].fix or "")
    assert await migrate_database(private_url) == (0, 1)
    assert await migrate_database(private_url) == (1, 1)
    findings = {f.check: f for f in await diagnose(settings)}
    assert findings["schema"].severity == "ok"


async def test_concurrent_migrations_apply_each_step_once(private_url: str) -> None:
    results: list[tuple[int, int]] = []

    async def run() -> None:
        results.append(await migrate_database(private_url))

    async with anyio.create_task_group() as tasks:
        for _ in range(4):
            tasks.start_soon(run)
    assert sorted(results) == [(0, 1), (1, 1), (1, 1), (1, 1)]


async def test_unix_socket_url(private_postgres: PostgresServer, private_url: str) -> None:
    database = private_url.rsplit("/", 1)[1]
    url = f"postgresql://postgres@/{database}?host={private_postgres.dir}&port={private_postgres.port}"
    assert load_settings({"DATABASE_URL": url}).database_url == url
    await migrate_database(url)
    store = PostgresSessionStore(url, timeout=2.0, pool_size=1)
    try:
        await store.ping()
        assert await store.get("0" * 64, now=0) is None
    finally:
        await store.aclose()


async def test_tls_options_reach_the_driver(private_url: str) -> None:
    # The private server has no TLS: libpq refuses, which shows `sslmode` was applied.
    store = PostgresSessionStore(private_url + "?sslmode=require", timeout=2.0, pool_size=1)
    try:
        with pytest.raises(SessionStoreError, match="SSL"):
            await store.ping()
    finally:
        await store.aclose()
