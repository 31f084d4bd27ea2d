"""The execution queue: one item RUNNING at a time per invoker process, the next claimed
by priority then id.

Driven by events, never polled: a claimer waits on a condition that an enqueue, a finish
and a resume notify, so the next item is claimed the moment the previous one finishes.
Store calls run one after another, in the order they were asked for, through one
`OrderedCalls` (shared with the session manager, so a session written before its item is
queued is stored first); every state change is one store operation, so a cancel and a
claim of the same item never both win. A cancel that lands after the claim's store
operation but before the claim returns is still honoured: the item is finished CANCELLED
and never handed out. Neither engine blocks the event loop: a SQLite store runs each call
on its file's writer thread (see `sessions.writer`), a PostgreSQL one awaits the database.

On a `SharedQueueStore` (PostgreSQL) several invoker processes claim from one queue, each
running one item at a time. A process learns of items queued elsewhere through `wake`
(called on the database's notices) and, as a safety net, re-tries its claim on every
lease tick. The tick (a third of the lease) also renews the leases of the item this
process runs and fails, as INVOKER_LOST, every item whose lease ran out, its process
gone. Pausing is shared by every process; a cancel of an item another process runs is
passed on to it (`cancel_here` there).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

import structlog

from services.common import paging
from services.common.errors import FailedPreconditionError
from services.invoker.queue.items import (
    INVOKER_LOST,
    INVOKER_RESTARTED,
    ItemError,
    ItemFilter,
    QueueItem,
    QueueItemStatus,
    QueueStore,
    RunMode,
    SharedQueueStore,
)
from services.invoker.sessions.writer import OrderedCalls

log = structlog.get_logger(__name__)

T = TypeVar("T")
ABORTED = 10  # google.rpc.Code.ABORTED: the run was cut short by the invoker stopping.


@dataclass(frozen=True)
class QueueStatus:
    """Counts, paused flag and the RUNNING item, as QueueStatus says."""

    counts: dict[QueueItemStatus, int]
    paused: bool
    current_item: QueueItem | None


class InvocationQueue:
    """Queue items of sessions, claimed one at a time.

    `on_cancel` is called with a RUNNING item that was handed out by `claim` and then
    cancelled, so that its runner stops it (at its next step); `on_change` with every item
    whose status changed, for session states and events. `calls` orders the store
    calls; by default the queue has its own.
    """

    def __init__(
        self,
        store: QueueStore,
        *,
        on_cancel: Callable[[QueueItem], None],
        on_change: Callable[[QueueItem], None] = lambda item: None,
        calls: OrderedCalls | None = None,
    ) -> None:
        self._store = store
        self._shared = store if isinstance(store, SharedQueueStore) else None
        self._lease_keeper: asyncio.Task[None] | None = None
        self._on_cancel = on_cancel
        self._on_change = on_change
        self._owns_calls = calls is None
        self._calls = calls or OrderedCalls()
        self._changed = asyncio.Condition()
        self._version = 0
        self._paused = False
        self._claim_lock = asyncio.Lock()
        # Held across a state change and the decision that follows it (claim, finish,
        # cancel), so a cancel sees the claim or finish of its item whole.
        self._state = asyncio.Lock()
        self._current: int | None = None
        self._cancelling: set[int] = set()
        # Items a claim finished CANCELLED for a cancel request still waiting on `_state`.
        self._dropped: set[int] = set()

    async def start(self) -> list[QueueItem]:
        """Recover after a crash: every item RUNNING when the invoker died becomes FAILED
        (INVOKER_RESTARTED) and is never run again; PENDING items stay queued. Returns the
        items it failed. On a shared store other processes may be running items, so none
        is failed now: the lease ticks start instead, and fail those whose lease ran out."""
        if self._shared is not None:
            self._lease_keeper = asyncio.create_task(self._keep_leases(self._shared))
            return []
        error = ItemError(
            INVOKER_RESTARTED,
            "the invoker stopped while this item was running; it is not run again",
            ABORTED,
        )
        failed = await self._call(lambda: self._store.fail_running(error, _now()))
        for item in failed:
            self._on_change(item)
        await self._notify()
        return failed

    async def enqueue(
        self, session_id: str, run_mode: RunMode = RunMode.ALL, priority: int = 0
    ) -> QueueItem:
        """Queue a run of the session, PENDING, and wake a waiting claimer."""
        item = await self._call(lambda: self._store.add(session_id, run_mode, priority, _now()))
        self._on_change(item)
        await self._notify()
        return item

    async def enqueue_all(
        self, session_ids: Sequence[str], run_mode: RunMode = RunMode.ALL, priority: int = 0
    ) -> list[QueueItem]:
        """Queue a run of each session in one store operation: all of them or none."""
        items = await self._call(
            lambda: self._store.add_all(session_ids, run_mode, priority, _now())
        )
        for item in items:
            self._on_change(item)
        await self._notify()
        return items

    async def claim(self) -> QueueItem:
        """Wait until the queue is not paused, no item is RUNNING and an item is PENDING,
        then return that item, RUNNING. Its runner stops when `on_cancel` is called for it
        and checks `cancel_requested` between nodes; it `finish`es the item."""
        async with self._claim_lock:
            while True:
                async with self._changed:
                    await self._changed.wait_for(lambda: not self._paused and self._current is None)
                    seen = self._version
                async with self._state:
                    item = await self._call(lambda: self._store.claim_next(_now()))
                    if item is not None and item.id in self._cancelling:
                        self._dropped.add(item.id)
                        await self._end(item.id, QueueItemStatus.CANCELLED, None)
                        continue
                    if item is not None:
                        self._current = item.id
                        self._on_change(item)
                        return item
                await self._changed_since(seen)

    def cancel_requested(self, item_id: int) -> bool:
        """Whether the RUNNING item `item_id` was cancelled and must stop."""
        return item_id in self._cancelling

    async def finish(
        self, item_id: int, status: QueueItemStatus, error: ItemError | None = None
    ) -> QueueItem:
        """End the RUNNING item with a terminal `status` (`error` when FAILED) and let the
        next item start at once."""
        if not status.terminal:
            raise ValueError(f"not a terminal status: {status}")
        async with self._state:
            return await self._end(item_id, status, error)

    async def cancel(self, item_id: int) -> QueueItem:
        """Cancel a PENDING item at once (the RUNNING one is never touched), or ask the
        RUNNING item to stop: it is returned RUNNING until its runner finishes it.

        The request is noted before anything else, so a claim of this item that is already
        under way sees it and finishes the item CANCELLED instead of handing it out.
        """
        repeated = item_id in self._cancelling
        self._cancelling.add(item_id)
        async with self._state:
            try:
                item = await self._cancel(item_id, repeated)
            except Exception:
                if not repeated:
                    self._cancelling.discard(item_id)
                raise
        if item.status is not QueueItemStatus.RUNNING:
            self._cancelling.discard(item_id)
        return item

    async def _cancel(self, item_id: int, repeated: bool) -> QueueItem:
        cancelled = await self._call(lambda: self._store.cancel_pending(item_id, _now()))
        if cancelled is not None:
            self._on_change(cancelled)
            return cancelled
        item = await self.get(item_id)
        if item_id in self._dropped:
            self._dropped.discard(item_id)
            return item
        if item.status is not QueueItemStatus.RUNNING:
            raise FailedPreconditionError(
                f"queue item {item_id} is already {item.status}",
                reason="QUEUE_ITEM_FINISHED",
                metadata={"id": str(item_id), "status": item.status.value},
            )
        if not repeated and self._current == item_id:
            self._on_cancel(item)
        elif self._shared is not None and self._current != item_id:
            shared = self._shared
            await self._call(lambda: shared.request_cancel(item_id))
            self._cancelling.discard(item_id)
        return item

    async def cancel_here(self, item_id: int) -> None:
        """Stop the item if this process runs it: another process was asked to cancel it."""
        async with self._state:
            if self._current != item_id or item_id in self._cancelling:
                return
            self._cancelling.add(item_id)
            self._on_cancel(await self.get(item_id))

    async def wake(self) -> None:
        """Re-try a waiting claim: an item may have been queued by another process."""
        await self._notify()

    async def clear(self) -> list[QueueItem]:
        """Cancel every PENDING item; the RUNNING item, if any, goes on. Returns the
        cancelled items."""
        cancelled = await self._call(lambda: self._store.cancel_all_pending(_now()))
        for item in cancelled:
            self._on_change(item)
        return cancelled

    async def pause(self) -> QueueStatus:
        """No PENDING item starts until `resume`; the RUNNING one finishes. Idempotent.
        On a shared store every process pauses."""
        if (shared := self._shared) is not None:
            await self._call(lambda: shared.set_paused(True))
        else:
            self._paused = True
        return await self.status()

    async def resume(self) -> QueueStatus:
        """The first PENDING item by priority, then id, starts at once. Idempotent."""
        if (shared := self._shared) is not None:
            await self._call(lambda: shared.set_paused(False))
        self._paused = False
        await self._notify()
        return await self.status()

    async def status(self) -> QueueStatus:
        shared = self._shared

        async def read() -> QueueStatus:
            paused = self._paused if shared is None else await shared.paused()
            counts = await self._store.counts()
            return QueueStatus(dict(counts), paused, await self._store.running())

        return await self._call(read)

    async def get(self, item_id: int) -> QueueItem:
        return await self._call(lambda: self._store.get(item_id))

    async def list_items(
        self,
        *,
        statuses: Collection[QueueItemStatus] = (),
        session_id: str = "",
        page_size: int = 0,
        page_token: str = "",
    ) -> tuple[list[QueueItem], str]:
        """A page of items by ascending id and the next page's token ("" on the last).
        Pages continue after the last id seen, so items changing status between pages
        are neither skipped nor repeated."""
        query = ItemFilter(frozenset(statuses), session_id)
        fingerprint = {"statuses": sorted(query.statuses), "session_id": session_id}
        requested = paging.page(page_size, page_token, fingerprint)
        found = await self._call(
            lambda: self._store.list_after(query, requested.offset, requested.size + 1)
        )
        items = found[: requested.size]
        more = len(found) > requested.size
        return items, paging.position_token(items[-1].id, fingerprint) if more else ""

    async def close(self) -> None:
        """Finish the store calls asked for, then close the store (shared `calls` go on)."""
        if self._lease_keeper is not None:
            self._lease_keeper.cancel()
            await asyncio.gather(self._lease_keeper, return_exceptions=True)
        await self._call(self._store.close)
        if self._owns_calls:
            await self._calls.close()

    async def _end(
        self, item_id: int, status: QueueItemStatus, error: ItemError | None
    ) -> QueueItem:
        item = await self._call(lambda: self._store.finish(item_id, status, error, _now()))
        self._cancelling.discard(item_id)
        if self._current == item_id:
            self._current = None
        self._on_change(item)
        await self._notify()
        return item

    async def _keep_leases(self, store: SharedQueueStore) -> None:
        """Every third of a lease: renew this process's lease, fail the items whose lease
        ran out (their process is gone) and re-try a waiting claim. An item of this
        process failed by another (this one could not renew in time) is stopped: its
        end is refused anyway."""
        error = ItemError(
            INVOKER_LOST,
            "the invoker running this item stopped renewing its lease; it is not run again",
            ABORTED,
        )
        while True:
            await asyncio.sleep(store.lease_s / 3)
            try:
                async with self._state:  # no claim or end of an item in between
                    current = self._current
                    held = await self._call(store.renew_leases)
                    if current is not None and current not in held:
                        await self._lost_here(current)
                lost = await self._call(lambda: store.fail_expired(error, _now()))
            except Exception as exc:
                log.warning("the queue's leases could not be kept", error=str(exc))
                continue
            for item in lost:
                self._on_change(item)
            await self._notify()

    async def _lost_here(self, item_id: int) -> None:
        log.warning("this invoker lost its item's lease; stopping it", queue_item_id=item_id)
        if item_id not in self._cancelling:
            self._cancelling.add(item_id)
            self._on_cancel(await self._call(lambda: self._store.get(item_id)))

    async def _changed_since(self, version: int) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self._version != version)

    async def _notify(self) -> None:
        async with self._changed:
            self._version += 1
            self._changed.notify_all()

    async def _call(self, work: Callable[[], Awaitable[T]]) -> T:
        return await self._calls.run(work)


def _now() -> datetime:
    return datetime.now(UTC)
