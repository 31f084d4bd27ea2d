"""Image records in PostgreSQL, shared by every invoker process of the database; the
files themselves stay in the shared outputs folder.

The layout follows the SQLite store: one row per image, `seq` (an identity) giving
"newest first", an index per filter column. Metadata is kept as JSON text, so it reads
back exactly as written. A page and its total come from one snapshot, so they agree.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from services.common.migrations import Migration
from services.common.postgres_async_pool import AsyncPostgresPool
from services.invoker.images.records import (
    ImageChanges,
    ImageOrigin,
    ImageQuery,
    ImageRecord,
    ImageRecordStore,
    image_not_found,
)
from services.invoker.replica_notices import invoker_pool

COMPONENT = "invoker_images"
MIGRATIONS = [
    Migration(
        1,
        (
            """CREATE TABLE invoker_images (
                seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                name TEXT NOT NULL UNIQUE,
                width INTEGER NOT NULL,
                height INTEGER NOT NULL,
                origin TEXT NOT NULL,
                is_intermediate BOOLEAN NOT NULL,
                session_id TEXT NOT NULL,
                node_id TEXT NOT NULL,
                create_time TIMESTAMPTZ NOT NULL,
                update_time TIMESTAMPTZ NOT NULL,
                metadata TEXT NOT NULL,
                size_bytes BIGINT NOT NULL
            )""",
            "CREATE INDEX invoker_images_by_session ON invoker_images (session_id, seq)",
            "CREATE INDEX invoker_images_by_origin ON invoker_images (origin, seq)",
        ),
    )
]
COLUMNS = (
    "name, width, height, origin, is_intermediate, session_id, node_id, create_time, "
    "update_time, metadata, size_bytes"
)


class PostgresImageRecordStore(ImageRecordStore):
    """Records in the `invoker_images` table; `open` makes one."""

    def __init__(self, pool: AsyncPostgresPool) -> None:
        self._pool = pool

    @classmethod
    async def open(cls, url: str) -> PostgresImageRecordStore:
        return cls(await invoker_pool(url, COMPONENT, MIGRATIONS))

    async def add(self, record: ImageRecord) -> None:
        async with self._pool.connection() as db:
            await db.execute(
                f"INSERT INTO invoker_images ({COLUMNS}) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                _row(record),
            )

    async def get(self, name: str) -> ImageRecord:
        sql = f"SELECT {COLUMNS} FROM invoker_images WHERE name = %s"
        return await self._one(name, sql, (name,))

    async def update(self, name: str, changes: ImageChanges, when: datetime) -> ImageRecord:
        sets, params = ["update_time = %s"], [when]
        if changes.is_intermediate is not None:
            sets.append("is_intermediate = %s")
            params.append(changes.is_intermediate)
        if changes.metadata is not None:
            sets.append("metadata = %s")
            params.append(json.dumps(changes.metadata))
        sql = f"UPDATE invoker_images SET {', '.join(sets)} WHERE name = %s RETURNING {COLUMNS}"
        return await self._one(name, sql, [*params, name])

    async def delete(self, name: str) -> ImageRecord:
        sql = f"DELETE FROM invoker_images WHERE name = %s RETURNING {COLUMNS}"
        return await self._one(name, sql, (name,))

    async def search_page(
        self, query: ImageQuery, offset: int, limit: int
    ) -> tuple[list[ImageRecord], int]:
        clauses: list[str] = []
        params: list[Any] = []
        if query.session_id is not None:
            clauses.append("session_id = %s")
            params.append(query.session_id)
        if query.origin is not None:
            clauses.append("origin = %s")
            params.append(str(query.origin))
        if query.is_intermediate is not None:
            clauses.append("is_intermediate = %s")
            params.append(query.is_intermediate)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        async with self._pool.connection() as db, db.transaction():
            await db.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            cursor = await db.execute(
                f"SELECT {COLUMNS} FROM invoker_images{where} ORDER BY seq DESC LIMIT %s OFFSET %s",
                [*params, limit, offset],
            )
            rows = await cursor.fetchall()
            cursor = await db.execute(f"SELECT COUNT(*) FROM invoker_images{where}", params)
            counted = await cursor.fetchone()
        return [_record(row) for row in rows], counted[0] if counted else 0

    async def close(self) -> None:
        await self._pool.close()

    async def _one(self, name: str, sql: str, params: Any) -> ImageRecord:
        """The record the statement returns; NotFoundError when it returns none."""
        async with self._pool.connection() as db:
            found = await (await db.execute(sql, params)).fetchone()
        if found is None:
            raise image_not_found(name)
        return _record(found)


def _row(record: ImageRecord) -> tuple[Any, ...]:
    return (
        record.name,
        record.width,
        record.height,
        str(record.origin),
        record.is_intermediate,
        record.session_id,
        record.node_id,
        record.create_time,
        record.update_time,
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
        is_intermediate=intermediate,
        session_id=session,
        node_id=node,
        create_time=created,
        update_time=updated,
        metadata=json.loads(meta),
        size_bytes=size,
    )
