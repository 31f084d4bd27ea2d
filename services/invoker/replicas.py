"""How invoker processes sharing one PostgreSQL database hear of each other: LISTEN/NOTIFY,
no broker of its own.

Each process has an id (`replica_id`) and connections of its own: one LISTENs on the
invoker's channels and hands each notice from another process to the handler of its
channel, in the order they were sent; the other sends this process's notices, in the
order they were asked for, without the caller waiting. A notice's payload is
`<replica id> <message>`; a process ignores its own.

Session events travel as serialized SessionEvent messages: inline (base64, several to a
notice, as many as fit: PostgreSQL allows under 8000 bytes) when they fit, otherwise in a
row of `invoker_session_events` whose id the notice names. Rows are removed after
EVENT_ROW_TTL_S: a process that reads a notice that late has lost the event anyway.

Per-notice costs (a statement, a delivery to every listener, a wake-up) would otherwise
dominate a run's bookkeeping, since a generation sends an event per step: the sender
gathers what was asked for within BATCH_WINDOW_S of the first notice, packs consecutive
inline events together and sends the whole batch in one statement. Events reach the other
processes that much later; their order is kept.

When the listening connection breaks, the link reconnects (backing off up to
MAX_RETRY_S) and calls `on_reconnect`, since notices sent meanwhile are lost.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import uuid
from collections.abc import Awaitable, Callable

import psycopg
import structlog

from services.common.migrations import Migration, migrate_postgres_at
from services.invoker.replica_notices import EVENTS_CHANNEL

log = structlog.get_logger(__name__)

INLINE_LIMIT = 7000
"""Longest payload of inline events in one notice."""
BATCH_WINDOW_S = 0.03
EVENT_ROW_TTL_S = 600
MAX_RETRY_S = 10.0
EVENT_MIGRATIONS = [
    Migration(
        1,
        (
            "CREATE TABLE invoker_session_events (id BIGINT GENERATED ALWAYS AS IDENTITY "
            "PRIMARY KEY, body BYTEA NOT NULL, create_time TIMESTAMPTZ NOT NULL DEFAULT now())",
        ),
    )
]

Handler = Callable[[str], Awaitable[None]]


class _Inline(str):
    """A base64 session event small enough to travel in a notice."""


EventHandler = Callable[[bytes], None]


def new_replica_id() -> str:
    """This process's id: host name and pid for people, a random part so that a restarted
    container (same host name, pid 1) never takes over the leases of the one before."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class ReplicaLink:
    """The notices between the invoker processes of one database."""

    def __init__(self, url: str, replica_id: str) -> None:
        self.replica_id = replica_id
        self._url = url
        self._handlers: dict[str, Handler] = {}
        self._on_event: EventHandler = lambda body: None
        self._on_reconnect: Callable[[], Awaitable[None]] | None = None
        self._outbox: asyncio.Queue[tuple[str, str | bytes | _Inline] | None] = asyncio.Queue()
        self._loop = asyncio.get_running_loop()
        self._sender: psycopg.AsyncConnection | None = None
        self._reader: psycopg.AsyncConnection | None = None
        """Reads the events sent as rows; opened on the first."""
        self._tasks: list[asyncio.Task[None]] = []
        self._event_rows = 0

    def on(self, channel: str, handler: Handler) -> None:
        """Call `handler` with the message of each notice on `channel` from another
        process. Register before `start`."""
        self._handlers[channel] = handler

    def on_event(self, handler: EventHandler) -> None:
        """Call `handler` with each session event (serialized) another process sent."""
        self._on_event = handler
        self._handlers[EVENTS_CHANNEL] = self._event_notice

    def on_reconnect(self, handler: Callable[[], Awaitable[None]]) -> None:
        """Call `handler` after the notices were lost for a while and flow again."""
        self._on_reconnect = handler

    async def start(self) -> None:
        """Listen from now on; returns once listening, so no later change is missed."""
        await asyncio.to_thread(
            migrate_postgres_at, self._url, "invoker_session_events", EVENT_MIGRATIONS
        )
        self._sender = await psycopg.AsyncConnection.connect(self._url, autocommit=True)
        listener = await self._listening_connection()
        self._tasks = [
            asyncio.create_task(self._listen(listener), name="replica-listen"),
            asyncio.create_task(self._send(), name="replica-send"),
        ]

    def send_soon(self, channel: str, message: str) -> None:
        """Send `message` on `channel` to the other processes; callable from any thread."""
        self._loop.call_soon_threadsafe(
            self._outbox.put_nowait, (channel, f"{self.replica_id} {message}")
        )

    def publish_event(self, body: bytes) -> None:
        """Send a serialized session event to the other processes; from any thread."""
        text = base64.b64encode(body).decode()
        notice = (EVENTS_CHANNEL, _Inline(text) if len(text) <= INLINE_LIMIT else body)
        self._loop.call_soon_threadsafe(self._outbox.put_nowait, notice)

    async def close(self) -> None:
        """Send what was asked for, then stop listening and close the connections."""
        self._outbox.put_nowait(None)
        if self._tasks:
            await asyncio.gather(self._tasks[1], return_exceptions=True)
            self._tasks[0].cancel()
            await asyncio.gather(self._tasks[0], return_exceptions=True)
        for db in (self._sender, self._reader):
            if db is not None:
                await db.close()

    async def _listening_connection(self) -> psycopg.AsyncConnection:
        db = await psycopg.AsyncConnection.connect(self._url, autocommit=True)
        for channel in self._handlers:
            await db.execute(f"LISTEN {channel}")
        return db

    async def _listen(self, db: psycopg.AsyncConnection) -> None:
        delay = 0.25
        while True:
            try:
                async with db:
                    async for notice in db.notifies():
                        delay = 0.25
                        await self._dispatch(notice.channel, notice.payload)
            except psycopg.Error as exc:
                log.warning("lost the other invokers' notices; reconnecting", error=str(exc))
            while True:
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_RETRY_S)
                try:
                    db = await self._listening_connection()
                    break
                except psycopg.Error as exc:
                    log.warning("cannot listen to the other invokers yet", error=str(exc))
            if self._on_reconnect is not None:
                await self._guarded(self._on_reconnect())

    async def _dispatch(self, channel: str, payload: str) -> None:
        sender, _, message = payload.partition(" ")
        handler = self._handlers.get(channel)
        if sender != self.replica_id and handler is not None:
            await self._guarded(handler(message))

    async def _event_notice(self, message: str) -> None:
        kind, _, value = message.partition(" ")
        if kind == "i":
            for text in value.split(" "):
                self._on_event(base64.b64decode(text))
            return
        if self._reader is None or self._reader.closed:
            self._reader = await psycopg.AsyncConnection.connect(self._url, autocommit=True)
        cursor = await self._reader.execute(
            "SELECT body FROM invoker_session_events WHERE id = %s", (int(value),)
        )
        row = await cursor.fetchone()
        if row is not None:
            self._on_event(bytes(row[0]))

    async def _guarded(self, work: Awaitable[None]) -> None:
        try:
            await work
        except Exception:
            log.exception("a notice from another invoker could not be handled")

    async def _send(self) -> None:
        assert self._sender is not None
        db = self._sender
        stopping = False
        while not stopping:
            waiting = [await self._outbox.get()]
            if waiting[0] is not None:
                await asyncio.sleep(BATCH_WINDOW_S)
            while not self._outbox.empty():
                waiting.append(self._outbox.get_nowait())
            stopping = None in waiting
            try:
                notices = await self._notices([n for n in waiting if n is not None])
                if notices:
                    await db.execute(
                        "SELECT pg_notify(channel, payload) FROM unnest(%s::text[], %s::text[]) "
                        "WITH ORDINALITY AS notice (channel, payload, place) ORDER BY place",
                        ([channel for channel, _ in notices], [text for _, text in notices]),
                    )
            except psycopg.Error as exc:
                log.warning("notices to the other invokers were lost", error=str(exc))
                db = self._sender = await self._reconnected_sender()

    async def _notices(
        self, batch: list[tuple[str, str | bytes | _Inline]]
    ) -> list[tuple[str, str]]:
        """The batch as (channel, payload) notices, in order: consecutive inline events
        share a notice while they fit, bigger events become rows."""
        notices: list[tuple[str, str]] = []
        packed: list[str] = []

        def close_pack() -> None:
            if packed:
                notices.append((EVENTS_CHANNEL, f"{self.replica_id} i {' '.join(packed)}"))
                packed.clear()

        for channel, payload in batch:
            if isinstance(payload, _Inline):
                if sum(len(text) + 1 for text in packed) + len(payload) > INLINE_LIMIT:
                    close_pack()
                packed.append(payload)
                continue
            close_pack()
            text = payload if isinstance(payload, str) else await self._row(payload)
            notices.append((channel, text))
        close_pack()
        return notices

    async def _row(self, body: bytes) -> str:
        assert self._sender is not None
        self._event_rows += 1
        if self._event_rows % 100 == 1:
            await self._sender.execute(
                "DELETE FROM invoker_session_events WHERE create_time < "
                f"now() - interval '{EVENT_ROW_TTL_S} seconds'"
            )
        cursor = await self._sender.execute(
            "INSERT INTO invoker_session_events (body) VALUES (%s) RETURNING id", (body,)
        )
        row = await cursor.fetchone()
        assert row is not None
        return f"{self.replica_id} r {row[0]}"

    async def _reconnected_sender(self) -> psycopg.AsyncConnection:
        delay = 0.25
        while True:
            try:
                return await psycopg.AsyncConnection.connect(self._url, autocommit=True)
            except psycopg.Error as exc:
                log.warning("cannot reach the other invokers yet", error=str(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_RETRY_S)
