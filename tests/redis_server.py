"""Real `redis-server` processes on free ports, owned by the test that started them."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis

REDIS_SERVER = shutil.which("redis-server")


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require_redis_server() -> str:
    """The redis-server binary; skip the test without one (fail instead in CI)."""
    if REDIS_SERVER is None:
        message = "no redis-server binary on PATH (apt-get install redis-server)"
        if in_ci():
            pytest.fail(f"CI requires every Redis-backed test to run: {message}")
        pytest.skip(message)
    return REDIS_SERVER


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """One redis-server process that a test can stop, kill, restart and reconfigure.

    Persistence is off (like the shared instance): a restart loses every key, which is
    exactly what the history-loss tests need.
    """

    def __init__(
        self,
        *,
        password: str | None = None,
        args: tuple[str, ...] = (),
        config_file: Path | None = None,
    ) -> None:
        self.binary = require_redis_server()
        self.config_file = config_file
        self.port = free_port()
        self.password = password
        self.args = args
        self.dir = Path(tempfile.mkdtemp(prefix="ondoki-redis-"))
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/{db}"

    def start(self) -> RedisServer:
        if self.process is not None and self.process.poll() is None:
            return self
        # A config file comes first: the command line after it overrides port, bind and dir.
        command = [
            self.binary,
            *([str(self.config_file)] if self.config_file else []),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.dir),
            "--logfile", str(self.dir / "redis.log"),
            *(["--requirepass", self.password] if self.password else []),
            *self.args,
        ]  # fmt: skip
        with open(self.dir / "stderr", "ab") as stderr:
            self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                error = (self.dir / "stderr").read_text()
                raise RuntimeError(f"redis-server exited at start: {error}")
            try:
                with self.client() as client:
                    client.ping()
                return self
            except redis.ConnectionError:
                time.sleep(0.02)
        raise RuntimeError("redis-server did not answer within 10 s")

    def stop(self) -> None:
        """Terminate the server (SIGTERM) and wait for it."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)

    def kill(self) -> None:
        """SIGKILL: the server vanishes without closing anything."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    @contextmanager
    def frozen(self) -> Iterator[None]:
        """The server stopped (SIGSTOP) inside: its sockets stay open, nothing answers (a
        hung server, a half-open peer); it goes on (SIGCONT) on the way out."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(self.process.pid, signal.SIGCONT)

    def restart(self) -> RedisServer:
        self.stop()
        return self.start()

    def client(self, db: int = 0, **options: Any) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1", port=self.port, db=db, password=self.password, **options
        )

    def flushall(self) -> None:
        with self.client() as client:
            client.flushall()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
