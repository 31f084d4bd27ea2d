"""Model records in a SQLite file (WAL): the default store.

Each record is one row holding its full JSON plus copies of the searchable fields in
indexed columns; tags sit in their own table keyed (tag, key), so "has all of these tags"
is an index lookup per tag rather than a scan of every record's JSON. Every schema version
keeps the full JSON in `models.config`, so a migration rebuilds the tables from the
migrated record dicts and needs no table-by-table SQL.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from services.model_manager.records.configs import AnyModelConfig, config_from_json
from services.model_manager.records.record_store import (
    EVERY_MODEL,
    EXACT_FILTERS,
    SCHEMA_VERSION,
    ModelQuery,
    ModelRecordStore,
    StoreBackend,
    migrate,
    not_found,
    refuse,
)

VERSION_TABLE = "model_records_schema"

TABLES = (
    f"CREATE TABLE {VERSION_TABLE} (version TEXT NOT NULL)",
    """CREATE TABLE models (
        key TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        base TEXT NOT NULL,
        type TEXT NOT NULL,
        format TEXT NOT NULL,
        path TEXT NOT NULL UNIQUE,
        hash TEXT NOT NULL,
        source TEXT NOT NULL,
        config TEXT NOT NULL
    )""",
    "CREATE INDEX models_by_name ON models (name, key)",
    "CREATE INDEX models_by_base_type ON models (base, type)",
    "CREATE INDEX models_by_hash ON models (hash)",
    "CREATE INDEX models_by_source ON models (source)",
    """CREATE TABLE model_tags (
        tag TEXT NOT NULL,
        key TEXT NOT NULL REFERENCES models (key),
        PRIMARY KEY (tag, key)
    ) WITHOUT ROWID""",
    "CREATE INDEX model_tags_by_key ON model_tags (key)",
)


class SqliteModelRecordStore(ModelRecordStore):
    """Records in one SQLite connection shared by all threads behind the store's lock."""

    backend = StoreBackend.SQLITE

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise refuse(self.location, f"cannot open it as SQLite ({exc})") from None
        try:
            self._prepare_schema()
            # Only once the file is known to be ours: switching to WAL rewrites its header.
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise refuse(self.location, f"not a SQLite database ({exc})") from None
        except BaseException:
            self._db.close()
            raise

    @property
    def schema_version(self) -> str:
        return SCHEMA_VERSION

    def get(self, key: str) -> AnyModelConfig:
        with self._lock:
            row = self._db.execute("SELECT config FROM models WHERE key = ?", (key,)).fetchone()
        if row is None:
            raise not_found(key)
        return config_from_json(row[0])

    def exists(self, key: str) -> bool:
        with self._lock:
            return (
                self._db.execute("SELECT 1 FROM models WHERE key = ?", (key,)).fetchone()
                is not None
            )

    def search(
        self, query: ModelQuery = EVERY_MODEL, *, offset: int = 0, limit: int | None = None
    ) -> list[AnyModelConfig]:
        with self._lock:
            where, params = self._where(query)
            sql = f"SELECT config FROM models{where} ORDER BY name, key LIMIT ? OFFSET ?"
            rows = self._db.execute(sql, [*params, -1 if limit is None else limit, offset])
            texts = [text for (text,) in rows]
        return [config_from_json(text) for text in texts]

    def count(self, query: ModelQuery = EVERY_MODEL) -> int:
        with self._lock:
            where, params = self._where(query)
            return self._db.execute(f"SELECT COUNT(*) FROM models{where}", params).fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _insert(self, config: AnyModelConfig) -> None:
        with self._lock, self._transaction():
            self._insert_row(config)

    def _replace(self, config: AnyModelConfig) -> None:
        with self._lock, self._transaction():
            self._db.execute(
                "UPDATE models SET name = ?, base = ?, type = ?, format = ?, path = ?, hash = ?, "
                "source = ?, config = ? WHERE key = ?",
                [*record_row(config)[1:], config.key],
            )
            self._db.execute("DELETE FROM model_tags WHERE key = ?", (config.key,))
            self._insert_tags(config)

    def _remove(self, key: str) -> None:
        with self._lock, self._transaction():
            self._db.execute("DELETE FROM model_tags WHERE key = ?", (key,))
            self._db.execute("DELETE FROM models WHERE key = ?", (key,))

    def _where(self, query: ModelQuery) -> tuple[str, list[Any]]:
        """The WHERE clause of `query` and its parameters (called under the lock).

        Tags: the rarest one's index range picks the candidates and each other tag is one
        primary-key probe per candidate, so the cost follows the smallest tag, not the sum
        of all of them.
        """
        clauses, params = [], []
        for column in EXACT_FILTERS:
            value = getattr(query, column)
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(str(value))
        tags = sorted(set(query.tags), key=self._tag_count)
        if tags:
            clauses.append("key IN (SELECT key FROM model_tags WHERE tag = ?)")
            probe = "EXISTS (SELECT 1 FROM model_tags t WHERE t.tag = ? AND t.key = models.key)"
            clauses += [probe] * (len(tags) - 1)
            params += tags
        return (" WHERE " + " AND ".join(clauses) if clauses else ""), params

    def _tag_count(self, tag: str) -> int:
        return self._db.execute("SELECT COUNT(*) FROM model_tags WHERE tag = ?", (tag,)).fetchone()[
            0
        ]

    def _insert_row(self, config: AnyModelConfig) -> None:
        self._db.execute(
            "INSERT INTO models (key, name, base, type, format, path, hash, source, config) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            record_row(config),
        )
        self._insert_tags(config)

    def _insert_tags(self, config: AnyModelConfig) -> None:
        self._db.executemany(
            "INSERT INTO model_tags (tag, key) VALUES (?, ?)",
            [(tag, config.key) for tag in config.tags],
        )

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _prepare_schema(self) -> None:
        """Create the tables in an empty database, migrate an older one, refuse a foreign one."""
        tables = {
            name
            for (name,) in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
        if not tables:
            with self._transaction():
                self._create_tables()
            return
        if VERSION_TABLE not in tables:
            listed = ", ".join(sorted(tables))
            raise refuse(self.location, f"it has tables ({listed}) but no {VERSION_TABLE} table")
        row = self._db.execute(f"SELECT version FROM {VERSION_TABLE}").fetchone()
        if row is None:
            raise refuse(self.location, f"its {VERSION_TABLE} table is empty")
        if row[0] != SCHEMA_VERSION:
            self._migrate(row[0])

    def _migrate(self, version: str) -> None:
        records: list[dict[str, Any]] = [
            json.loads(text) for (text,) in self._db.execute("SELECT config FROM models")
        ]
        configs = migrate(version, records, self.location)
        with self._transaction():
            for table in ("model_tags", "models", VERSION_TABLE):
                self._db.execute(f"DROP TABLE IF EXISTS {table}")
            self._create_tables()
            for config in configs:
                self._insert_row(config)

    def _create_tables(self) -> None:
        for statement in TABLES:
            self._db.execute(statement)
        self._db.execute(f"INSERT INTO {VERSION_TABLE} (version) VALUES (?)", (SCHEMA_VERSION,))


def record_row(config: AnyModelConfig) -> tuple[str, ...]:
    """The values of a record's row, in the order of the table's columns."""
    return (
        config.key,
        config.name,
        str(config.base),
        str(config.type),
        str(config.format),
        config.path,
        config.hash,
        config.source,
        config.model_dump_json(),
    )
