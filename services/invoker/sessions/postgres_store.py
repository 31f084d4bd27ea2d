"""Sessions in PostgreSQL, shared by every invoker process of the database.

The layout follows the SQLite store: a row per session, node, edge and run, each piece
kept in the order it was written (`seq`). Every write announces the session on
SESSIONS_CHANNEL, so the other processes reload it.

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


class PostgresSessionStore(SessionStore):
    """Sessions in the `invoker_session*` tables; changes announced as `owner`."""

    def __init__(self, url: str, owner: str) -> None:
        self._owner = owner
        self._pool = invoker_pool(url, COMPONENT, MIGRATIONS)

    def create(self, record: SessionRecord) -> None:
        change = SessionChange(
            record.id,
            record.status,
            record.queue_item_id,
            record.update_time,
            record.graph["nodes"],
            record.graph["edges"],
            {key: record.state["results"][key] for key in record.state["executed"]},
            record.state["errors"],
        )
        with self._pool.connection() as db, db.transaction():
            db.execute(
                f"INSERT INTO invoker_sessions ({SESSION_COLUMNS}) VALUES (%s, %s, %s, %s, %s)",
                (
                    record.id,
                    record.status,
                    record.queue_item_id,
                    record.create_time,
                    record.update_time,
                ),
            )
            self._write_parts(db, change)

    def update(self, change: SessionChange) -> None:
        with self._pool.connection() as db, db.transaction():
            db.execute(
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
            self._write_parts(db, change)

    def _write_parts(self, db: psycopg.Connection, change: SessionChange) -> None:
        with db.cursor() as cursor:
            for part, bodies in (("nodes", change.nodes), ("edges", change.edges)):
                cursor.executemany(
                    f"INSERT INTO invoker_session_{part} (session_id, body) VALUES (%s, %s)",
                    [(change.id, json.dumps(body)) for body in bodies],
                )
            cursor.executemany(
                "INSERT INTO invoker_session_runs (session_id, run_id, failed, body) "
                "VALUES (%s, %s, %s, %s) ON CONFLICT (session_id, run_id) DO UPDATE SET "
                "failed = EXCLUDED.failed, body = EXCLUDED.body, seq = EXCLUDED.seq",
                [*_runs(change.id, change.results, False), *_runs(change.id, change.errors, True)],
            )
        notify(db, SESSIONS_CHANNEL, f"{self._owner} {change.id}")

    def delete(self, session_id: str) -> None:
        with self._pool.connection() as db, db.transaction():
            db.execute("DELETE FROM invoker_sessions WHERE id = %s", (session_id,))
            notify(db, SESSIONS_CHANNEL, f"{self._owner} {session_id}")

    def all(self) -> list[SessionRecord]:
        return self._records(None)

    def get(self, session_id: str) -> SessionRecord | None:
        found = self._records(session_id)
        return found[0] if found else None

    def _records(self, session_id: str | None) -> list[SessionRecord]:
        """The session `session_id`, or every one (None), oldest first, from one snapshot."""
        one = session_id is not None
        where, params = ("WHERE session_id = %s", (session_id,)) if one else ("", ())
        with self._pool.connection() as db, db.transaction():
            db.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            sessions = db.execute(
                f"SELECT {SESSION_COLUMNS} FROM invoker_sessions "
                f"{'WHERE id = %s' if one else ''} ORDER BY create_time, id",
                params,
            ).fetchall()
            nodes = _parts(db, f"invoker_session_nodes {where}", params)
            edges = _parts(db, f"invoker_session_edges {where}", params)
            runs = db.execute(
                f"SELECT session_id, run_id, failed, body FROM invoker_session_runs {where} "
                "ORDER BY seq",
                params,
            ).fetchall()
        return records(sessions, nodes, edges, runs)

    def close(self) -> None:
        self._pool.close()


def _runs(
    session_id: str, runs: Mapping[str, Mapping[str, Any]], failed: bool
) -> list[tuple[str, str, bool, str]]:
    return [(session_id, key, failed, json.dumps(dict(body))) for key, body in runs.items()]


def _parts(db: psycopg.Connection, source: str, params: tuple[str, ...]) -> dict[str, list[Any]]:
    parts: dict[str, list[Any]] = {}
    for session_id, body in db.execute(
        f"SELECT session_id, body FROM {source} ORDER BY seq", params
    ):
        parts.setdefault(session_id, []).append(json.loads(body))
    return parts
