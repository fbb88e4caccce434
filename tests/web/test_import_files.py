"""What an import leaves on disk, through the API with jobs running in process: the video
goes when the job succeeds, the guide stays."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import pytest
from starlette.testclient import TestClient

from ondoki.entrypoints.bootstrap import open_services
from ondoki.support.settings import Settings
from ondoki_adapters.web.app import create_app
from tests.media.generate import Scene, write_video
from tests.web.conftest import API_KEY, Api


@pytest.fixture
def api(tmp_path: Path, anyio_backend: Literal["asyncio", "trio"]) -> Iterator[Api]:
    settings = Settings(media_dir=str(tmp_path / "media"))
    app = create_app(lambda: open_services(settings, api_key=API_KEY))
    with TestClient(app, backend=anyio_backend) as client:
        yield Api(client)


def test_a_succeeded_import_keeps_its_guide_and_drops_its_video(api: Api, tmp_path: Path) -> None:
    path = tmp_path / "two-steps.mp4"
    write_video(path, [Scene(1.0), Scene(1.0)])
    alice = api.login("alice")
    headers = {**alice, "Content-Type": "video/mp4"}
    job_id = api.client.post("/imports", content=path.read_bytes(), headers=headers).json()[
        "job_id"
    ]
    deadline = time.monotonic() + 60
    while api.client.get(f"/jobs/{job_id}", headers=alice).json()["state"] != "succeeded":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    [upload] = list((tmp_path / "media" / "imports").iterdir())
    assert not (upload / "source").exists()
    assert (upload / "guide" / "guide.json").exists()
    assert api.client.get(f"/imports/{job_id}/guide", headers=alice).status_code == 200
