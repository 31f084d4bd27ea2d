"""Queue items in PostgreSQL, shared by every invoker process of the database.

A claim is one UPDATE of the first PENDING item (priority desc, then id) picked with
`FOR UPDATE SKIP LOCKED`: claimers running at once each lock a different row and none
waits on another, so no item is handed out twice. The claim writes the claimer's id
(`owner`) and a lease (`lease_until`, on the database's clock, so the processes' clocks
need not agree); the owner renews it while the item runs. An item whose lease ran out
belongs to a process that died or lost the database: any process fails it, and the
owner's own end of the item, conditional on still owning it, then changes nothing.
Ids come from an identity column, never handed out twice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from services.common.migrations import Migration
from services.common.postgres_async_pool import AsyncPostgresPool
from services.invoker.queue.items import (
    ItemError,
    ItemFilter,
    QueueItem,
    QueueItemStatus,
    RunMode,
    SharedQueueStore,
    item_not_found,
)
from services.invoker.replica_notices import QUEUE_CHANNEL, invoker_pool, notify

COMPONENT = "invoker_queue"
MIGRATIONS = [
    Migration(
        1,
        (
            """CREATE TABLE invoker_queue_items (
                id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                session_id TEXT NOT NULL,
                status TEXT NOT NULL,
                run_mode TEXT NOT NULL,
                priority INTEGER NOT NULL,
                create_time TIMESTAMPTZ NOT NULL,
                start_time TIMESTAMPTZ,
                end_time TIMESTAMPTZ,
                error_type TEXT,
                error TEXT,
                error_code INTEGER,
                error_node_id TEXT,
                owner TEXT,
                lease_until TIMESTAMPTZ
            )""",
            "CREATE INDEX invoker_queue_items_by_turn ON invoker_queue_items "
            "(priority DESC, id) WHERE status = 'PENDING'",
            "CREATE INDEX invoker_queue_items_running ON invoker_queue_items "
            "(lease_until) WHERE status = 'RUNNING'",
            "CREATE INDEX invoker_queue_items_by_status ON invoker_queue_items (status, id)",
            "CREATE INDEX invoker_queue_items_by_session ON invoker_queue_items (session_id, id)",
            "CREATE TABLE invoker_queue_state (one BOOLEAN PRIMARY KEY DEFAULT true "
            "CHECK (one), paused BOOLEAN NOT NULL)",
            "INSERT INTO invoker_queue_state (paused) VALUES (false)",
        ),
    )
]
COLUMNS = (
    "id, session_id, status, run_mode, priority, create_time, start_time, end_time, "
    "error_type, error, error_code, error_node_id, owner"
)
LEASE = "clock_timestamp() + %(lease_s)s * interval '1 second'"
END = (
    "status = %(status)s, end_time = %(now)s, error_type = %(error_type)s, error = %(error)s, "
    "error_code = %(error_code)s, error_node_id = %(error_node_id)s, lease_until = NULL"
)


class PostgresQueueStore(SharedQueueStore):
    """Items in `invoker_queue_items`, claimed by `owner` with leases of `lease_s`. `open`
    makes one."""

    def __init__(self, pool: AsyncPostgresPool, owner: str, lease_s: float) -> None:
        self.owner = owner
        self.lease_s = lease_s
        self._pool = pool

    @classmethod
    async def open(cls, url: str, owner: str, lease_s: float) -> PostgresQueueStore:
        return cls(await invoker_pool(url, COMPONENT, MIGRATIONS), owner, lease_s)

    async def add(
        self, session_id: str, run_mode: RunMode, priority: int, now: datetime
    ) -> QueueItem:
        sql = (
            "INSERT INTO invoker_queue_items (session_id, status, run_mode, priority, "
            f"create_time) VALUES (%s, 'PENDING', %s, %s, %s) RETURNING {COLUMNS}"
        )
        async with self._pool.connection() as db, db.transaction():
            cursor = await db.execute(sql, (session_id, run_mode.value, priority, now))
            row = await cursor.fetchone()
            await notify(db, QUEUE_CHANNEL, f"{self.owner} added")
        assert row is not None
        return _item(row)

    async def add_all(
        self, session_ids: Sequence[str], run_mode: RunMode, priority: int, now: datetime
    ) -> list[QueueItem]:
        """One INSERT: every item or none, as a batch's sessions need."""
        sql = (
            "INSERT INTO invoker_queue_items (session_id, status, run_mode, priority, "
            "create_time) SELECT session_id, 'PENDING', %s, %s, %s "
            "FROM unnest(%s::text[]) WITH ORDINALITY AS queued (session_id, place) "
            f"ORDER BY place RETURNING {COLUMNS}"
        )
        async with self._pool.connection() as db, db.transaction():
            cursor = await db.execute(sql, (run_mode.value, priority, now, list(session_ids)))
            rows = await cursor.fetchall()
            await notify(db, QUEUE_CHANNEL, f"{self.owner} added")
        return sorted((_item(row) for row in rows), key=lambda item: item.id)

    async def claim_next(self, now: datetime) -> QueueItem | None:
        sql = (
            "UPDATE invoker_queue_items SET status = 'RUNNING', start_time = %(now)s, "
            f"owner = %(owner)s, lease_until = {LEASE} WHERE id = ("
            "SELECT id FROM invoker_queue_items WHERE status = 'PENDING' "
            "AND NOT (SELECT paused FROM invoker_queue_state) "
            "ORDER BY priority DESC, id LIMIT 1 FOR UPDATE SKIP LOCKED"
            f") RETURNING {COLUMNS}"
        )
        rows = await self._all(sql, {"now": now, "owner": self.owner, "lease_s": self.lease_s})
        return rows[0] if rows else None

    async def cancel_pending(self, item_id: int, now: datetime) -> QueueItem | None:
        sql = (
            "UPDATE invoker_queue_items SET status = 'CANCELLED', end_time = %s "
            f"WHERE id = %s AND status = 'PENDING' RETURNING {COLUMNS}"
        )
        rows = await self._all(sql, (now, item_id))
        return rows[0] if rows else None

    async def cancel_all_pending(self, now: datetime) -> list[QueueItem]:
        sql = (
            "UPDATE invoker_queue_items SET status = 'CANCELLED', end_time = %s "
            f"WHERE status = 'PENDING' RETURNING {COLUMNS}"
        )
        return sorted(await self._all(sql, (now,)), key=lambda item: item.id)

    async def finish(
        self, item_id: int, status: QueueItemStatus, error: ItemError | None, now: datetime
    ) -> QueueItem:
        sql = (
            f"UPDATE invoker_queue_items SET {END} WHERE id = %(id)s AND status = 'RUNNING' "
            f"AND owner = %(owner)s RETURNING {COLUMNS}"
        )
        params = {**_end(status, error, now), "id": item_id, "owner": self.owner}
        rows = await self._all(sql, params)
        return rows[0] if rows else await self.get(item_id)

    async def fail_running(self, error: ItemError, now: datetime) -> list[QueueItem]:
        """Every RUNNING item FAILED, whoever runs it: for a database no invoker uses."""
        sql = f"UPDATE invoker_queue_items SET {END} WHERE status = 'RUNNING' RETURNING {COLUMNS}"
        items = await self._all(sql, _end(QueueItemStatus.FAILED, error, now))
        return sorted(items, key=lambda item: item.id)

    async def fail_expired(self, error: ItemError, now: datetime) -> list[QueueItem]:
        sql = (
            f"UPDATE invoker_queue_items SET {END} WHERE status = 'RUNNING' "
            f"AND lease_until < clock_timestamp() RETURNING {COLUMNS}"
        )
        items = await self._all(sql, _end(QueueItemStatus.FAILED, error, now))
        return sorted(items, key=lambda item: item.id)

    async def renew_leases(self) -> list[int]:
        sql = (
            f"UPDATE invoker_queue_items SET lease_until = {LEASE} "
            "WHERE status = 'RUNNING' AND owner = %(owner)s RETURNING id"
        )
        async with self._pool.connection() as db:
            cursor = await db.execute(sql, {"owner": self.owner, "lease_s": self.lease_s})
            rows = await cursor.fetchall()
        return sorted(row[0] for row in rows)

    async def request_cancel(self, item_id: int) -> None:
        async with self._pool.connection() as db:
            await notify(db, QUEUE_CHANNEL, f"{self.owner} cancel {item_id}")

    async def set_paused(self, paused: bool) -> None:
        async with self._pool.connection() as db, db.transaction():
            await db.execute("UPDATE invoker_queue_state SET paused = %s", (paused,))
            if not paused:
                await notify(db, QUEUE_CHANNEL, f"{self.owner} resumed")

    async def paused(self) -> bool:
        async with self._pool.connection() as db:
            cursor = await db.execute("SELECT paused FROM invoker_queue_state")
            row = await cursor.fetchone()
        return bool(row and row[0])

    async def get(self, item_id: int) -> QueueItem:
        sql = f"SELECT {COLUMNS} FROM invoker_queue_items WHERE id = %s"
        rows = await self._all(sql, (item_id,))
        if not rows:
            raise item_not_found(item_id)
        return rows[0]

    async def list_after(self, query: ItemFilter, after_id: int, limit: int) -> list[QueueItem]:
        clauses, params = ["id > %s"], [after_id]
        if query.statuses:
            clauses.append("status = ANY(%s)")
            params.append([status.value for status in query.statuses])
        if query.session_id:
            clauses.append("session_id = %s")
            params.append(query.session_id)
        sql = (
            f"SELECT {COLUMNS} FROM invoker_queue_items WHERE {' AND '.join(clauses)} "
            "ORDER BY id LIMIT %s"
        )
        return await self._all(sql, (*params, limit))

    async def counts(self) -> Mapping[QueueItemStatus, int]:
        sql = "SELECT status, COUNT(*) FROM invoker_queue_items GROUP BY status"
        async with self._pool.connection() as db:
            cursor = await db.execute(sql)
            found = {QueueItemStatus(status): count for status, count in await cursor.fetchall()}
        return {status: found.get(status, 0) for status in QueueItemStatus}

    async def running(self) -> QueueItem | None:
        sql = (
            f"SELECT {COLUMNS} FROM invoker_queue_items WHERE status = 'RUNNING' "
            "ORDER BY id LIMIT 1"
        )
        rows = await self._all(sql, ())
        return rows[0] if rows else None

    async def close(self) -> None:
        await self._pool.close()

    async def _all(self, sql: str, params: Any) -> list[QueueItem]:
        async with self._pool.connection() as db:
            rows = await (await db.execute(sql, params)).fetchall()
        return [_item(row) for row in rows]


def _end(status: QueueItemStatus, error: ItemError | None, now: datetime) -> dict[str, Any]:
    return {
        "status": status.value,
        "now": now,
        "error_type": None if error is None else error.error_type,
        "error": None if error is None else error.error,
        "error_code": None if error is None else error.error_code,
        "error_node_id": None if error is None else error.error_node_id,
    }


def _item(row: tuple[Any, ...]) -> QueueItem:
    return QueueItem.from_row(row[:12], owner=row[12])
