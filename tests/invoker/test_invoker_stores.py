"""The invoker's stores on both engines (`database_url` runs each test once on SQLite and
once on a real PostgreSQL): sessions, queue items, set default models; and, on
PostgreSQL, what several invoker processes on one database rely on: claims with SKIP
LOCKED never hand one item out twice, a lease that runs out fails the item once
(INVOKER_LOST) and the owner's own end of it then changes nothing, pausing is shared,
and a session's status never goes back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest

from services.common.errors import NotFoundError
from services.common.model_taxonomy import ModelType
from services.invoker.invocations.model_defaults import DefaultModels, open_default_model_store
from services.invoker.queue.items import (
    INVOKER_LOST,
    ItemError,
    ItemFilter,
    QueueItemStatus,
    QueueStore,
    RunMode,
    SharedQueueStore,
)
from services.invoker.queue.stores import open_queue_store
from services.invoker.sessions.store import SessionChange, SessionRecord, SessionStore
from services.invoker.sessions.stores import open_session_store
from services.invoker.sessions.writer import database_writer

PENDING, RUNNING = QueueItemStatus.PENDING, QueueItemStatus.RUNNING
COMPLETED, FAILED, CANCELLED = (
    QueueItemStatus.COMPLETED,
    QueueItemStatus.FAILED,
    QueueItemStatus.CANCELLED,
)
LOST = ItemError(INVOKER_LOST, "its invoker stopped", 10)


def now() -> datetime:
    return datetime.now(UTC)


@pytest.fixture
def writer() -> Iterator[ThreadPoolExecutor]:
    """The writer thread of the SQLite file the stores share."""
    thread = database_writer()
    yield thread
    thread.shutdown()


@pytest.fixture
async def sessions(
    database_url: str, tmp_path: Path, writer: ThreadPoolExecutor
) -> AsyncIterator[SessionStore]:
    store = await open_session_store(database_url, tmp_path / "sessions.db", writer, "test")
    yield store
    await store.close()


@pytest.fixture
async def queue_store(
    database_url: str, tmp_path: Path, writer: ThreadPoolExecutor
) -> AsyncIterator[QueueStore]:
    store = await open_queue_store(
        database_url, tmp_path / "sessions.db", writer, "first", lease_s=30
    )
    yield store
    await store.close()


def record(session_id: str, status: str = "IDLE", item: int = 0) -> SessionRecord:
    created = now()
    return SessionRecord(
        session_id,
        {"nodes": [{"id": "a", "type": "add", "inputs": {"a": 1}}], "edges": []},
        {"executed": ["a"], "results": {"a": {"value": 1}}, "errors": {}},
        status,
        item,
        created,
        created,
    )


async def test_a_session_is_read_back_as_written_piece_by_piece(sessions: SessionStore) -> None:
    await sessions.create(record("s1"))
    await sessions.create(record("s2"))
    await sessions.update(
        SessionChange(
            "s1",
            "COMPLETED",
            3,
            now(),
            nodes=[{"id": "b", "type": "mul", "inputs": {"b": 2}}],
            edges=[["a", "value", "b", "a"]],
            results={"b": {"value": 2}, 'say "hi" \\ ü': {"text": '"quoted" \\ ü'}},
            errors={"c": {"error_type": "DIVISION_BY_ZERO", "error": "x", "cause": ""}},
        )
    )
    # A run written again (a fan-out re-run) moves to the end of the history.
    await sessions.update(SessionChange("s1", "COMPLETED", 3, now(), results={"a": {"value": 5}}))

    loaded = await sessions.get("s1")
    assert loaded is not None
    assert [node["id"] for node in loaded.graph["nodes"]] == ["a", "b"]
    assert loaded.graph["edges"] == [["a", "value", "b", "a"]]
    assert loaded.state["executed"] == ["b", 'say "hi" \\ ü', "a"]
    assert loaded.state["results"] == {
        "a": {"value": 5},
        "b": {"value": 2},
        'say "hi" \\ ü': {"text": '"quoted" \\ ü'},
    }
    assert loaded.state["errors"]["c"]["error_type"] == "DIVISION_BY_ZERO"
    assert (loaded.status, loaded.queue_item_id) == ("COMPLETED", 3)
    assert [found.id for found in await sessions.all()] == ["s1", "s2"]
    untouched = await sessions.get("s2")
    assert untouched is not None
    assert untouched.graph == record("s2").graph
    assert untouched.state["executed"] == ["a"]

    await sessions.delete("s1")
    assert await sessions.get("s1") is None
    assert [found.id for found in await sessions.all()] == ["s2"]


async def test_items_are_claimed_by_priority_then_id_and_end_once(queue_store: QueueStore) -> None:
    low = await queue_store.add("s1", RunMode.ALL, 0, now())
    high = await queue_store.add("s2", RunMode.NEXT, 5, now())
    batch = await queue_store.add_all(["s3", "s4"], RunMode.ALL, 0, now())
    assert [item.id for item in batch] == [high.id + 1, high.id + 2]
    assert (low.status, low.id + 1) == (PENDING, high.id)

    claimed = await queue_store.claim_next(now())
    assert claimed is not None
    assert (claimed.id, claimed.status, claimed.run_mode) == (high.id, RUNNING, RunMode.NEXT)
    assert await queue_store.running() == claimed
    assert await queue_store.cancel_pending(high.id, now()) is None  # running: not a pending cancel
    assert await queue_store.cancel_pending(batch[1].id, now()) is not None

    ended = await queue_store.finish(high.id, COMPLETED, None, now())
    assert ended.status is COMPLETED
    assert ended.end_time is not None
    again = await queue_store.finish(high.id, FAILED, LOST, now())
    assert again.status is COMPLETED, "an ended item changed"
    order = [await queue_store.claim_next(now()) for _ in range(3)]
    assert [item.id if item else None for item in order] == [low.id, batch[0].id, None]

    await queue_store.finish(low.id, FAILED, ItemError("BOOM", "broke", 13, "n1"), now())
    failed = await queue_store.get(low.id)
    assert failed.error == ItemError("BOOM", "broke", 13, "n1")
    counts = await queue_store.counts()
    assert (counts[COMPLETED], counts[FAILED], counts[CANCELLED], counts[RUNNING]) == (1, 1, 1, 1)
    listed = await queue_store.list_after(ItemFilter([FAILED, CANCELLED]), 0, 10)
    assert [item.id for item in listed] == [low.id, batch[1].id]
    assert [i.id for i in await queue_store.list_after(ItemFilter(session_id="s3"), 0, 10)] == [
        batch[0].id
    ]
    with pytest.raises(NotFoundError):
        await queue_store.get(999)


async def test_a_set_default_is_kept_and_cleared(
    database_url: str, tmp_path: Path, writer: ThreadPoolExecutor
) -> None:
    path = tmp_path / "sessions.db"
    first = await DefaultModels.open(
        await open_default_model_store(database_url, path, writer, "a"), {}
    )
    await first.set(ModelType.MAIN, "key-1", ModelType.MAIN)
    await first.set(ModelType.VAE, "key-2", ModelType.VAE)
    await first.delete(ModelType.VAE)
    await first.close()
    again = await DefaultModels.open(
        await open_default_model_store(database_url, path, writer, "b"), {}
    )
    assert again.keys() == {ModelType.MAIN: "key-1"}
    await again.close()


# PostgreSQL: several invoker processes on one database.


@pytest.fixture
async def shared(
    postgres_url: str, tmp_path: Path, writer: ThreadPoolExecutor
) -> AsyncIterator[list[SharedQueueStore]]:
    """Two processes' queue stores on one database, leases of one second."""
    stores = [
        await open_queue_store(postgres_url, tmp_path / "unused.db", writer, owner, lease_s=1)
        for owner in ("first", "second")
    ]
    assert all(isinstance(store, SharedQueueStore) for store in stores)
    yield stores  # type: ignore[misc]
    for store in stores:
        await store.close()


