"""Where sessions are kept between changes and across restarts.

A session is stored as JSON pieces (its nodes, its edges, each run's result or failure,
its status), so the store knows nothing of node types; the session manager rebuilds the
graph through the registry on load. Each piece is its own row, so a change writes only
what changed: adding a node to a session of any size writes that node and its edges.
The store is an asynchronous interface so that a shared database (PostgreSQL,
`postgres_store`, called from the event loop) can replace the embedded SQLite file (a
blocking store whose calls `WriterSessionStore` runs on the file's writer thread);
`stores.open_session_store` picks the engine.
"""

from __future__ import annotations

import json
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from services.common.errors import FailedPreconditionError
from services.common.sqlite_files import claim_lock_file, open_wal_database
from services.invoker.sessions.writer import on_writer

EdgeJson = list[str]
"""An edge as [source node, source field, destination node, destination field]."""


@dataclass(frozen=True)
class SessionRecord:
    """A whole session as stored: `graph` holds `nodes` (dicts with id, type, inputs) and
    `edges`; `state` holds `executed` (run ids in the order they finished), `results`
    and `errors` by run id."""

    id: str
    graph: dict[str, Any]
    state: dict[str, Any]
    status: str
    queue_item_id: int
    create_time: datetime
    update_time: datetime


@dataclass(frozen=True)
class SessionChange:
    """What changed in a stored session: its status row, and the nodes, edges and runs
    added since the last change (results in the order they finished)."""

    id: str
    status: str
    queue_item_id: int
    update_time: datetime
    nodes: Sequence[Mapping[str, Any]] = ()
    edges: Sequence[EdgeJson] = ()
    results: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    errors: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @classmethod
    def whole(cls, record: SessionRecord) -> SessionChange:
        """A new session as one change: every node, edge and run of it."""
        return cls(
            record.id,
            record.status,
            record.queue_item_id,
            record.update_time,
            record.graph["nodes"],
            record.graph["edges"],
            {key: record.state["results"][key] for key in record.state["executed"]},
            record.state["errors"],
        )


class SessionStore(ABC):
    """Session records by id; the session manager calls it one call at a time."""

    @abstractmethod
    async def create(self, record: SessionRecord) -> None:
        """Stores a new session whole."""

    @abstractmethod
    async def update(self, change: SessionChange) -> None:
        """Writes a change of a stored session; the cost follows the change, not the
        session."""

    @abstractmethod
    async def delete(self, session_id: str) -> None: ...

    @abstractmethod
    async def all(self) -> list[SessionRecord]:
        """Every record, oldest first (loaded once at start-up)."""

    @abstractmethod
    async def get(self, session_id: str) -> SessionRecord | None:
        """The record as stored now; None when there is none."""

    @abstractmethod
    async def close(self) -> None: ...


SESSION_STORE_IN_USE = "SESSION_STORE_IN_USE"
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS session (id TEXT PRIMARY KEY, status TEXT NOT NULL, "
    "queue_item_id INTEGER NOT NULL, create_time TEXT NOT NULL, update_time TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS session_node (session_id TEXT NOT NULL, body TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS session_node_session ON session_node (session_id)",
    "CREATE TABLE IF NOT EXISTS session_edge (session_id TEXT NOT NULL, body TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS session_edge_session ON session_edge (session_id)",
    "CREATE TABLE IF NOT EXISTS session_run (session_id TEXT NOT NULL, run_id TEXT NOT NULL, "
    "failed INTEGER NOT NULL, body TEXT NOT NULL, PRIMARY KEY (session_id, run_id))",
)


