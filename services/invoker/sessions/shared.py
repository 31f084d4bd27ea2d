"""The session manager of invoker processes that share one PostgreSQL database.

Every process keeps every session in memory, as a single invoker does, and the database
is where they meet:
- a session is written before its queue item can be claimed, and the process that claims
  the item reads the session from the database before running it;
- every write is announced (SESSIONS_CHANNEL); the other processes read the session again
  (never one they are running themselves), so GetSession, ListSessions and WaitSession
  answer on every process, whichever one runs the session;
- a session a process has not heard of yet (just made elsewhere) is read from the
  database when it is watched or waited for;
- every event is passed on to the other processes (LISTEN/NOTIFY through `ReplicaLink`),
  so a watcher on any process sees every event of a run wherever it runs; preview images
  reach only watchers on the process that runs the session;
- an item whose process died (its lease ran out, see InvocationQueue) is FAILED with
  INVOKER_LOST by whichever process notices, and that process settles its session FAILED.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from typing import Any

import structlog

from services.common.event_bus import Delivery, EventBus
from services.invoker.queue.items import INVOKER_LOST, QueueItem
from services.invoker.replica_notices import QUEUE_CHANNEL, SESSIONS_CHANNEL
from services.invoker.replicas import ReplicaLink
from services.invoker.sessions.events import Stamped
from services.invoker.sessions.manager import Session, SessionManager, SessionStatus, _Unsaved

log = structlog.get_logger(__name__)


class RelayingBus(EventBus[Stamped]):
    """The session event bus whose events also go to the other processes."""

    def __init__(self, relay: Callable[[Stamped], None]) -> None:
        super().__init__()
        self._relay = relay

    def publish(self, event: Stamped) -> None:
        super().publish(event)
        self._relay(event)

    def publish_here(self, event: Stamped) -> None:
        """Deliver an event another process sent to this process's watchers only."""
        super().publish(event)


