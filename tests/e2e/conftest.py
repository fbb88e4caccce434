"""Real `ondoki serve` processes, stopped (SIGTERM) at the end of each test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.process import ServeProcess, assert_clean_logs, clean_env

Start = Callable[..., ServeProcess]


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Start]:
    started: list[ServeProcess] = []

    def start(*args: str, port: int | None = None, **env: str) -> ServeProcess:
        process = ServeProcess(tmp_path, clean_env(**env), *args, port=port)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()
    for process in started:
        assert_clean_logs(process.output(), f"ondoki serve on port {process.port}")