class SqliteSessionStore:
    """Sessions in one WAL-mode SQLite file: a row per session, per node, per edge and per
    run, each kept in the order it was written (rowid). Blocking: `WriterSessionStore`
    runs its calls on the file's writer thread.

    The invoker keeps its sessions in memory and this file only persists them, and an
    invoker starting fails the queue items left RUNNING: a second invoker on the file would
    fail the first one's running item and then drift apart from it. So the store holds an
    exclusive lock on `<file>.lock` from open to close (freed with its process, kill -9
    included), and a second one is refused (SESSION_STORE_IN_USE)."""

    def __init__(self, path: Path) -> None:
        lock = path.with_name(f"{path.name}.lock")
        held = claim_lock_file(lock)
        if held is None:
            raise FailedPreconditionError(
                f"another invoker keeps its sessions in {path} (it holds the lock on {lock}); "
                "run one invoker per sessions file, or give invokers that share a queue one "
                "PostgreSQL database_url",
                reason=SESSION_STORE_IN_USE,
                metadata={"path": str(path)},
            )
        self._held = held
        self._lock = threading.Lock()
        try:
            self._db = open_wal_database(path, _SCHEMA)
        except BaseException:
            os.close(held)
            raise

    def trace(self, callback: Any) -> None:
        """Calls `callback` with each SQL statement run (with its values), to see what a
        change costs."""
        self._db.set_trace_callback(callback)

    def create(self, record: SessionRecord) -> None:
        change = SessionChange.whole(record)
        with self._lock, self._db:
            self._db.execute("BEGIN")
            self._db.execute(
                "INSERT INTO session VALUES (?, ?, ?, ?, ?)",
                (
                    record.id,
                    record.status,
                    record.queue_item_id,
                    record.create_time.isoformat(),
                    record.update_time.isoformat(),
                ),
            )
            self._write_parts(change)

    def update(self, change: SessionChange) -> None:
        with self._lock, self._db:
            self._db.execute("BEGIN")
            self._db.execute(
                "UPDATE session SET status = ?, queue_item_id = ?, update_time = ? WHERE id = ?",
                (change.status, change.queue_item_id, change.update_time.isoformat(), change.id),
            )
            self._write_parts(change)

    def _write_parts(self, change: SessionChange) -> None:
        rows = [(change.id, json.dumps(node)) for node in change.nodes]
        self._db.executemany("INSERT INTO session_node VALUES (?, ?)", rows)
        rows = [(change.id, json.dumps(edge)) for edge in change.edges]
        self._db.executemany("INSERT INTO session_edge VALUES (?, ?)", rows)
        runs = [(change.id, key, 0, json.dumps(dict(v))) for key, v in change.results.items()]
        runs += [(change.id, key, 1, json.dumps(dict(v))) for key, v in change.errors.items()]
        self._db.executemany("INSERT OR REPLACE INTO session_run VALUES (?, ?, ?, ?)", runs)

    def delete(self, session_id: str) -> None:
        with self._lock, self._db:
            self._db.execute("BEGIN")
            for table in ("session_node", "session_edge", "session_run"):
                self._db.execute(f"DELETE FROM {table} WHERE session_id = ?", (session_id,))
            self._db.execute("DELETE FROM session WHERE id = ?", (session_id,))

    def all(self) -> list[SessionRecord]:
        return self._records(None)

    def get(self, session_id: str) -> SessionRecord | None:
        found = self._records(session_id)
        return found[0] if found else None

    def _records(self, session_id: str | None) -> list[SessionRecord]:
        """The session `session_id`, or every one (None), oldest first."""
        one = session_id is not None
        where, params = ("WHERE session_id = ?", (session_id,)) if one else ("", ())
        with self._lock:
            sessions = self._db.execute(
                f"SELECT * FROM session {'WHERE id = ?' if one else ''} ORDER BY create_time",
                params,
            ).fetchall()
            nodes = self._parts(
                f"SELECT session_id, body FROM session_node {where} ORDER BY rowid", params
            )
            edges = self._parts(
                f"SELECT session_id, body FROM session_edge {where} ORDER BY rowid", params
            )
            runs = [
                (session_id, run_id, failed, json.loads(body))
                for session_id, run_id, failed, body in self._db.execute(
                    f"SELECT session_id, run_id, failed, body FROM session_run {where} "
                    "ORDER BY rowid",
                    params,
                )
            ]
        return records(sessions, nodes, edges, runs)

    def _parts(self, query: str, params: tuple[str, ...]) -> dict[str, list[Any]]:
        parts: dict[str, list[Any]] = {}
        for session_id, body in self._db.execute(query, params):
            parts.setdefault(session_id, []).append(json.loads(body))
        return parts

    def close(self) -> None:
        with self._lock:
            self._db.close()
        os.close(self._held)


class WriterSessionStore(SessionStore):
    """A SQLite session store whose calls run on `writer`, the thread shared with the
    other stores of its file, in the order they are made."""

    def __init__(self, store: SqliteSessionStore, writer: ThreadPoolExecutor) -> None:
        self._store = store
        self._writer = writer

    async def create(self, record: SessionRecord) -> None:
        await on_writer(self._writer, self._store.create, record)

    async def update(self, change: SessionChange) -> None:
        await on_writer(self._writer, self._store.update, change)

    async def delete(self, session_id: str) -> None:
        await on_writer(self._writer, self._store.delete, session_id)

    async def all(self) -> list[SessionRecord]:
        return await on_writer(self._writer, self._store.all)

    async def get(self, session_id: str) -> SessionRecord | None:
        return await on_writer(self._writer, self._store.get, session_id)

    async def close(self) -> None:
        await on_writer(self._writer, self._store.close)


def records(
    sessions: Sequence[tuple[Any, ...]],
    nodes: Mapping[str, list[Any]],
    edges: Mapping[str, list[Any]],
    runs: Sequence[tuple[str, str, Any, Any]],
) -> list[SessionRecord]:
    """Records from the rows of a store: `sessions` (id, status, queue item id, create and
    update time, in order), nodes and edges by session, runs (session, run id, failed,
    body) in the order they were written."""
    results: dict[str, dict[str, Any]] = {}
    errors: dict[str, dict[str, Any]] = {}
    for session_id, run_id, failed, body in runs:
        (errors if failed else results).setdefault(session_id, {})[run_id] = body
    return [
        SessionRecord(
            row[0],
            {"nodes": nodes.get(row[0], []), "edges": edges.get(row[0], [])},
            {
                "executed": list(results.get(row[0], {})),
                "results": results.get(row[0], {}),
                "errors": errors.get(row[0], {}),
            },
            row[1],
            row[2],
            _time(row[3]),
            _time(row[4]),
        )
        for row in sessions
    ]


def _time(value: str | datetime) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)
