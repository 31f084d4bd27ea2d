"""The queue store on the engine `database_url` names."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from services.common.database_url import postgres_url
from services.invoker.queue.items import QueueStore
from services.invoker.queue.postgres_store import PostgresQueueStore
from services.invoker.queue.sqlite_store import SqliteQueueStore, WriterQueueStore
from services.invoker.sessions.writer import on_writer

DEFAULT_LEASE_S = 30.0


async def open_queue_store(
    database_url: str,
    sqlite_path: Path,
    writer: ThreadPoolExecutor,
    owner: str = "",
    lease_s: float = DEFAULT_LEASE_S,
) -> QueueStore:
    """The items in the PostgreSQL database of `database_url`, claimed as `owner` with
    leases of `lease_s` seconds; or in the SQLite file `sqlite_path` when it is `sqlite:`,
    called on `writer`, the file's writer thread. A store's `claim_next` is one claim,
    whole, on either engine (what a benchmark times)."""
    url = postgres_url(database_url)
    if url is None:
        return WriterQueueStore(await on_writer(writer, SqliteQueueStore, sqlite_path), writer)
    return await PostgresQueueStore.open(url, owner, lease_s)
