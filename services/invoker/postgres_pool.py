"""The invoker's stores in PostgreSQL: a small connection pool per store, its tables
migrated when it opens, and the channels replicas tell each other about changes on.

Invoker replicas share one database (unlike the downloader and the model manager, which
hold their tables alone): each store's writes are single statements or short
transactions, so any number of processes can use the tables at once. A change another
replica must hear of is announced with `pg_notify` in the transaction that makes it, so
the notice is delivered once the change is visible, never before.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import psycopg
from psycopg_pool import ConnectionPool

from services.common.database_url import redact
from services.common.errors import UnavailableError
from services.common.migrations import Migration, migrate_postgres

SESSIONS_CHANNEL = "invoker_sessions"
"""`<replica> <session id>`: the session's stored state changed (or it was deleted)."""
QUEUE_CHANNEL = "invoker_queue"
"""`<replica> added`, `<replica> resumed`: an item may be claimable now;
`<replica> cancel <id>`: the replica running item `id` must stop it."""
EVENTS_CHANNEL = "invoker_events"
"""`<replica> i <base64 SessionEvent>`, or `<replica> r <row id>` for one kept in
`invoker_session_events` because it is too big for a notice."""
DEFAULTS_CHANNEL = "invoker_default_models"
"""`<replica> changed`: the default models set through the API changed."""


class PostgresPool:
    """Connections to one database for one store, its schema brought up to date."""

    def __init__(
        self, url: str, component: str, migrations: Sequence[Migration], max_size: int = 4
    ) -> None:
        self.location = redact(url)
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
                f"the invoker database {self.location} cannot be reached: {exc}",
                reason="DATABASE_UNAVAILABLE",
                metadata={"location": self.location},
            ) from None

    def close(self) -> None:
        self._pool.close()


def notify(db: psycopg.Connection, channel: str, payload: str) -> None:
    """Announce `payload` on `channel`, delivered when `db`'s transaction commits."""
    db.execute("SELECT pg_notify(%s, %s)", (channel, payload))
