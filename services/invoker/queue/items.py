"""Queue items and the interface of the store that keeps them.

The store is an asynchronous interface so that a shared database (PostgreSQL, claiming
with SELECT … FOR UPDATE SKIP LOCKED, called from the event loop) can replace the
embedded SQLite one (a blocking store run on its file's writer thread): each state change, the claim
included, is one store operation, so two claimers or a claim and a cancel never both win.
A `SharedQueueStore` serves several invoker processes: each claim carries a lease its
owner renews while the item runs, and an item whose lease ran out is FAILED
(INVOKER_LOST) by whichever process notices first, never run again.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from services.common.errors import NotFoundError

INVOKER_RESTARTED = "INVOKER_RESTARTED"
"""A RUNNING item failed at start-up: the one invoker stopped while it ran (SQLite)."""
INVOKER_LOST = "INVOKER_LOST"
"""A RUNNING item failed because its invoker stopped renewing its lease (shared queue)."""


class QueueItemStatus(StrEnum):
    """Where an item stands, as QueueItemStatus names it."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self not in (QueueItemStatus.PENDING, QueueItemStatus.RUNNING)


class RunMode(StrEnum):
    """How much of its session's graph a run executes."""

    ALL = "ALL"
    NEXT = "NEXT"


@dataclass(frozen=True)
class ItemError:
    """Why an item FAILED, as QueueItem's error fields say."""

    error_type: str
    error: str
    error_code: int = 0
    error_node_id: str = ""


@dataclass(frozen=True)
class QueueItem:
    """One run of a session. `error` is set only when FAILED; `owner` names the invoker
    process that claimed it ("" until claimed, and always on SQLite)."""

    id: int
    session_id: str
    status: QueueItemStatus
    run_mode: RunMode
    priority: int
    create_time: datetime
    start_time: datetime | None = None
    end_time: datetime | None = None
    error: ItemError | None = None
    owner: str = ""

    @classmethod
    def from_row(cls, row: Sequence[Any], owner: str | None = None) -> QueueItem:
        """An item from a store's row: id, session id, status, run mode, priority, the
        create, start and end times (datetimes), error type, error, error code and error
        node id, each error column NULL when the item did not fail."""
        item_id, session, status, mode, priority, created, started, ended = row[:8]
        error_type, error, error_code, error_node_id = row[8:12]
        return cls(
            id=item_id,
            session_id=session,
            status=QueueItemStatus(status),
            run_mode=RunMode(mode),
            priority=priority,
            create_time=created,
            start_time=started,
            end_time=ended,
            error=None
            if error_type is None
            else ItemError(error_type, error or "", error_code or 0, error_node_id or ""),
            owner=owner or "",
        )


@dataclass(frozen=True)
class ItemFilter:
    """Filters of a listing; empty matches every item."""

    statuses: Collection[QueueItemStatus] = ()
    session_id: str = ""


class QueueStore(ABC):
    """Queue items by id. Ids grow from 1 and are never handed out twice. The queue calls
    it one call at a time."""

    @abstractmethod
    async def add(
        self, session_id: str, run_mode: RunMode, priority: int, now: datetime
    ) -> QueueItem:
        """Store a new PENDING item with a fresh id."""

    @abstractmethod
    async def add_all(
        self, session_ids: Sequence[str], run_mode: RunMode, priority: int, now: datetime
    ) -> list[QueueItem]:
        """Store a PENDING item per session, ids ascending in that order, in one
        transaction: all or none."""

    @abstractmethod
    async def claim_next(self, now: datetime) -> QueueItem | None:
        """Move the first PENDING item (highest priority, then lowest id) to RUNNING and
        return it, in one operation; None when nothing is PENDING."""

    @abstractmethod
    async def cancel_pending(self, item_id: int, now: datetime) -> QueueItem | None:
        """Move the item to CANCELLED if it is PENDING, in one operation, and return it;
        None when it is not PENDING (or unknown)."""

    @abstractmethod
    async def cancel_all_pending(self, now: datetime) -> list[QueueItem]:
        """Move every PENDING item to CANCELLED and return them."""

    @abstractmethod
    async def finish(
        self, item_id: int, status: QueueItemStatus, error: ItemError | None, now: datetime
    ) -> QueueItem:
        """Move a RUNNING item to the terminal `status`; an item no longer RUNNING is
        returned unchanged."""

    @abstractmethod
    async def fail_running(self, error: ItemError, now: datetime) -> list[QueueItem]:
        """Move every RUNNING item to FAILED with `error` and return them."""

    @abstractmethod
    async def get(self, item_id: int) -> QueueItem:
        """The item; NotFoundError (QUEUE_ITEM_NOT_FOUND) when there is none."""

    @abstractmethod
    async def list_after(self, query: ItemFilter, after_id: int, limit: int) -> list[QueueItem]:
        """Up to `limit` matching items with an id above `after_id`, ascending id."""

    @abstractmethod
    async def counts(self) -> Mapping[QueueItemStatus, int]:
        """How many items are in each status."""

    @abstractmethod
    async def running(self) -> QueueItem | None:
        """The RUNNING item, if any."""

    @abstractmethod
    async def close(self) -> None: ...


class SharedQueueStore(QueueStore):
    """A queue several invoker processes claim from at once. `claim_next` records this
    process (`owner`) and a lease of `lease_s` seconds on the item; `finish` ends only an
    item this process still owns. The store announces new items to the other processes.
    Pausing is shared: a paused queue hands out nothing to any process."""

    owner: str
    lease_s: float

    @abstractmethod
    async def renew_leases(self) -> list[int]:
        """Extend the lease of every item this process runs; the ids still held."""

    @abstractmethod
    async def fail_expired(self, error: ItemError, now: datetime) -> list[QueueItem]:
        """Move every RUNNING item whose lease ran out to FAILED with `error`, each by
        exactly one caller across processes, and return those this call moved."""

    @abstractmethod
    async def request_cancel(self, item_id: int) -> None:
        """Ask the process running `item_id` to stop it."""

    @abstractmethod
    async def set_paused(self, paused: bool) -> None: ...

    @abstractmethod
    async def paused(self) -> bool: ...


def item_not_found(item_id: int) -> NotFoundError:
    return NotFoundError(
        f"no queue item has id {item_id}",
        reason="QUEUE_ITEM_NOT_FOUND",
        metadata={"id": str(item_id)},
    )
