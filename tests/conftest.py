"""Shared fixtures: async backends, real Redis servers, and adapter parametrization.

Every async test runs on asyncio and on trio, Redis-backed ones (marker `redis`) included:
the Redis adapters pick their driver by event loop (see docs/trio.md). Under CI=true a run
that deselects a Redis-backed test on trio fails, as does one that skips a test. Without a
redis-server binary, Redis tests skip locally and fail under CI=true.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.postgres_server import migrated, throwaway_database
from tests.redis_server import RedisServer, in_ci

PASSWORD = "s3cret-test-password"


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    backend: str = request.param
    return backend


def _runs_on_trio(item: pytest.Item) -> bool:
    callspec = getattr(item, "callspec", None)
    return callspec is not None and callspec.params.get("anyio_backend") == "trio"


_trio_redis_deselected = pytest.StashKey[list[str]]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_trio_redis_deselected] = []


def pytest_deselected(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("redis") and _runs_on_trio(item):
            item.config.stash[_trio_redis_deselected].append(item.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    deselected = session.config.stash[_trio_redis_deselected]
    if in_ci() and deselected and exitstatus == 0:
        # The production path runs on trio too; a Redis test left out there is untested.
        if reporter is not None:
            reporter.write_line(
                f"CI: {len(deselected)} Redis-backed test(s) deselected on trio, e.g. "
                f"{deselected[0]}; failing the run",
                red=True,
            )
        session.exitstatus = 1
        return
    skipped = len(reporter.stats.get("skipped", [])) if reporter is not None else 0
    if in_ci() and skipped and exitstatus == 0:
        # A skipped test is an untested feature; CI does not count it as passing.
        if reporter is not None:
            reporter.write_line(f"CI: {skipped} test(s) skipped; failing the run", red=True)
        session.exitstatus = 1


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A shared server without a password; tests flush it before use."""
    server = RedisServer().start()
    yield server
    server.close()


@pytest.fixture(scope="session")
def redis_server_password() -> Iterator[RedisServer]:
    """A shared server with `requirepass`."""
    server = RedisServer(password=PASSWORD).start()
    yield server
    server.close()


@pytest.fixture
def fresh_redis() -> Iterator[RedisServer]:
    """A server of this test's own, to kill, restart or reconfigure at will."""
    server = RedisServer().start()
    yield server
    server.close()


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A throwaway database on the server at 127.0.0.1:5432, migrated, for this run."""
    with throwaway_database() as url:
        yield migrated(url)
