"""A small pool of connections to one PostgreSQL database for one store, its tables
migrated when it opens.

A store that keeps its state in PostgreSQL opens one (or `AsyncPostgresPool`, its
asyncio twin, when called on the event loop). Its errors, so that callers can tell which
store it was and whether to try again:

- no connection to be had or the one in use lost (the pool times out or is closed, the
  connection broke, SQLSTATE class 08, the server shutting down or starting up: 57P01-03)
  is UnavailableError "... cannot be reached", with the store's own reason;
- a statement the server could not carry out for now (class 40 serialization failure or
  deadlock, class 53 insufficient resources such as a full disk or too many connections,
  55P03 lock timeout, 57014 statement timeout or cancel) is UnavailableError "... is busy
  or short of resources", with the same reason and PostgreSQL's own words;
- any other error (a failed check, a broken query, an I/O error on the server) is left as
  psycopg raised it: the caller or the servicer reports it, PostgreSQL's words included.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import psycopg
from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout

from services.common.database_url import redact
from services.common.errors import UnavailableError
from services.common.migrations import Migration, migrate_postgres

SERVER_GONE = ("57P01", "57P02", "57P03")  # admin/crash shutdown, cannot connect now
TRY_AGAIN = ("55P03", "57014")  # lock timeout, statement timeout or cancel


def connection_lost(db: psycopg.BaseConnection, exc: psycopg.OperationalError) -> bool:
    """Whether `exc`, raised on `db`, means the connection itself is gone rather than
    that the server refused a statement on a working connection."""
    state = exc.sqlstate or ""
    return db.broken or db.closed or state.startswith("08") or state in SERVER_GONE


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
        self._errors = StoreErrors(what, self.location, unavailable_reason)
        self._pool = ConnectionPool(
            url, min_size=1, max_size=max_size, kwargs={"autocommit": True}, open=False
        )
        try:
            try:
                self._pool.open(wait=True, timeout=30)
            except PoolTimeout as exc:
                raise self._errors.unreachable(exc) from None
            with self.connection() as db:
                migrate_postgres(db, component, migrations)
        except BaseException:
            self._pool.close()
            raise

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        """A pooled autocommit connection; errors as the module says."""
        try:
            with self._pool.connection() as db:
                try:
                    yield db
                except psycopg.OperationalError as exc:
                    if (reported := self._errors.of(db, exc)) is not None:
                        raise reported from None
                    raise
        except (PoolTimeout, PoolClosed) as exc:
            raise self._errors.unreachable(exc) from None

    def close(self) -> None:
        self._pool.close()


class StoreErrors:
    """The errors of one store's database, as the module says."""

    def __init__(self, what: str, location: str, unavailable_reason: str) -> None:
        self._what = what
        self._location = location
        self._reason = unavailable_reason

    def of(
        self, db: psycopg.BaseConnection, exc: psycopg.OperationalError
    ) -> UnavailableError | None:
        """What `exc`, raised on `db`, is reported as; None: as psycopg raised it."""
        if connection_lost(db, exc):
            return self.unreachable(exc)
        if refused_for_now(exc):
            return self._unavailable(f"is busy or short of resources: {exc}", exc)
        return None

    def unreachable(self, exc: Exception) -> UnavailableError:
        return self._unavailable(f"cannot be reached: {exc}", exc)

    def _unavailable(self, what_happened: str, exc: Exception) -> UnavailableError:
        metadata = {"location": self._location}
        if isinstance(exc, psycopg.Error) and exc.sqlstate:
            metadata["sqlstate"] = exc.sqlstate
        return UnavailableError(
            f"{self._what} {self._location} {what_happened}",
            reason=self._reason,
            metadata=metadata,
        )


def refused_for_now(exc: psycopg.OperationalError) -> bool:
    """Whether the server refused a statement for a passing reason: class 40
    (serialization, deadlock), class 53 (a full disk, too many connections), or a lock or
    statement timeout."""
    state = exc.sqlstate or ""
    return state[:2] in ("40", "53") or state in TRY_AGAIN
