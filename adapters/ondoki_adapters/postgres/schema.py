"""The database schema and its migrations, applied by `ondoki migrate`.

Each migration runs once, in order, in one transaction with the version it reaches; an
advisory lock keeps two `ondoki migrate` runs from applying the same step twice.
"""

from __future__ import annotations

import psycopg

#: The steps, in order; step N (1-based) brings the schema to version N. Never edit a step
#: that has shipped: add one.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE ondoki_sessions (
        id text PRIMARY KEY,                      -- SHA-256 of the token (hex), never the token
        user_id text NOT NULL,
        data jsonb NOT NULL,
        created_at timestamptz NOT NULL,
        ttl_seconds double precision NOT NULL,    -- the sliding TTL
        expires_at timestamptz NOT NULL,          -- sliding expiry, as last persisted
        absolute_expires_at timestamptz NOT NULL  -- the end, however often it is used
    );
    CREATE INDEX ondoki_sessions_expires_at ON ondoki_sessions (expires_at);
    """,
)

#: The schema version this code needs.
VERSION = len(MIGRATIONS)

_LOCK = 0x6F6E646F6B69  # "ondoki": the advisory lock held while migrating


def current_version(conn: psycopg.Connection) -> int:
    """The version the database is at (0: never migrated)."""
    row = conn.execute("SELECT to_regclass('ondoki_schema') IS NOT NULL").fetchone()
    if row is None or not row[0]:
        return 0
    found = conn.execute("SELECT max(version) FROM ondoki_schema").fetchone()
    return int(found[0]) if found is not None and found[0] is not None else 0


def migrate(conn: psycopg.Connection) -> tuple[int, int]:
    """Bring the schema to `VERSION`; (version before, version after). A database at a
    later version (a newer ondoki migrated it) is left alone."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS ondoki_schema ("
            "version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        before = current_version(conn)
        for version in range(before + 1, VERSION + 1):
            conn.execute(MIGRATIONS[version - 1].encode())
            conn.execute("INSERT INTO ondoki_schema (version) VALUES (%s)", (version,))
    return before, max(before, VERSION)
