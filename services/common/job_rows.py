"""The job rows a service keeps its jobs in, on the engine `database_url` names."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from services.common.database_url import postgres_url
from services.common.postgres_jobs import PostgresJobRows
from services.common.sqlite_jobs import SqliteJobRows


class JobRows(Protocol):
    """Jobs as JSON text by id, ids never reused, writes landing in the order asked."""

    async def allocate_id(self) -> int: ...

    async def put(self, job_id: int, job: str) -> None: ...

    def put_soon(self, job_id: int, job: str) -> None: ...

    async def delete(self, job_ids: Iterable[int]) -> None: ...

    async def load_all(self) -> list[str]: ...

    async def flush(self) -> None: ...

    async def close(self) -> None: ...


async def open_job_rows(database_url: str, sqlite_path: Path, table: str) -> JobRows:
    """Table `table` in the PostgreSQL database of `database_url`, or in the SQLite file
    `sqlite_path` when it is `sqlite:`."""
    url = postgres_url(database_url)
    if url is None:
        return SqliteJobRows(sqlite_path, table)
    return await PostgresJobRows.open(url, table)
