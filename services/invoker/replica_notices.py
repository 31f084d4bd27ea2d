"""What invoker replicas sharing one PostgreSQL database tell each other, and how.

Invoker replicas share one database (unlike the downloader and the model manager, which
hold their tables alone): each store's writes are single statements or short
transactions, so any number of processes can use the tables at once. A change another
replica must hear of is announced with `pg_notify` in the transaction that makes it, so
the notice is delivered once the change is visible, never before.
"""

from __future__ import annotations

from collections.abc import Sequence

import psycopg

from services.common.migrations import Migration
from services.common.postgres_async_pool import AsyncPostgresPool

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


async def invoker_pool(
    url: str, component: str, migrations: Sequence[Migration], max_size: int = 4
) -> AsyncPostgresPool:
    """The pool of one of the invoker's stores, its tables migrated."""
    return await AsyncPostgresPool.open(
        url,
        component,
        migrations,
        what="the invoker database",
        unavailable_reason="DATABASE_UNAVAILABLE",
        max_size=max_size,
    )


async def notify(db: psycopg.AsyncConnection, channel: str, payload: str) -> None:
    """Announce `payload` on `channel`, delivered when `db`'s transaction commits."""
    await db.execute("SELECT pg_notify(%s, %s)", (channel, payload))
