"""Schema migrations, applied at start-up, for SQLite files and the PostgreSQL database.

Each store names its component (e.g. `download_jobs`) and lists its migrations, numbered
from 1; a `schema_migrations` table records which (component, version) pairs a database
has. Applying is idempotent and safe when several processes start at once: on SQLite the
check and the changes run in one `BEGIN IMMEDIATE` transaction (one writer at a time), on
PostgreSQL in one transaction that first takes a transaction-level advisory lock, so a
second replica waits, then finds the versions applied and changes nothing.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass

import psycopg

MIGRATIONS_TABLE = "schema_migrations"
MIGRATIONS_LOCK = "easel schema migrations"


@dataclass(frozen=True)
class Migration:
    """One step of a component's schema: SQL statements that run together."""

    version: int
    statements: tuple[str, ...]


def advisory_lock_key(name: str) -> int:
    """A stable signed 64-bit key for `pg_advisory_lock` and friends, derived from `name`."""
    digest = hashlib.blake2b(name.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _pending(applied: set[int], component: str, migrations: Sequence[Migration]) -> list[Migration]:
    versions = [migration.version for migration in migrations]
    if versions != list(range(1, len(versions) + 1)):
        raise ValueError(f"migrations of {component} must be numbered 1, 2, …: {versions}")
    newer = sorted(version for version in applied if version > len(versions))
    if newer:
        raise RuntimeError(
            f"the database has {component} schema version {newer[-1]}, newer than this "
            f"program knows ({len(versions)}); run a newer Easel"
        )
    return [migration for migration in migrations if migration.version not in applied]


def migrate_sqlite(
    db: sqlite3.Connection, component: str, migrations: Sequence[Migration]
) -> list[int]:
    """Apply `component`'s missing migrations to `db` (an autocommit connection, as
    `open_wal_database` makes); the versions applied now."""
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute(
            f"CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} "
            "(component TEXT NOT NULL, version INTEGER NOT NULL, PRIMARY KEY (component, version))"
        )
        rows = db.execute(
            f"SELECT version FROM {MIGRATIONS_TABLE} WHERE component = ?", (component,)
        )
        pending = _pending({version for (version,) in rows}, component, migrations)
        for migration in pending:
            for statement in migration.statements:
                db.execute(statement)
            db.execute(
                f"INSERT INTO {MIGRATIONS_TABLE} (component, version) VALUES (?, ?)",
                (component, migration.version),
            )
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    return [migration.version for migration in pending]


def migrate_postgres(
    db: psycopg.Connection, component: str, migrations: Sequence[Migration]
) -> list[int]:
    """Apply `component`'s missing migrations in one transaction on `db`, under the
    advisory lock every Easel process takes to migrate; the versions applied now."""
    with db.transaction():
        db.execute("SELECT pg_advisory_xact_lock(%s)", (advisory_lock_key(MIGRATIONS_LOCK),))
        db.execute(
            f"CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} (component TEXT NOT NULL, "
            "version INTEGER NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now(), "
            "PRIMARY KEY (component, version))"
        )
        rows = db.execute(
            f"SELECT version FROM {MIGRATIONS_TABLE} WHERE component = %s", (component,)
        )
        pending = _pending({version for (version,) in rows}, component, migrations)
        for migration in pending:
            for statement in migration.statements:
                db.execute(statement)
            db.execute(
                f"INSERT INTO {MIGRATIONS_TABLE} (component, version) VALUES (%s, %s)",
                (component, migration.version),
            )
    return [migration.version for migration in pending]


def migrate_postgres_at(url: str, component: str, migrations: Sequence[Migration]) -> list[int]:
    """`migrate_postgres` over a connection of its own to `url`, closed afterwards."""
    with psycopg.connect(url, autocommit=True) as db:
        return migrate_postgres(db, component, migrations)
