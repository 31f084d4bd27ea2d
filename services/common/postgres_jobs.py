"""Jobs that survive a restart, kept in PostgreSQL: `SqliteJobRows`' twin.

The table is named for the jobs it holds (`download_jobs`, `install_jobs`), so every
service can share one database. Ids come from a sequence (`<table>_ids`), which never
hands a number out twice, not even across replicas or after a rollback.

Every call goes through one queue to one writer task on one connection, so writes land in
the order they were asked for, awaited or not, as on SQLite.

A service keeps its jobs in memory and this table only persists them: two processes on one
table would each take up the other's unfinished jobs at start-up and run them twice. So the
first process holds a session-level advisory lock named for the table for as long as its
connection lives; a second one waits LOCK_WAIT_S for it, then is refused at start-up
(JOB_STORE_IN_USE). The lock goes away with the first process, even one killed with no
chance to clean up, so a restarted service takes its table back.

The lock also goes away with the connection, so the writer takes it back when it
reconnects. A write that fails because the connection is gone (PostgreSQL restarted, the
backend terminated, the network cut) is not dropped: the writer reconnects, retrying with
a backoff of up to RECONNECT_MAX_S, ends its own old backend should the server still keep
it (it is found by the connection's application_name, unique to this process), takes the
lock again and makes that write once more, then the ones queued after it, so none is lost
or reordered; callers wait meanwhile. Every write is idempotent (an upsert, a delete, a
read), so making one twice is harmless; an id asked for twice only skips a number. Should
another process hold the lock by then, it has taken the table over while this one was cut
off: this process logs an error and from then on refuses every call with
FailedPreconditionError (JOB_STORE_IN_USE), not UnavailableError, since waiting will not
help; `put_soon` writes are refused the same way and logged. It must be restarted once
only one such service runs on the database.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

import psycopg
import structlog

from services.common.database_url import redact
from services.common.errors import FailedPreconditionError
from services.common.migrations import Migration, advisory_lock_key, migrate_postgres_at
from services.common.postgres_pool import connection_lost

log = structlog.get_logger(__name__)
T = TypeVar("T")
Work = Callable[[psycopg.AsyncConnection], Awaitable[Any]]

JOB_STORE_IN_USE = "JOB_STORE_IN_USE"
LOCK_WAIT_S = 2
RECONNECT_FIRST_S = 0.1
RECONNECT_MAX_S = 5


def table_lock_key(table: str) -> int:
    return advisory_lock_key(f"easel {table}")


def postgres_job_migrations(table: str) -> list[Migration]:
    return [
        Migration(
            1,
            (
                f"CREATE TABLE {table} (id BIGINT PRIMARY KEY, job TEXT NOT NULL)",
                f"CREATE SEQUENCE {table}_ids AS BIGINT",
            ),
        )
    ]


class PostgresJobRows:
    """One table of jobs (`id`, `job` as JSON text) and its id sequence; `open` makes one."""

    def __init__(self, db: psycopg.AsyncConnection, url: str, table: str, name: str) -> None:
        self._db = db
        self._url = url
        self._table = table
        self._name = name
        self._lost: FailedPreconditionError | None = None
        self._queue: asyncio.Queue[tuple[Work, asyncio.Future[Any] | None] | None] = asyncio.Queue()
        self._writer = asyncio.create_task(self._write_in_order(), name=f"{table}-writer")

    @classmethod
    async def open(cls, url: str, table: str) -> PostgresJobRows:
        """The rows of `table` at `url`, its schema brought up to date; refused with
        FailedPreconditionError (JOB_STORE_IN_USE) while another process holds them."""
        if not table.isidentifier():
            raise ValueError(f"not a table name: {table!r}")
        await asyncio.to_thread(migrate_postgres_at, url, table, postgres_job_migrations(table))
        name = f"easel {table} {uuid.uuid4().hex[:12]}"
        try:
            db = await _take_table(url, table, name)
        except psycopg.errors.LockNotAvailable:
            raise FailedPreconditionError(
                f"another process keeps its {table} in {redact(url)}; "
                "run one such service per database",
                reason=JOB_STORE_IN_USE,
                metadata={"table": table},
            ) from None
        return cls(db, url, table, name)

    async def allocate_id(self) -> int:
        """A new job id, never handed out before."""

        async def next_id(db: psycopg.AsyncConnection) -> int:
            cursor = await db.execute("SELECT nextval(%s)", (f"{self._table}_ids",))
            row = await cursor.fetchone()
            assert row is not None
            return int(row[0])

        return await self._run(next_id)

    async def put(self, job_id: int, job: str) -> None:
        """Insert or replace the job `job_id`; returns once it is written."""
        await self._run(self._put(job_id, job))

    def put_soon(self, job_id: int, job: str) -> None:
        """Insert or replace the job `job_id` without waiting for it; the write lands in
        order with every other call, a failure is logged, and `flush` waits for it."""
        self._queue.put_nowait((self._put(job_id, job), None))

    async def delete(self, job_ids: Iterable[int]) -> None:
        ids = list(job_ids)

        async def delete(db: psycopg.AsyncConnection) -> None:
            await db.execute(f"DELETE FROM {self._table} WHERE id = ANY(%s)", (ids,))

        await self._run(delete)

    async def load_all(self) -> list[str]:
        """Every stored job, by id."""

        async def load(db: psycopg.AsyncConnection) -> list[str]:
            cursor = await db.execute(f"SELECT job FROM {self._table} ORDER BY id")
            return [row[0] for row in await cursor.fetchall()]

        return await self._run(load)

    async def flush(self) -> None:
        """Wait until every write asked for so far has been made."""

        async def nothing(db: psycopg.AsyncConnection) -> None:
            return None

        await self._run(nothing)

    async def close(self) -> None:
        """Finish the writes asked for, free the table, then close the connection."""
        self._queue.put_nowait(None)
        await self._writer
        if self._lost is not None:
            await self._db.close()
            return
        try:
            # Now, not when the server notices the closed connection: a process that
            # opens the table right after this one closes it finds it free.
            await self._db.execute("SELECT pg_advisory_unlock(%s)", (table_lock_key(self._table),))
        except psycopg.OperationalError as exc:
            if not connection_lost(self._db, exc):
                raise  # the lock went with a lost connection
        finally:
            await self._db.close()

    def _put(self, job_id: int, job: str) -> Work:
        async def put(db: psycopg.AsyncConnection) -> None:
            await db.execute(
                f"INSERT INTO {self._table} (id, job) VALUES (%s, %s) "
                "ON CONFLICT (id) DO UPDATE SET job = EXCLUDED.job",
                (job_id, job),
            )

        return put

    async def _run(self, work: Callable[[psycopg.AsyncConnection], Awaitable[T]]) -> T:
        done: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((work, done))
        return await done

    async def _write_in_order(self) -> None:
        while (item := await self._queue.get()) is not None:
            work, done = item
            try:
                result = await self._write(work)
            except Exception as exc:
                if done is None:
                    log.error("writing a job failed", table=self._table, exc_info=exc)
                elif not done.cancelled():
                    done.set_exception(exc)
                continue
            if done is not None and not done.cancelled():
                done.set_result(result)

    async def _write(self, work: Work) -> Any:
        """`work` done on the connection, made again on a new one as long as the
        connection is lost."""
        while self._lost is None:
            try:
                return await work(self._db)
            except psycopg.OperationalError as exc:
                if not connection_lost(self._db, exc):
                    raise
                log.warning(
                    "lost the connection to the job table", table=self._table, error=str(exc)
                )
            await self._reconnect()
        raise self._lost

    async def _reconnect(self) -> None:
        """A new connection holding the table's lock, or `_lost` set when another
        process holds it; tries until one of the two."""
        await self._db.close()
        delay = RECONNECT_FIRST_S
        while True:
            try:
                self._db = await _take_table(self._url, self._table, self._name)
            except psycopg.errors.LockNotAvailable:
                self._lost = FailedPreconditionError(
                    f"another process took over {self._table} in {redact(self._url)} while "
                    "this one was cut off from it; restart this service once only one such "
                    "service runs per database",
                    reason=JOB_STORE_IN_USE,
                    metadata={"table": self._table},
                )
                log.error("job table taken over by another process", table=self._table)
                return
            except psycopg.OperationalError as exc:
                log.warning(
                    "reconnecting to the job table failed",
                    table=self._table,
                    error=str(exc),
                    retry_in_s=delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX_S)
                continue
            log.info("reconnected to the job table", table=self._table)
            return


async def _take_table(url: str, table: str, name: str) -> psycopg.AsyncConnection:
    """A connection named `name` holding `table`'s lock; LockNotAvailable when another
    process keeps it past LOCK_WAIT_S. A backend of ours the server still keeps from a
    connection cut off (named `name` too) is ended first, freeing the lock it holds."""
    db = await psycopg.AsyncConnection.connect(url, autocommit=True, application_name=name)
    try:
        await db.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = %s AND pid <> pg_backend_pid()",
            (name,),
        )
        # A holder that just went away frees the lock a moment later: wait that long.
        await db.execute(f"SET lock_timeout = '{LOCK_WAIT_S}s'")
        await db.execute("SELECT pg_advisory_lock(%s)", (table_lock_key(table),))
        await db.execute("SET lock_timeout = 0")
    except BaseException:
        await db.close()
        raise
    return db
