"""Jobs that survive a restart: each job's last saved state as JSON text, by id, in SQLite
(`postgres_jobs.PostgresJobRows` is the same on PostgreSQL; `job_rows` picks one).

A service keeps its jobs in memory and writes each one here when its state changes; at
start it reads them back. Ids come from a persisted counter (`counters` row `job_id`), so
an id is never handed out twice, not even after its job was deleted. Every call runs on
one worker thread, one after another: they stay off the event loop and land in the order
they were asked for, so an older state of a job never overwrites a newer one.

A service keeps its jobs in memory and this table only persists them: two processes on one
table would each take up the other's unfinished jobs at start-up and run them twice. So the
store holds an exclusive lock on a file beside the database (`<file>.<table>.lock`) from
open to close, and a second store on the same table, in this process or another, is
refused (JOB_STORE_IN_USE), as on PostgreSQL. The lock goes away with its process, even
one killed with no chance to clean up, so a restarted service takes its table back.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import structlog

from services.common.errors import FailedPreconditionError
from services.common.migrations import Migration, migrate_sqlite
from services.common.postgres_jobs import JOB_STORE_IN_USE
from services.common.sqlite_files import claim_lock_file, open_wal_database

log = structlog.get_logger(__name__)
T = TypeVar("T")


def sqlite_job_migrations(table: str) -> list[Migration]:
    """The job table and the id counter; files written before migrations were recorded
    hold both already, which the IF NOT EXISTS leaves as they are."""
    return [
        Migration(
            1,
            (
                f"CREATE TABLE IF NOT EXISTS {table} (id INTEGER PRIMARY KEY, job TEXT NOT NULL)",
                "CREATE TABLE IF NOT EXISTS counters "
                "(name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
            ),
        )
    ]


class SqliteJobRows:
    """One table of jobs (`id`, `job` as JSON text) and an id counter in a WAL-mode file;
    refused with FailedPreconditionError (JOB_STORE_IN_USE) while another store holds
    the table."""

    def __init__(self, path: Path, table: str) -> None:
        if not table.isidentifier():
            raise ValueError(f"not a table name: {table!r}")
        self._table = table
        lock = path.with_name(f"{path.name}.{table}.lock")
        held = claim_lock_file(lock)
        if held is None:
            raise FailedPreconditionError(
                f"another process keeps its {table} in {path} (it holds the lock on {lock}); "
                "run one such service per database file",
                reason=JOB_STORE_IN_USE,
                metadata={"table": table, "path": str(path)},
            )
        self._held = held
        try:
            self._db = open_wal_database(path)
            migrate_sqlite(self._db, table, sqlite_job_migrations(table))
        except BaseException:
            os.close(held)
            raise
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{table}-db")

    async def allocate_id(self) -> int:
        """A new job id, never handed out before."""
        return await self._run(self._next_id)

    async def put(self, job_id: int, job: str) -> None:
        """Insert or replace the job `job_id`; returns once it is written."""
        await self._run(lambda: self._put(job_id, job))

    def put_soon(self, job_id: int, job: str) -> None:
        """Insert or replace the job `job_id` without waiting for it, for callers that
        must not wait (e.g. a status change amid a transfer). The write still lands in
        order with every other call; a failure is logged. `flush` waits for it."""
        self._writer.submit(self._put, job_id, job).add_done_callback(self._log_failure)

    async def delete(self, job_ids: Iterable[int]) -> None:
        rows = [(job_id,) for job_id in job_ids]
        sql = f"DELETE FROM {self._table} WHERE id = ?"
        await self._run(lambda: self._db.executemany(sql, rows))

    async def load_all(self) -> list[str]:
        """Every stored job, by id."""
        sql = f"SELECT job FROM {self._table} ORDER BY id"
        return await self._run(lambda: [row[0] for row in self._db.execute(sql)])

    async def flush(self) -> None:
        """Wait until every write asked for so far has been made."""
        await self._run(lambda: None)

    async def close(self) -> None:
        """Finish the writes asked for, close the file, then free the table."""
        await self.flush()
        self._writer.shutdown(wait=True)
        self._db.close()
        os.close(self._held)

    def _put(self, job_id: int, job: str) -> None:
        sql = f"INSERT OR REPLACE INTO {self._table} (id, job) VALUES (?, ?)"
        self._db.execute(sql, (job_id, job))

    def _next_id(self) -> int:
        row = self._db.execute(
            "INSERT INTO counters (name, value) VALUES ('job_id', 1) "
            "ON CONFLICT(name) DO UPDATE SET value = value + 1 RETURNING value"
        ).fetchone()
        return int(row[0])

    def _log_failure(self, done: Future[None]) -> None:
        if done.exception() is not None:
            log.error("writing a job failed", table=self._table, exc_info=done.exception())

    async def _run(self, work: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._writer, work)
