"""Sessions in PostgreSQL, shared by every invoker process of the database.

The layout follows the SQLite store: a row per session, node, edge and run, each piece
kept in the order it was written (`seq`). Every write announces the session on
SESSIONS_CHANNEL, so the other processes reload it.

A read is one statement (so one snapshot): each session row with its nodes, edges and
runs gathered by subqueries in the order written; every process reads a session again
whenever another one changes it. A write is one transaction sent in one round trip
(pipeline mode).

Two processes may write one session's status row close together: the one that queued a
run and the one that claimed it. A write never takes a session back: it lands only if it
is about a later queue item, or about the same item and no earlier in its course (QUEUED,
then RUNNING, then settled), so a late "QUEUED" never hides "RUNNING" or the result.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import psycopg

from services.common.migrations import Migration
from services.common.postgres_async_pool import AsyncPostgresPool
from services.invoker.replica_notices import SESSIONS_CHANNEL, invoker_pool, notify
from services.invoker.sessions.store import SessionChange, SessionRecord, SessionStore, records

COMPONENT = "invoker_sessions"
MIGRATIONS = [
    Migration(
        1,
        (
            """CREATE TABLE invoker_sessions (
                id TEXT PRIMARY KEY,
                status TEXT NOT NULL,
                queue_item_id BIGINT NOT NULL,
                create_time TIMESTAMPTZ NOT NULL,
                update_time TIMESTAMPTZ NOT NULL
            )""",
            "CREATE INDEX invoker_sessions_by_age ON invoker_sessions (create_time)",
            *(
                f"""CREATE TABLE invoker_session_{part} (
                    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                    session_id TEXT NOT NULL REFERENCES invoker_sessions ON DELETE CASCADE,
                    body TEXT NOT NULL
                )"""
                for part in ("nodes", "edges")
            ),
            "CREATE INDEX invoker_session_nodes_by_session ON invoker_session_nodes "
            "(session_id, seq)",
            "CREATE INDEX invoker_session_edges_by_session ON invoker_session_edges "
            "(session_id, seq)",
            "CREATE SEQUENCE invoker_session_runs_seq AS BIGINT",
            """CREATE TABLE invoker_session_runs (
                session_id TEXT NOT NULL REFERENCES invoker_sessions ON DELETE CASCADE,
                run_id TEXT NOT NULL,
                seq BIGINT NOT NULL DEFAULT nextval('invoker_session_runs_seq'),
                failed BOOLEAN NOT NULL,
                body TEXT NOT NULL,
                PRIMARY KEY (session_id, run_id)
            )""",
            "CREATE INDEX invoker_session_runs_by_session ON invoker_session_runs "
            "(session_id, seq)",
        ),
    )
]

COURSE = {"QUEUED": 1, "RUNNING": 2}
"""How far along its queue item a status is; every settled status is 3."""
STORED_COURSE = "CASE status WHEN 'QUEUED' THEN 1 WHEN 'RUNNING' THEN 2 ELSE 3 END"
SESSION_COLUMNS = "id, status, queue_item_id, create_time, update_time"
RUN_JSON = "'[' || to_json(run_id)::text || ',' || failed::text || ',' || body || ']'"
"""A run as the JSON text [run id, failed, body]; bodies are JSON text already."""
RECORDS = (
    f"SELECT {SESSION_COLUMNS}, "
    + ", ".join(
        f"(SELECT '[' || COALESCE(string_agg({part}, ',' ORDER BY seq), '') || ']' "
        f"FROM invoker_session_{table} WHERE session_id = s.id)"
        for part, table in (("body", "nodes"), ("body", "edges"), (RUN_JSON, "runs"))
    )
    + " FROM invoker_sessions s"
)
"""Each session with its nodes, edges and runs as JSON arrays, in the order written."""


class PostgresSessionStore(SessionStore):
    """Sessions in the `invoker_session*` tables; changes announced as `owner`. `open`
    makes one."""

    def __init__(self, pool: AsyncPostgresPool, owner: str) -> None:
        self._owner = owner
        self._pool = pool

    @classmethod
    async def open(cls, url: str, owner: str) -> PostgresSessionStore:
        return cls(await invoker_pool(url, COMPONENT, MIGRATIONS), owner)

    async def create(self, record: SessionRecord) -> None:
        change = SessionChange.whole(record)
        async with self._pool.connection() as db, db.pipeline(), db.transaction():
            await db.execute(
                f"INSERT INTO invoker_sessions ({SESSION_COLUMNS}) VALUES (%s, %s, %s, %s, %s)",
                (
                    record.id,
                    record.status,
                    record.queue_item_id,
                    record.create_time,
                    record.update_time,
                ),
            )
            await self._write_parts(db, change)

    async def update(self, change: SessionChange) -> None:
        async with self._pool.connection() as db, db.pipeline(), db.transaction():
            await db.execute(
                "UPDATE invoker_sessions SET status = %(status)s, queue_item_id = %(item)s, "
                "update_time = %(time)s WHERE id = %(id)s AND (queue_item_id < %(item)s OR "
                f"(queue_item_id = %(item)s AND {STORED_COURSE} <= %(course)s))",
                {
                    "status": change.status,
                    "item": change.queue_item_id,
                    "time": change.update_time,
                    "id": change.id,
                    "course": COURSE.get(change.status, 3),
                },
            )
            await self._write_parts(db, change)

    async def _write_parts(self, db: psycopg.AsyncConnection, change: SessionChange) -> None:
        async with db.cursor() as cursor:
            for part, bodies in (("nodes", change.nodes), ("edges", change.edges)):
                if bodies:
                    await cursor.executemany(
                        f"INSERT INTO invoker_session_{part} (session_id, body) VALUES (%s, %s)",
                        [(change.id, json.dumps(body)) for body in bodies],
                    )
            runs = [
                *_runs(change.id, change.results, False),
                *_runs(change.id, change.errors, True),
            ]
            if runs:
                await cursor.executemany(
                    "INSERT INTO invoker_session_runs (session_id, run_id, failed, body) "
                    "VALUES (%s, %s, %s, %s) ON CONFLICT (session_id, run_id) DO UPDATE SET "
                    "failed = EXCLUDED.failed, body = EXCLUDED.body, seq = EXCLUDED.seq",
                    runs,
                )
        await notify(db, SESSIONS_CHANNEL, f"{self._owner} {change.id}")

    async def delete(self, session_id: str) -> None:
        async with self._pool.connection() as db, db.pipeline(), db.transaction():
            await db.execute("DELETE FROM invoker_sessions WHERE id = %s", (session_id,))
            await notify(db, SESSIONS_CHANNEL, f"{self._owner} {session_id}")

    async def all(self) -> list[SessionRecord]:
        return await self._records(f"{RECORDS} ORDER BY create_time, id", ())

    async def get(self, session_id: str) -> SessionRecord | None:
        found = await self._records(f"{RECORDS} WHERE id = %s", (session_id,))
        return found[0] if found else None

    async def _records(self, sql: str, params: tuple[str, ...]) -> list[SessionRecord]:
        async with self._pool.connection() as db:
            rows = await (await db.execute(sql, params)).fetchall()
        nodes: dict[str, list[Any]] = {}
        edges: dict[str, list[Any]] = {}
        runs: list[tuple[str, str, bool, Any]] = []
        for row in rows:
            session_id = row[0]
            nodes[session_id] = json.loads(row[5])
            edges[session_id] = json.loads(row[6])
            runs.extend((session_id, *run) for run in json.loads(row[7]))
        return records([row[:5] for row in rows], nodes, edges, runs)

    async def close(self) -> None:
        await self._pool.close()


def _runs(
    session_id: str, runs: Mapping[str, Mapping[str, Any]], failed: bool
) -> list[tuple[str, str, bool, str]]:
    return [(session_id, key, failed, json.dumps(dict(body))) for key, body in runs.items()]
