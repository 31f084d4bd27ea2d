"""A pool of asyncio connections to one PostgreSQL database for one store, its tables
migrated when it opens: the twin of `PostgresPool` for stores called on the event loop
(the invoker's), so a call waits on the database without holding a thread.

Errors are those of `PostgresPool`: no connection to be had or the one in use lost is
UnavailableError "... cannot be reached", a statement the server could not carry out for
now UnavailableError "... is busy or short of resources", both with the store's own
reason; any other error is left as psycopg raised it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolClosed, PoolTimeout

from services.common.database_url import redact
from services.common.migrations import Migration, migrate_postgres_at
from services.common.postgres_pool import StoreErrors


class AsyncPostgresPool:
    """Autocommit asyncio connections to one database for one store (`what`, e.g. "the
    invoker database"); `open` makes one with its schema brought up to date."""

    def __init__(
        self, pool: AsyncConnectionPool, location: str, what: str, unavailable_reason: str
    ) -> None:
        self.location = location
        self._pool = pool
        self._errors = StoreErrors(what, location, unavailable_reason)

    @classmethod
    async def open(
        cls,
        url: str,
        component: str,
        migrations: Sequence[Migration],
        *,
        what: str,
        unavailable_reason: str,
        max_size: int = 4,
    ) -> AsyncPostgresPool:
        pool = AsyncConnectionPool(
            url, min_size=1, max_size=max_size, kwargs={"autocommit": True}, open=False
        )
        opened = cls(pool, redact(url), what, unavailable_reason)
        try:
            # Once, at start-up: the migrations are written for a blocking connection.
            await asyncio.to_thread(migrate_postgres_at, url, component, migrations)
            await pool.open(wait=True, timeout=30)
        except psycopg.OperationalError as exc:
            await pool.close()
            raise opened._errors.unreachable(exc) from None
        except BaseException:
            await pool.close()
            raise
        return opened

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection]:
        """A pooled autocommit connection; errors as the module says."""
        try:
            async with self._pool.connection() as db:
                try:
                    yield db
                except psycopg.OperationalError as exc:
                    if (reported := self._errors.of(db, exc)) is not None:
                        raise reported from None
                    raise
        except (PoolTimeout, PoolClosed) as exc:
            raise self._errors.unreachable(exc) from None

    async def close(self) -> None:
        await self._pool.close()
