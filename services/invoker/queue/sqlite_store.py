"""Queue items in a SQLite file (WAL): the default store, kept with the sessions under the
root.

`id` is an AUTOINCREMENT key, so an id is never handed out again, not even after a
restart. The claim is one UPDATE … RETURNING over the index (status, -priority, id), so
it is atomic against a cancel. One connection serves every thread behind a lock; the
queue calls it through `WriterQueueStore`, on the file's writer thread.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

from services.common.sqlite_files import open_wal_database
from services.invoker.queue.items import (
    ItemError,
    ItemFilter,
    QueueItem,
    QueueItemStatus,
    QueueStore,
    RunMode,
    item_not_found,
)
from services.invoker.sessions.writer import on_writer

TABLES = (
    """CREATE TABLE IF NOT EXISTS queue_items (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        session_id TEXT NOT NULL,
        status TEXT NOT NULL,
        run_mode TEXT NOT NULL,
        priority INTEGER NOT NULL,
        create_time TEXT NOT NULL,
        start_time TEXT,
        end_time TEXT,
        error_type TEXT,
        error TEXT,
        error_code INTEGER,
        error_node_id TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS queue_items_by_turn ON queue_items (status, priority DESC, id)",
    "CREATE INDEX IF NOT EXISTS queue_items_by_session ON queue_items (session_id, id)",
)
COLUMNS = (
    "id, session_id, status, run_mode, priority, create_time, start_time, end_time, "
    "error_type, error, error_code, error_node_id"
)
PENDING = QueueItemStatus.PENDING.value
RUNNING = QueueItemStatus.RUNNING.value
CANCELLED = QueueItemStatus.CANCELLED.value


class SqliteQueueStore:
    """Items in one WAL-mode SQLite file shared by all threads behind a lock. Blocking."""

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._db = open_wal_database(path, TABLES)

    def add(self, session_id: str, run_mode: RunMode, priority: int, now: datetime) -> QueueItem:
        sql = (
            "INSERT INTO queue_items (session_id, status, run_mode, priority, create_time) "
            f"VALUES (?, ?, ?, ?, ?) RETURNING {COLUMNS}"
        )
        params = (session_id, PENDING, run_mode.value, priority, now.isoformat())
        return self._one(sql, params)

    def add_all(
        self, session_ids: Sequence[str], run_mode: RunMode, priority: int, now: datetime
    ) -> list[QueueItem]:
        sql = (
            "INSERT INTO queue_items (session_id, status, run_mode, priority, create_time) "
            f"VALUES (?, ?, ?, ?, ?) RETURNING {COLUMNS}"
        )
        with self._lock, self._db:
            self._db.execute("BEGIN")
            rows = [
                self._db.execute(
                    sql, (session_id, PENDING, run_mode.value, priority, now.isoformat())
                ).fetchone()
                for session_id in session_ids
            ]
        return [_item(row) for row in rows]

    def claim_next(self, now: datetime) -> QueueItem | None:
        sql = (
            "UPDATE queue_items SET status = ?, start_time = ? WHERE id = ("
            "SELECT id FROM queue_items WHERE status = ? ORDER BY priority DESC, id LIMIT 1"
            f") RETURNING {COLUMNS}"
        )
        rows = self._all(sql, (RUNNING, now.isoformat(), PENDING))
        return rows[0] if rows else None

    def cancel_pending(self, item_id: int, now: datetime) -> QueueItem | None:
        sql = (
            "UPDATE queue_items SET status = ?, end_time = ? WHERE id = ? AND status = ? "
            f"RETURNING {COLUMNS}"
        )
        rows = self._all(sql, (CANCELLED, now.isoformat(), item_id, PENDING))
        return rows[0] if rows else None

    def cancel_all_pending(self, now: datetime) -> list[QueueItem]:
        sql = (
            f"UPDATE queue_items SET status = ?, end_time = ? WHERE status = ? RETURNING {COLUMNS}"
        )
        items = self._all(sql, (CANCELLED, now.isoformat(), PENDING))
        return sorted(items, key=lambda item: item.id)

    def finish(
        self, item_id: int, status: QueueItemStatus, error: ItemError | None, now: datetime
    ) -> QueueItem:
        sql = (
            "UPDATE queue_items SET status = ?, end_time = ?, error_type = ?, error = ?, "
            f"error_code = ?, error_node_id = ? WHERE id = ? AND status = ? RETURNING {COLUMNS}"
        )
        rows = self._all(sql, (status.value, now.isoformat(), *_error_row(error), item_id, RUNNING))
        return rows[0] if rows else self.get(item_id)

    def fail_running(self, error: ItemError, now: datetime) -> list[QueueItem]:
        sql = (
            "UPDATE queue_items SET status = ?, end_time = ?, error_type = ?, error = ?, "
            f"error_code = ?, error_node_id = ? WHERE status = ? RETURNING {COLUMNS}"
        )
        failed = QueueItemStatus.FAILED.value
        items = self._all(sql, (failed, now.isoformat(), *_error_row(error), RUNNING))
        return sorted(items, key=lambda item: item.id)

    def get(self, item_id: int) -> QueueItem:
        rows = self._all(f"SELECT {COLUMNS} FROM queue_items WHERE id = ?", (item_id,))
        if not rows:
            raise item_not_found(item_id)
        return rows[0]

    def list_after(self, query: ItemFilter, after_id: int, limit: int) -> list[QueueItem]:
        clauses, params = ["id > ?"], [after_id]
        if query.statuses:
            clauses.append(f"status IN ({', '.join('?' * len(query.statuses))})")
            params.extend(status.value for status in query.statuses)
        if query.session_id:
            clauses.append("session_id = ?")
            params.append(query.session_id)
        sql = f"SELECT {COLUMNS} FROM queue_items WHERE {' AND '.join(clauses)} ORDER BY id LIMIT ?"
        return self._all(sql, (*params, limit))

    def counts(self) -> Mapping[QueueItemStatus, int]:
        with self._lock:
            rows = self._db.execute("SELECT status, COUNT(*) FROM queue_items GROUP BY status")
            found = {QueueItemStatus(status): count for status, count in rows}
        return {status: found.get(status, 0) for status in QueueItemStatus}

    def running(self) -> QueueItem | None:
        sql = f"SELECT {COLUMNS} FROM queue_items WHERE status = ? ORDER BY id LIMIT 1"
        rows = self._all(sql, (RUNNING,))
        return rows[0] if rows else None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _one(self, sql: str, params: tuple[Any, ...]) -> QueueItem:
        return self._all(sql, params)[0]

    def _all(self, sql: str, params: tuple[Any, ...]) -> list[QueueItem]:
        with self._lock:
            rows = self._db.execute(sql, params).fetchall()
        return [_item(row) for row in rows]


