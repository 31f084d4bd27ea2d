"""The session store on the engine `database_url` names."""

from __future__ import annotations

from pathlib import Path

from services.common.database_url import postgres_url
from services.invoker.sessions.postgres_store import PostgresSessionStore
from services.invoker.sessions.store import SessionStore, SqliteSessionStore


def open_session_store(database_url: str, sqlite_path: Path, owner: str = "") -> SessionStore:
    """The sessions in the PostgreSQL database of `database_url` (changes announced as
    `owner`), or in the SQLite file `sqlite_path` when it is `sqlite:`. Blocking."""
    url = postgres_url(database_url)
    if url is None:
        return SqliteSessionStore(sqlite_path)
    return PostgresSessionStore(url, owner)