class SharedSessionManager(SessionManager):
    """A SessionManager among several invoker processes on one database (see the module)."""

    def __init__(
        self,
        *args: Any,
        link: ReplicaLink,
        encode_event: Callable[[Stamped], bytes],
        decode_event: Callable[[bytes], Stamped],
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._link = link
        self._encode_event = encode_event
        self._decode_event = decode_event
        self.events = self._bus = RelayingBus(self._relay)
        self._running_here: set[str] = set()
        self._edits: dict[str, int] = {}
        """Changes made here, by session: a read from the database older than one is stale."""
        self._stale: dict[str, None] = {}
        """Sessions changed elsewhere, to read again, in the order heard of."""
        self._stale_signal = asyncio.Event()
        self._background: set[asyncio.Task[Any]] = set()
        link.on(SESSIONS_CHANNEL, self._session_notice)
        link.on(QUEUE_CHANNEL, self._queue_notice)
        link.on_event(self._event_notice)
        link.on_reconnect(self._reread_all)

    async def start(self) -> None:
        """Listens first, then loads: a change made while loading is read again after."""
        await self._link.start()
        await super().start()
        self._spawn(self._refresh_stale())

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await super().close()
        await self._link.close()

    def keep(self, session: Session) -> None:
        """Writes the new session at once: before an item of it can be claimed elsewhere."""
        super().keep(session)
        self._flush()

    async def invoke(self, session_id: str, run_all: bool, priority: int) -> QueueItem:
        self._flush()  # the session as it is now, written before its item can be claimed
        return await super().invoke(session_id, run_all, priority)

    async def wait(self, session_id: str) -> Session:
        await self._known(session_id)
        return await super().wait(session_id)

    async def watch(
        self, session_ids: Sequence[str], previews: bool = False
    ) -> AsyncIterator[Delivery[Stamped]]:
        for session_id in session_ids:
            await self._known(session_id)
        async for delivery in super().watch(session_ids, previews):
            yield delivery

    async def _run_item(self, item: QueueItem) -> None:
        """Reads the session as stored (it may have been made or changed elsewhere), then
        runs it; while it runs here, changes heard of from elsewhere leave it alone."""
        try:
            session = await self._reread(item.session_id)
        except Exception:
            log.exception("reading a claimed item's session failed", queue_item_id=item.id)
            session = self._sessions.get(item.session_id)
        if session is not None:
            session.queue_item_id = item.id
            session.status = SessionStatus.RUNNING
            self._touch(session)
        self._running_here.add(item.session_id)
        try:
            await super()._run_item(item)
        finally:
            self._running_here.discard(item.session_id)

    def _item_changed(self, item: QueueItem) -> None:
        if item.error is not None and item.error.error_type == INVOKER_LOST:
            self._spawn(self._settle_lost(item))
            return
        super()._item_changed(item)

    async def _settle_lost(self, item: QueueItem) -> None:
        """The item's process died: its session, as stored, becomes FAILED."""
        session = await self._reread(item.session_id)
        if session is None or session.queue_item_id > item.id:
            return
        session.queue_item_id = item.id
        session.status = SessionStatus.FAILED
        self._touch(session)

    def _save(self, session: Session) -> _Unsaved:
        self._edits[session.id] = self._edits.get(session.id, 0) + 1
        return super()._save(session)

    async def _known(self, session_id: str) -> None:
        if session_id not in self._sessions:
            await self._reread(session_id)

    async def _reread(self, session_id: str) -> Session | None:
        """Reads the session from the database (after this process's own writes) and takes
        it in, unless it runs here; None when it is not there. A read that a change made
        here meanwhile outdates is made again, after that change's write."""
        while True:
            seen = self._edits.get(session_id, 0)
            self._flush()
            record = await self._calls.run(lambda: self._store.get(session_id))
            if self._edits.get(session_id, 0) == seen:
                break
        if session_id in self._running_here:
            return self._sessions.get(session_id)
        if record is None:
            if self._sessions.pop(session_id, None) is not None:
                self._changed.notify()
            return None
        fresh = self._load(record)
        session = self._sessions.setdefault(session_id, fresh)
        if session is not fresh:
            # In place: waiters and watchers hold the object.
            session.execution = fresh.execution
            session.status = fresh.status
            session.queue_item_id = fresh.queue_item_id
            session.update_time = fresh.update_time
        self._changed.notify()
        return session

    async def _refresh_stale(self) -> None:
        while True:
            await self._stale_signal.wait()
            self._stale_signal.clear()
            while self._stale:
                session_id = next(iter(self._stale))
                del self._stale[session_id]
                try:
                    await self._reread(session_id)
                except Exception:
                    log.exception(
                        "reading a session changed elsewhere failed", session_id=session_id
                    )

    async def _reread_all(self) -> None:
        """Notices were lost: read every session again (those made meanwhile included),
        and look for claimable items."""
        records = await self._calls.run(self._store.all)
        for session_id in [*self._sessions, *(record.id for record in records)]:
            self._stale[session_id] = None
        self._stale_signal.set()
        await self.queue.wake()

    async def _session_notice(self, session_id: str) -> None:
        self._stale[session_id] = None
        self._stale_signal.set()

    async def _queue_notice(self, message: str) -> None:
        kind, _, value = message.partition(" ")
        if kind == "cancel":
            self._spawn(self.queue.cancel_here(int(value)))
        else:
            await self.queue.wake()

    def _event_notice(self, body: bytes) -> None:
        self._bus.publish_here(self._decode_event(body))

    def _relay(self, stamped: Stamped) -> None:
        try:
            self._link.publish_event(self._encode_event(stamped))
        except Exception:
            log.exception("an event could not be passed on to the other invokers")

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        async def logged() -> None:
            try:
                await work
            except Exception:
                log.exception("handling a change made by another invoker failed")

        task = asyncio.ensure_future(logged())
        self._background.add(task)
        task.add_done_callback(self._background.discard)
