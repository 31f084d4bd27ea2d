"""A small pool of connections to one PostgreSQL database for one store, its tables
migrated when it opens.

Every store that keeps its state in PostgreSQL (the model records, the invoker's
sessions, queue, image index and default models) opens one; a database that cannot be
reached is UnavailableError with the store's own reason, so callers can tell which store
it was.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import psycopg
from psycopg_pool import ConnectionPool

from services.common.database_url import redact
from services.common.errors import UnavailableError
from services.common.migrations import Migration, migrate_postgres


class PostgresPool:
    """Autocommit connections to one database for one store (`what`, e.g. "the model
    record database"), its schema brought up to date."""

    def __init__(
        self,
        url: str,
        component: str,
        migrations: Sequence[Migration],
        *,
        what: str,
        unavailable_reason: str,
        max_size: int = 4,
    ) -> None:
        self.location = redact(url)
        self._what = what
        self._unavailable_reason = unavailable_reason
        self._pool = ConnectionPool(
            url, min_size=1, max_size=max_size, kwargs={"autocommit": True}, open=False
        )
        try:
            self._pool.open(wait=True, timeout=30)
            with self.connection() as db:
                migrate_postgres(db, component, migrations)
        except BaseException:
            self._pool.close()
            raise

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        """A pooled autocommit connection; a database that cannot be reached is
        UnavailableError."""
        try:
            with self._pool.connection() as db:
                yield db
        except psycopg.OperationalError as exc:
            raise UnavailableError(
                f"{self._what} {self.location} cannot be reached: {exc}",
                reason=self._unavailable_reason,
                metadata={"location": self.location},
            ) from None

    def close(self) -> None:
        self._pool.close()
