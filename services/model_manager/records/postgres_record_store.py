"""Model records in PostgreSQL, for a database several model manager replicas may share.

The layout follows the SQLite store: one row per record with its full JSON and indexed
copies of the searchable fields, and a tag table. Tables are named `model_records` and
`model_record_tags`, so other services' tables can live in the same database. Names and
keys sort bytewise (COLLATE "C"), as on SQLite, whatever the database's locale.

The store's lock keeps one process's checks and writes together; the table constraints
keep them right across processes: a key or path another replica took between the check
and the write is refused with the same errors as one taken before.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import errors as pg_errors

from services.common.database_url import redact
from services.common.errors import AlreadyExistsError
from services.common.migrations import Migration
from services.common.postgres_pool import PostgresPool
from services.model_manager.records.configs import AnyModelConfig, config_from_json
from services.model_manager.records.record_store import (
    EVERY_MODEL,
    EXACT_FILTERS,
    SCHEMA_VERSION,
    ModelQuery,
    ModelRecordStore,
    StoreBackend,
    not_found,
)
from services.model_manager.records.sqlite_record_store import record_row

COMPONENT = "model_records"
KEY_CONSTRAINT = "model_records_pkey"
PATH_CONSTRAINT = "model_records_path_key"

MIGRATIONS = [
    Migration(
        1,  # records of layout 3.2 (SCHEMA_VERSION)
        (
            """CREATE TABLE model_records (
                key TEXT COLLATE "C" PRIMARY KEY,
                name TEXT COLLATE "C" NOT NULL,
                base TEXT NOT NULL,
                type TEXT NOT NULL,
                format TEXT NOT NULL,
                path TEXT NOT NULL,
                hash TEXT NOT NULL,
                source TEXT NOT NULL,
                config TEXT NOT NULL,
                CONSTRAINT model_records_path_key UNIQUE (path)
            )""",
            "CREATE INDEX model_records_by_name ON model_records (name, key)",
            "CREATE INDEX model_records_by_base_type ON model_records (base, type)",
            "CREATE INDEX model_records_by_hash ON model_records (hash)",
            "CREATE INDEX model_records_by_source ON model_records (source)",
            """CREATE TABLE model_record_tags (
                tag TEXT NOT NULL,
                key TEXT COLLATE "C" NOT NULL REFERENCES model_records (key) ON DELETE CASCADE,
                PRIMARY KEY (tag, key)
            )""",
            "CREATE INDEX model_record_tags_by_key ON model_record_tags (key)",
        ),
    )
]

COLUMNS = "key, name, base, type, format, path, hash, source, config"


class PostgresModelRecordStore(ModelRecordStore):
    """Records in a PostgreSQL database, over a small pool of connections."""

    backend = StoreBackend.POSTGRESQL

    def __init__(self, url: str) -> None:
        super().__init__(redact(url))
        self._pool = PostgresPool(
            url,
            COMPONENT,
            MIGRATIONS,
            what="the model record database",
            unavailable_reason="RECORD_STORE_UNAVAILABLE",
        )

    @property
    def schema_version(self) -> str:
        return SCHEMA_VERSION

    def get(self, key: str) -> AnyModelConfig:
        with self._pool.connection() as db:
            row = db.execute("SELECT config FROM model_records WHERE key = %s", (key,)).fetchone()
        if row is None:
            raise not_found(key)
        return config_from_json(row[0])

    def exists(self, key: str) -> bool:
        with self._pool.connection() as db:
            found = db.execute("SELECT 1 FROM model_records WHERE key = %s", (key,)).fetchone()
        return found is not None

    def search(
        self, query: ModelQuery = EVERY_MODEL, *, offset: int = 0, limit: int | None = None
    ) -> list[AnyModelConfig]:
        with self._pool.connection() as db:
            return _search(db, query, offset, limit)

    def count(self, query: ModelQuery = EVERY_MODEL) -> int:
        with self._pool.connection() as db:
            return _count(db, query)

    def search_page(
        self, query: ModelQuery, offset: int, limit: int
    ) -> tuple[list[AnyModelConfig], int]:
        """One page and the number of all matches, from one snapshot of the database."""
        with self._pool.connection() as db, db.transaction():
            db.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            return _search(db, query, offset, limit), _count(db, query)

    def close(self) -> None:
        self._pool.close()

    def _insert(self, config: AnyModelConfig) -> None:
        with self._pool.connection() as db, _taken_as_already_exists(config), db.transaction():
            db.execute(
                f"INSERT INTO model_records ({COLUMNS}) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                record_row(config),
            )
            _insert_tags(db, config)

    def _replace(self, config: AnyModelConfig) -> None:
        with self._pool.connection() as db, _taken_as_already_exists(config), db.transaction():
            db.execute(
                "UPDATE model_records SET name = %s, base = %s, type = %s, format = %s, "
                "path = %s, hash = %s, source = %s, config = %s WHERE key = %s",
                (*record_row(config)[1:], config.key),
            )
            db.execute("DELETE FROM model_record_tags WHERE key = %s", (config.key,))
            _insert_tags(db, config)

    def _remove(self, key: str) -> None:
        with self._pool.connection() as db:
            db.execute("DELETE FROM model_records WHERE key = %s", (key,))


def _where(query: ModelQuery) -> tuple[str, list[Any]]:
    clauses, params = [], []
    for column in EXACT_FILTERS:
        value = getattr(query, column)
        if value is not None:
            clauses.append(f"{column} = %s")
            params.append(str(value))
    tags = sorted(set(query.tags))
    if tags:
        clauses.append(
            "key IN (SELECT key FROM model_record_tags WHERE tag = ANY(%s) "
            "GROUP BY key HAVING count(*) = %s)"
        )
        params += [tags, len(tags)]
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


def _search(
    db: psycopg.Connection, query: ModelQuery, offset: int, limit: int | None
) -> list[AnyModelConfig]:
    where, params = _where(query)
    sql = f"SELECT config FROM model_records{where} ORDER BY name, key LIMIT %s OFFSET %s"
    texts = [text for (text,) in db.execute(sql, [*params, limit, offset])]
    return [config_from_json(text) for text in texts]


def _count(db: psycopg.Connection, query: ModelQuery) -> int:
    where, params = _where(query)
    row = db.execute(f"SELECT count(*) FROM model_records{where}", params).fetchone()
    assert row is not None
    return int(row[0])


def _insert_tags(db: psycopg.Connection, config: AnyModelConfig) -> None:
    with db.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO model_record_tags (tag, key) VALUES (%s, %s)",
            [(tag, config.key) for tag in config.tags],
        )


@contextmanager
def _taken_as_already_exists(config: AnyModelConfig) -> Iterator[None]:
    """A key or path another process took since the store's check, as the check reports it."""
    try:
        yield
    except pg_errors.UniqueViolation as exc:
        if exc.diag.constraint_name == PATH_CONSTRAINT:
            raise AlreadyExistsError(
                f"a model is registered at {config.path} already",
                reason="MODEL_PATH_ALREADY_REGISTERED",
                metadata={"path": config.path},
            ) from None
        if exc.diag.constraint_name == KEY_CONSTRAINT:
            raise AlreadyExistsError(
                f"a model with key {config.key} exists already",
                reason="MODEL_ALREADY_EXISTS",
                metadata={"key": config.key},
            ) from None
        raise
