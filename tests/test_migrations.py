"""Schema migrations at start-up: each applied once, whoever starts, and however many at once."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import psycopg
import pytest

from services.common.migrations import (
    Migration,
    migrate_postgres,
    migrate_postgres_at,
    migrate_sqlite,
)
from services.common.sqlite_files import open_wal_database

NOTES = [
    Migration(1, ("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT NOT NULL)",)),
    # Not idempotent on purpose: run twice, it would add a second row.
    Migration(2, ("INSERT INTO notes (id, text) VALUES (1, 'written by migration 2')",)),
]


def test_sqlite_migrations_apply_once_and_then_only_new_ones(tmp_path: Path):
    db = open_wal_database(tmp_path / "a.db")
    assert migrate_sqlite(db, "notes", NOTES[:1]) == [1]
    assert migrate_sqlite(db, "notes", NOTES[:1]) == []
    assert migrate_sqlite(db, "notes", NOTES) == [2]
    assert migrate_sqlite(db, "notes", NOTES) == []
    assert db.execute("SELECT text FROM notes").fetchall() == [("written by migration 2",)]
    assert db.execute("SELECT component, version FROM schema_migrations").fetchall() == [
        ("notes", 1),
        ("notes", 2),
    ]
    db.close()


def test_two_sqlite_migrators_at_once_apply_each_migration_once(tmp_path: Path):
    path = tmp_path / "a.db"
    open_wal_database(path).close()
    applied = run_at_once(
        lambda: migrate_sqlite(
            sqlite3.connect(path, isolation_level=None, timeout=30), "notes", NOTES
        )
    )
    assert sorted(applied) == [[], [1, 2]]
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM notes").fetchone() == (1,)
    db.close()


def test_postgres_migrations_apply_once_and_then_only_new_ones(postgres_url: str):
    assert migrate_postgres_at(postgres_url, "notes", NOTES[:1]) == [1]
    assert migrate_postgres_at(postgres_url, "notes", NOTES[:1]) == []
    assert migrate_postgres_at(postgres_url, "notes", NOTES) == [2]
    assert migrate_postgres_at(postgres_url, "notes", NOTES) == []
    with psycopg.connect(postgres_url) as db:
        assert db.execute("SELECT text FROM notes").fetchall() == [("written by migration 2",)]


def test_two_postgres_migrators_at_once_apply_each_migration_once(postgres_url: str):
    slow = [
        Migration(1, (*NOTES[0].statements, "SELECT pg_sleep(0.2)")),  # widens the race
        NOTES[1],
    ]
    connections = [psycopg.connect(postgres_url, autocommit=True) for _ in range(2)]
    remaining = list(connections)
    applied = run_at_once(lambda: migrate_postgres(remaining.pop(), "notes", slow))
    assert sorted(applied) == [[], [1, 2]]
    with connections[0] as db:
        assert db.execute("SELECT count(*) FROM notes").fetchone() == (1,)
        versions = db.execute("SELECT version FROM schema_migrations WHERE component = 'notes'")
        assert sorted(versions.fetchall()) == [(1,), (2,)]
    connections[1].close()


def test_a_failing_migration_changes_nothing(postgres_url: str):
    broken = [*NOTES, Migration(3, ("CREATE TABLE extra (id INTEGER)", "SELECT nonsense"))]
    with pytest.raises(psycopg.errors.UndefinedColumn):
        migrate_postgres_at(postgres_url, "notes", broken)
    assert migrate_postgres_at(postgres_url, "notes", NOTES) == [1, 2]  # nothing was kept
    assert migrate_postgres_at(postgres_url, "notes", [*NOTES, Migration(3, ())]) == [3]


def test_a_database_newer_than_the_program_is_refused(tmp_path: Path):
    db = open_wal_database(tmp_path / "a.db")
    migrate_sqlite(db, "notes", NOTES)
    with pytest.raises(RuntimeError, match="notes schema version 2, newer than this program"):
        migrate_sqlite(db, "notes", NOTES[:1])
    db.close()


def run_at_once(migrate) -> list[list[int]]:
    """What `migrate` returned in each of two threads that start it together."""
    start = threading.Barrier(2)
    results: list[list[int]] = []

    def run() -> None:
        start.wait()
        results.append(migrate())

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results
