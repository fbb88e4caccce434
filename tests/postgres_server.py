"""PostgreSQL for tests: throwaway databases on the machine's server, and private servers.

- `throwaway_database()` creates a database with a random name on the server at
  127.0.0.1:5432 (trust authentication, user postgres) and drops it afterwards.
- `PostgresServer` runs a server of its own (initdb in a temporary directory, as the
  `postgres` user when the tests run as root, on a free port), which a test can stop and
  start again.

Without PostgreSQL, tests that need it skip locally and fail under CI=true.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

from tests.redis_server import free_port, in_ci

SHARED = "postgresql://postgres@127.0.0.1:5432/"
BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)


def _missing(message: str) -> None:
    if in_ci():
        pytest.fail(f"CI requires every PostgreSQL test to run: {message}")
    pytest.skip(message)


def _admin(url: str) -> psycopg.Connection:
    return psycopg.connect(url + "postgres", autocommit=True, connect_timeout=5)


@contextmanager
def throwaway_database(server: str = SHARED) -> Iterator[str]:
    """The URL of a new, empty database on `server`, dropped on the way out."""
    name = f"ondoki_test_{secrets.token_hex(6)}"
    try:
        with _admin(server) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        _missing(f"no PostgreSQL at {server} ({exc}); start it, or apt-get install postgresql")
    try:
        yield server + name
    finally:
        with _admin(server) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def migrated(url: str) -> str:
    """`url` after `ondoki migrate`'s schema is applied."""
    from ondoki_adapters.postgres import schema

    with psycopg.connect(url, autocommit=True) as conn:
        schema.migrate(conn)
    return url


class PostgresServer:
    """A PostgreSQL server of the test's own, on a free port, with trust authentication."""

    def __init__(self, *, password: str | None = None) -> None:
        self.password = password
        found = [d for d in BIN_DIRS if (d / "initdb").exists()]
        if not found:
            _missing("no PostgreSQL server binaries under /usr/lib/postgresql/*/bin")
        self.bin = found[0]
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="ondoki-pg-"))
        self.data = self.dir / "data"
        self._user = "postgres" if os.geteuid() == 0 else None
        if self._user is not None:
            account = pwd.getpwnam(self._user)
            os.chown(self.dir, account.pw_uid, account.pw_gid)
        auth = ["-A", "trust"]
        if password is not None:
            secret = self.dir / "password"
            secret.write_text(password)
            if self._user is not None:
                os.chown(secret, account.pw_uid, account.pw_gid)
            auth = ["-A", "scram-sha-256", f"--pwfile={secret}"]
        self._run("initdb", "-D", str(self.data), "-U", "postgres", *auth, "--no-sync")

    def _run(self, program: str, *args: str) -> None:
        command = [str(self.bin / program), *args]
        if self._user is not None:
            command = ["runuser", "-u", self._user, "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=60)

    def url(self, database: str = "") -> str:
        auth = f"postgres:{self.password}" if self.password else "postgres"
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{database}"

    def start(self) -> PostgresServer:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.dir / "log"), "-o", options,
            "-w", "start",
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with _admin(self.url()):
                    return self
            except psycopg.OperationalError:
                time.sleep(0.05)
        raise RuntimeError("the private PostgreSQL did not answer within 20 s")

    def stop(self) -> None:
        """A fast shutdown: open connections are cut."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def close(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
