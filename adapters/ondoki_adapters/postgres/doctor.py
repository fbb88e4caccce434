"""`ondoki doctor`'s database checks: reachable, authenticated, schema current."""

from __future__ import annotations

import math
from typing import Literal

import anyio
import msgspec
import psycopg

from ondoki.support.redact import redact_url
from ondoki.support.settings import Settings
from ondoki_adapters.postgres import schema
from ondoki_adapters.postgres.store import describe

Severity = Literal["ok", "info", "warning", "error"]
MIN_SERVER = 120000  # PostgreSQL 12
TIMEOUT = 3.0


class Finding(msgspec.Struct):
    """One check's outcome (the same fields as the Redis checks' findings)."""

    target: str
    check: str
    severity: Severity
    message: str
    fix: str | None = None


def _is_auth_failure(exc: psycopg.OperationalError) -> bool:
    # A failed login has no SQLSTATE on the client side; the server's message says it.
    text = str(exc)
    return "authentication failed" in text or "no pg_hba.conf entry" in text


async def diagnose(settings: Settings) -> list[Finding]:
    """The database's findings; without DATABASE_URL, what that means for sessions."""
    if settings.database_url is None:
        if settings.redis_url is None:
            return [
                Finding(
                    "database",
                    "sessions",
                    "info",
                    "DATABASE_URL is unset: sessions live in this process's memory",
                    "set DATABASE_URL to keep sessions in PostgreSQL",
                )
            ]
        return [
            Finding(
                "database",
                "sessions",
                "warning",
                "DATABASE_URL is unset: sessions live only in Redis and do not survive a "
                "Redis restart (everyone is logged out)",
                "set DATABASE_URL=postgresql://user:password@host:5432/db and run `ondoki migrate`",
            )
        ]
    url = settings.database_url
    return await anyio.to_thread.run_sync(_check, url)


def _check(url: str) -> list[Finding]:
    where = redact_url(url)
    findings: list[Finding] = []

    def add(check: str, severity: Severity, message: str, fix: str | None = None) -> None:
        findings.append(Finding("database", check, severity, message, fix))

    try:
        conn = psycopg.connect(url, connect_timeout=math.ceil(TIMEOUT), autocommit=True)
    except psycopg.OperationalError as exc:
        if _is_auth_failure(exc):
            add(
                "auth",
                "error",
                f"{where}: authentication failed",
                "check the user and password in DATABASE_URL",
            )
        else:
            add(
                "reachable",
                "error",
                f"{where}: {describe(exc)}",
                "check host, port, database name and network; is PostgreSQL running?",
            )
        return findings
    except psycopg.Error as exc:
        add("reachable", "error", f"{where}: {describe(exc)}", "check DATABASE_URL")
        return findings
    with conn:
        add("reachable", "ok", f"{where} answers, credentials accepted")
        server = conn.info.server_version
        shown = f"{server // 10000}.{server % 10000}"
        if server >= MIN_SERVER:
            add("version", "ok", f"PostgreSQL {shown}")
        else:
            add("version", "error", f"PostgreSQL {shown} is older than 12", "upgrade PostgreSQL")
        try:
            version = schema.current_version(conn)
        except psycopg.Error as exc:
            add("schema", "error", f"cannot read the schema version: {describe(exc)}", None)
            return findings
        if version < schema.VERSION:
            add(
                "schema",
                "error",
                f"schema at version {version}; this ondoki needs {schema.VERSION}",
                "run `ondoki migrate` (ondoki serve refuses to start until then)",
            )
        elif version > schema.VERSION:
            add(
                "schema",
                "warning",
                f"schema at version {version}, newer than this ondoki's {schema.VERSION}",
                "upgrade this ondoki to the version that migrated the database",
            )
        else:
            add("schema", "ok", f"schema at version {version} (current)")
    return findings