async def test_claimers_at_once_never_get_the_same_item(shared: list[SharedQueueStore]) -> None:
    queued = await shared[0].add_all([f"s{index}" for index in range(200)], RunMode.ALL, 0, now())
    claimed: list[tuple[str, int]] = []

    async def claim_all(store: SharedQueueStore) -> None:
        while (item := await store.claim_next(now())) is not None:
            claimed.append((item.owner, item.id))

    # Three claimers per process, each on a connection of its own, all at once.
    await asyncio.gather(*(claim_all(store) for store in shared * 3))
    ids = sorted(item_id for _, item_id in claimed)
    assert ids == [item.id for item in queued], "an item was claimed twice or never"
    assert {owner for owner, _ in claimed} == {"first", "second"}


async def test_an_item_whose_lease_runs_out_fails_once_and_its_owner_cannot_end_it(
    shared: list[SharedQueueStore],
) -> None:
    first, second = shared
    kept = await first.add("kept", RunMode.ALL, 0, now())
    lost = await first.add("lost", RunMode.ALL, 0, now())
    assert (await first.claim_next(now())).id == kept.id  # type: ignore[union-attr]
    assert (await second.claim_next(now())).id == lost.id  # type: ignore[union-attr]
    assert await first.fail_expired(LOST, now()) == []  # both leases are fresh

    deadline = time.monotonic() + 10
    failed = []
    while not failed:
        assert time.monotonic() < deadline, "the lease never ran out"
        assert await first.renew_leases() == [kept.id]  # the first process is alive
        failed = await first.fail_expired(LOST, now()) + await second.fail_expired(LOST, now())
    assert [(item.id, item.status) for item in failed] == [(lost.id, FAILED)]
    assert failed[0].error == LOST
    assert await second.renew_leases() == []
    ended = await second.finish(lost.id, COMPLETED, None, now())
    assert (ended.status, ended.error) == (FAILED, LOST), "a lost item's owner ended it"
    assert (await first.finish(kept.id, COMPLETED, None, now())).status is COMPLETED
    assert await second.claim_next(now()) is None, "a failed item was handed out again"


async def test_pausing_is_shared(shared: list[SharedQueueStore]) -> None:
    first, second = shared
    await first.add("s1", RunMode.ALL, 0, now())
    await first.set_paused(True)
    assert await second.paused()
    assert await second.claim_next(now()) is None
    await second.set_paused(False)
    assert await first.claim_next(now()) is not None


async def test_a_late_write_never_takes_a_session_back(
    postgres_url: str, tmp_path: Path, writer: ThreadPoolExecutor
) -> None:
    """The process that queued a run and the one that claimed it write close together."""
    store = await open_session_store(postgres_url, tmp_path / "unused.db", writer, "test")
    try:
        await store.create(record("s1", "QUEUED", 4))
        await store.update(SessionChange("s1", "COMPLETED", 4, now()))
        await store.update(SessionChange("s1", "QUEUED", 4, now()))  # late
        await store.update(SessionChange("s1", "RUNNING", 4, now()))  # late
        assert (await store.get("s1")).status == "COMPLETED"  # type: ignore[union-attr]
        await store.update(SessionChange("s1", "QUEUED", 5, now()))  # the next run
        assert (await store.get("s1")).status == "QUEUED"  # type: ignore[union-attr]
        await store.update(SessionChange("s1", "IDLE", 3, now()))  # an older item
        assert (await store.get("s1")).status == "QUEUED"  # type: ignore[union-attr]
    finally:
        await store.close()
