"""Where sessions are kept between changes and across restarts.

A session is stored as JSON (its graph, the results and errors of its execution, its
status), so the store knows nothing of node types; the session manager rebuilds the graph
through the registry on load. The store is an interface so that a shared database can
replace the embedded SQLite file.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

SESSIONS_DB = Path("databases/sessions.db")
"""The SQLite file of the sessions, relative to the root."""


@dataclass(frozen=True)
class SessionRecord:
    """A session as stored: `graph` and `state` are JSON-ready dicts."""

    id: str
    graph: dict[str, Any]
    state: dict[str, Any]
    status: str
    queue_item_id: int
    create_time: datetime
    update_time: datetime


class SessionStore(ABC):
    """Session records by id; calls come from one thread at a time."""

    @abstractmethod
    def put(self, record: SessionRecord) -> None:
        """Insert or replace the record."""

    @abstractmethod
    def delete(self, session_id: str) -> None: ...

    @abstractmethod
    def all(self) -> list[SessionRecord]:
        """Every record, oldest first (loaded once at start-up)."""

    @abstractmethod
    def close(self) -> None: ...


class SqliteSessionStore(SessionStore):
    """Records in one WAL-mode SQLite file."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS sessions (id TEXT PRIMARY KEY, graph TEXT NOT NULL, "
            "state TEXT NOT NULL, status TEXT NOT NULL, queue_item_id INTEGER NOT NULL, "
            "create_time TEXT NOT NULL, update_time TEXT NOT NULL)"
        )

    def put(self, record: SessionRecord) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO sessions VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    record.id,
                    json.dumps(record.graph),
                    json.dumps(record.state),
                    record.status,
                    record.queue_item_id,
                    record.create_time.isoformat(),
                    record.update_time.isoformat(),
                ),
            )

    def delete(self, session_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM sessions WHERE id = ?", (session_id,))

    def all(self) -> list[SessionRecord]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM sessions ORDER BY create_time").fetchall()
        return [
            SessionRecord(
                row[0],
                json.loads(row[1]),
                json.loads(row[2]),
                row[3],
                row[4],
                datetime.fromisoformat(row[5]),
                datetime.fromisoformat(row[6]),
            )
            for row in rows
        ]

    def close(self) -> None:
        with self._lock:
            self._db.close()
