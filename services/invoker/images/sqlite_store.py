"""Image records in a SQLite file (WAL): the default store.

One row per image with its fields in columns; `seq` (the insertion order) gives "newest
first" without relying on clock resolution, and an index per filter column keeps a
session's listing an index range. One connection serves every thread behind a lock; the
library calls it through `WriterImageRecordStore`, on a thread of the file's own.
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

from services.common.sqlite_files import open_wal_database
from services.invoker.images.records import (
    ImageChanges,
    ImageOrigin,
    ImageQuery,
    ImageRecord,
    ImageRecordStore,
    image_not_found,
)
from services.invoker.sessions.writer import database_writer, on_writer

TABLES = (
    """CREATE TABLE IF NOT EXISTS images (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL UNIQUE,
        width INTEGER NOT NULL,
        height INTEGER NOT NULL,
        origin TEXT NOT NULL,
        is_intermediate INTEGER NOT NULL,
        session_id TEXT NOT NULL,
        node_id TEXT NOT NULL,
        create_time TEXT NOT NULL,
        update_time TEXT NOT NULL,
        metadata TEXT NOT NULL,
        size_bytes INTEGER NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS images_by_session ON images (session_id, seq)",
    "CREATE INDEX IF NOT EXISTS images_by_origin ON images (origin, seq)",
)
COLUMNS = (
    "name, width, height, origin, is_intermediate, session_id, node_id, create_time, "
    "update_time, metadata, size_bytes"
)


class SqliteImageRecordStore:
    """Records in one WAL-mode SQLite file shared by all threads behind a lock. Blocking."""

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._db = open_wal_database(path, TABLES)

    def add(self, record: ImageRecord) -> None:
        with self._lock:
            self._db.execute(
                f"INSERT INTO images ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                _row(record),
            )

    def get(self, name: str) -> ImageRecord:
        with self._lock:
            row = self._db.execute(f"SELECT {COLUMNS} FROM images WHERE name = ?", (name,))
            found = row.fetchone()
        if found is None:
            raise image_not_found(name)
        return _record(found)

    def update(self, name: str, changes: ImageChanges, when: datetime) -> ImageRecord:
        sets, params = ["update_time = ?"], [when.isoformat()]
        if changes.is_intermediate is not None:
            sets.append("is_intermediate = ?")
            params.append(int(changes.is_intermediate))
        if changes.metadata is not None:
            sets.append("metadata = ?")
            params.append(json.dumps(changes.metadata))
        with self._lock:
            cursor = self._db.execute(
                f"UPDATE images SET {', '.join(sets)} WHERE name = ? RETURNING {COLUMNS}",
                [*params, name],
            )
            found = cursor.fetchone()
        if found is None:
            raise image_not_found(name)
        return _record(found)

    def delete(self, name: str) -> ImageRecord:
        with self._lock:
            sql = f"DELETE FROM images WHERE name = ? RETURNING {COLUMNS}"
            cursor = self._db.execute(sql, (name,))
            found = cursor.fetchone()
        if found is None:
            raise image_not_found(name)
        return _record(found)

    def search_page(
        self, query: ImageQuery, offset: int, limit: int
    ) -> tuple[list[ImageRecord], int]:
        clauses, params = [], []
        if query.session_id is not None:
            clauses.append("session_id = ?")
            params.append(query.session_id)
        if query.origin is not None:
            clauses.append("origin = ?")
            params.append(str(query.origin))
        if query.is_intermediate is not None:
            clauses.append("is_intermediate = ?")
            params.append(int(query.is_intermediate))
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {COLUMNS} FROM images{where} ORDER BY seq DESC LIMIT ? OFFSET ?",
                [*params, limit, offset],
            ).fetchall()
            total = self._db.execute(f"SELECT COUNT(*) FROM images{where}", params).fetchone()[0]
        return [_record(row) for row in rows], total

    def close(self) -> None:
        with self._lock:
            self._db.close()


class WriterImageRecordStore(ImageRecordStore):
    """A SQLite image record store whose calls run on a writer thread of its own, in the
    order they are made; `open` makes one."""

    def __init__(self, store: SqliteImageRecordStore, writer: ThreadPoolExecutor) -> None:
        self._store = store
        self._writer = writer

    @classmethod
    async def open(cls, path: Path) -> WriterImageRecordStore:
        writer = database_writer("images-db")
        return cls(await on_writer(writer, SqliteImageRecordStore, path), writer)

    async def add(self, record: ImageRecord) -> None:
        await on_writer(self._writer, self._store.add, record)

    async def get(self, name: str) -> ImageRecord:
        return await on_writer(self._writer, self._store.get, name)

    async def update(self, name: str, changes: ImageChanges, when: datetime) -> ImageRecord:
        return await on_writer(self._writer, self._store.update, name, changes, when)

    async def delete(self, name: str) -> ImageRecord:
        return await on_writer(self._writer, self._store.delete, name)

    async def search_page(
        self, query: ImageQuery, offset: int, limit: int
    ) -> tuple[list[ImageRecord], int]:
        return await on_writer(self._writer, self._store.search_page, query, offset, limit)

    async def close(self) -> None:
        await on_writer(self._writer, self._store.close)
        self._writer.shutdown(wait=False)  # idle now: the thread ends at once


def _row(record: ImageRecord) -> tuple[Any, ...]:
    return (
        record.name,
        record.width,
        record.height,
        str(record.origin),
        int(record.is_intermediate),
        record.session_id,
        record.node_id,
        record.create_time.isoformat(),
        record.update_time.isoformat(),
        json.dumps(record.metadata),
        record.size_bytes,
    )


def _record(row: tuple[Any, ...]) -> ImageRecord:
    name, width, height, origin, intermediate, session, node, created, updated, meta, size = row
    return ImageRecord(
        name=name,
        width=width,
        height=height,
        origin=ImageOrigin(origin),
        is_intermediate=bool(intermediate),
        session_id=session,
        node_id=node,
        create_time=datetime.fromisoformat(created),
        update_time=datetime.fromisoformat(updated),
        metadata=json.loads(meta),
        size_bytes=size,
    )
