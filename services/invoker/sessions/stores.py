"""The session store on the engine `database_url` names."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from services.common.database_url import postgres_url
from services.invoker.sessions.postgres_store import PostgresSessionStore
from services.invoker.sessions.store import SessionStore, SqliteSessionStore, WriterSessionStore
from services.invoker.sessions.writer import on_writer


async def open_session_store(
    database_url: str, sqlite_path: Path, writer: ThreadPoolExecutor, owner: str = ""
) -> SessionStore:
    """The sessions in the PostgreSQL database of `database_url` (changes announced as
    `owner`), or in the SQLite file `sqlite_path` when it is `sqlite:`, called on
    `writer`, the file's writer thread."""
    url = postgres_url(database_url)
    if url is None:
        return WriterSessionStore(await on_writer(writer, SqliteSessionStore, sqlite_path), writer)
    return await PostgresSessionStore.open(url, owner)
