"""Shared fixtures: async backends, real Redis servers, and adapter parametrization.

Every async test runs on asyncio and on trio. A Redis-backed test (marker `redis`) runs on
trio only once its adapter runs there (marker `redis_trio`, see docs/trio.md); the other
trio combinations are deselected at collection, not skipped. Without a redis-server binary,
Redis tests skip locally and fail under CI=true.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.redis_server import RedisServer, in_ci

PASSWORD = "s3cret-test-password"


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    backend: str = request.param
    return backend


def _runs_on_trio(item: pytest.Item) -> bool:
    callspec = getattr(item, "callspec", None)
    return callspec is not None and callspec.params.get("anyio_backend") == "trio"


def _asyncio_only(item: pytest.Item) -> bool:
    return bool(item.get_closest_marker("redis")) and not item.get_closest_marker("redis_trio")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    keep: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        (dropped if _asyncio_only(item) and _runs_on_trio(item) else keep).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
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
