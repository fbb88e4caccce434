"""An in-process app (Starlette's TestClient) on each backend and each cache adapter."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import pytest
from starlette.testclient import TestClient

from ondoki.entrypoints.bootstrap import open_services
from ondoki.support.settings import Settings
from ondoki_adapters.web.app import create_app
from tests.redis_server import RedisServer

API_KEY = "test-api-key-0123456789"


class Api:
    """A TestClient with the API key and a helper to log users in."""

    def __init__(self, client: TestClient) -> None:
        self.client = client

    @property
    def internal(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {API_KEY}"}

    def login(self, user_id: str = "user-1", **body: object) -> dict[str, str]:
        response = self.client.post(
            "/internal/sessions", json={"user_id": user_id, **body}, headers=self.internal
        )
        assert response.status_code == 201, response.text
        return {"Authorization": f"Bearer {response.json()['token']}"}


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def settings(request: pytest.FixtureRequest) -> Settings:
    if request.param == "memory":
        return Settings(state_max_bytes=1024, max_json_body_bytes=4096)
    server: RedisServer = request.getfixturevalue("redis_server")
    server.flushall()
    return Settings(redis_url=server.url(0), state_max_bytes=1024, max_json_body_bytes=4096)


@pytest.fixture
def api(settings: Settings, anyio_backend: Literal["asyncio", "trio"]) -> Iterator[Api]:
    app = create_app(lambda: open_services(settings, api_key=API_KEY))
    with TestClient(app, backend=anyio_backend, raise_server_exceptions=False) as client:
        yield Api(client)