class WriterQueueStore(QueueStore):
    """A SQLite queue store whose calls run on `writer`, the thread shared with the other
    stores of its file, in the order they are made."""

    def __init__(self, store: SqliteQueueStore, writer: ThreadPoolExecutor) -> None:
        self._store = store
        self._writer = writer

    async def add(
        self, session_id: str, run_mode: RunMode, priority: int, now: datetime
    ) -> QueueItem:
        return await on_writer(self._writer, self._store.add, session_id, run_mode, priority, now)

    async def add_all(
        self, session_ids: Sequence[str], run_mode: RunMode, priority: int, now: datetime
    ) -> list[QueueItem]:
        store = self._store
        return await on_writer(self._writer, store.add_all, session_ids, run_mode, priority, now)

    async def claim_next(self, now: datetime) -> QueueItem | None:
        return await on_writer(self._writer, self._store.claim_next, now)

    async def cancel_pending(self, item_id: int, now: datetime) -> QueueItem | None:
        return await on_writer(self._writer, self._store.cancel_pending, item_id, now)

    async def cancel_all_pending(self, now: datetime) -> list[QueueItem]:
        return await on_writer(self._writer, self._store.cancel_all_pending, now)

    async def finish(
        self, item_id: int, status: QueueItemStatus, error: ItemError | None, now: datetime
    ) -> QueueItem:
        return await on_writer(self._writer, self._store.finish, item_id, status, error, now)

    async def fail_running(self, error: ItemError, now: datetime) -> list[QueueItem]:
        return await on_writer(self._writer, self._store.fail_running, error, now)

    async def get(self, item_id: int) -> QueueItem:
        return await on_writer(self._writer, self._store.get, item_id)

    async def list_after(self, query: ItemFilter, after_id: int, limit: int) -> list[QueueItem]:
        return await on_writer(self._writer, self._store.list_after, query, after_id, limit)

    async def counts(self) -> Mapping[QueueItemStatus, int]:
        return await on_writer(self._writer, self._store.counts)

    async def running(self) -> QueueItem | None:
        return await on_writer(self._writer, self._store.running)

    async def close(self) -> None:
        await on_writer(self._writer, self._store.close)


def _error_row(error: ItemError | None) -> tuple[Any, ...]:
    if error is None:
        return (None, None, None, None)
    return (error.error_type, error.error, error.error_code, error.error_node_id)


def _time(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def _item(row: tuple[Any, ...]) -> QueueItem:
    created, started, ended = row[5:8]
    times = (datetime.fromisoformat(created), _time(started), _time(ended))
    return QueueItem.from_row((*row[:5], *times, *row[8:]))
