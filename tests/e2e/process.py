"""`ondoki serve` as a real process, the way an operator runs it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx2 as httpx

from ondoki.support.redact import url_password
from tests.redis_server import free_port

# Variables a developer's shell may have set that would change what the test starts.
_SCRUBBED = ("REDIS_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "ONDOKI_")


#: Every password, API key and session token the e2e tests hand to a process; no log line
#: of any process may contain one (`assert_clean_logs`).
SECRETS: set[str] = set()

# The one line that shows a secret on purpose: development mode prints its generated key.
_DEV_KEY_LINE = "development API key"


def remember_secret(secret: str) -> str:
    SECRETS.add(secret)
    return secret


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUBBED)}
    env.update(extra)
    for name, value in extra.items():
        if name == "ONDOKI_API_KEY":
            remember_secret(value)
        elif "://" in value:
            password = url_password(value)
            if password:
                remember_secret(password)
    return env


def assert_clean_logs(text: str, source: str) -> None:
    """Every line a JSON event, or one of the CLI's own `ondoki: ...` lines (start-up
    errors, the dev-key notice); no known secret anywhere but in the dev-key notice."""
    # Split on newlines only: a JSON line may hold U+2028 and the like, which splitlines()
    # also breaks on.
    for line in text.split("\n"):
        if not line.strip() or _DEV_KEY_LINE in line:
            continue
        if not line.startswith("ondoki: "):
            try:
                json.loads(line)
            except ValueError:
                raise AssertionError(f"{source}: not a JSON log line: {line!r}") from None
        leaked = [secret for secret in SECRETS if secret in line]
        assert not leaked, f"{source}: a secret is in the log: {line!r}"


class ServeProcess:
    """One `python -m ondoki serve` on a free port; its stderr is kept in a file."""

    def __init__(
        self, workdir: Path, env: dict[str, str], *args: str, port: int | None = None
    ) -> None:
        self.port = free_port() if port is None else port
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / f"serve-{self.port}.log"
        command = [sys.executable, "-m", "ondoki", "serve", "--port", str(self.port), *args]
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                command, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT
            )

    def output(self) -> str:
        return self.log.read_text()

    def wait_ready(self, timeout: float = 20.0) -> ServeProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ondoki serve exited early:\n{self.output()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.05)
        raise RuntimeError(f"ondoki serve not healthy in {timeout}s:\n{self.output()}")

    def exit_code(self, timeout: float = 20.0) -> int:
        return self.process.wait(timeout)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, as an orchestrator does; the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise
