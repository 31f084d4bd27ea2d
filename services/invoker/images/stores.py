"""The image record store on the engine `database_url` names."""

from __future__ import annotations

from pathlib import Path

from services.common.database_url import postgres_url
from services.invoker.images.postgres_store import PostgresImageRecordStore
from services.invoker.images.records import ImageRecordStore
from services.invoker.images.sqlite_store import WriterImageRecordStore


async def open_image_records(database_url: str, sqlite_path: Path) -> ImageRecordStore:
    """The records in the PostgreSQL database of `database_url`, or in the SQLite file
    `sqlite_path` when it is `sqlite:`."""
    url = postgres_url(database_url)
    if url is None:
        return await WriterImageRecordStore.open(sqlite_path)
    return await PostgresImageRecordStore.open(url)
