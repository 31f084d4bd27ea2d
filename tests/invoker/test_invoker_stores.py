"""The invoker's stores on both engines (`database_url` runs each test once on SQLite and
once on a real PostgreSQL): sessions, queue items, set default models; and, on
PostgreSQL, what several invoker processes on one database rely on: claims with SKIP
LOCKED never hand one item out twice, a lease that runs out fails the item once
(INVOKER_LOST) and the owner's own end of it then changes nothing, pausing is shared,
and a session's status never goes back."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
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
def sessions(database_url: str, tmp_path: Path) -> Iterator[SessionStore]:
    store = open_session_store(database_url, tmp_path / "sessions.db", "test")
    yield store
    store.close()


@pytest.fixture
def queue_store(database_url: str, tmp_path: Path) -> Iterator[QueueStore]:
    store = open_queue_store(database_url, tmp_path / "sessions.db", "first", lease_s=30)
    yield store
    store.close()


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


def test_a_session_is_read_back_as_written_piece_by_piece(sessions: SessionStore) -> None:
    sessions.create(record("s1"))
    sessions.create(record("s2"))
    sessions.update(
        SessionChange(
            "s1",
            "COMPLETED",
            3,
            now(),
            nodes=[{"id": "b", "type": "mul", "inputs": {"b": 2}}],
            edges=[["a", "value", "b", "a"]],
            results={"b": {"value": 2}},
            errors={"c": {"error_type": "DIVISION_BY_ZERO", "error": "x", "cause": ""}},
        )
    )
    # A run written again (a fan-out re-run) moves to the end of the history.
    sessions.update(SessionChange("s1", "COMPLETED", 3, now(), results={"a": {"value": 5}}))

    loaded = sessions.get("s1")
    assert loaded is not None
    assert [node["id"] for node in loaded.graph["nodes"]] == ["a", "b"]
    assert loaded.graph["edges"] == [["a", "value", "b", "a"]]
    assert loaded.state["executed"] == ["b", "a"]
    assert loaded.state["results"] == {"a": {"value": 5}, "b": {"value": 2}}
    assert loaded.state["errors"]["c"]["error_type"] == "DIVISION_BY_ZERO"
    assert (loaded.status, loaded.queue_item_id) == ("COMPLETED", 3)
    assert [found.id for found in sessions.all()] == ["s1", "s2"]

    sessions.delete("s1")
    assert sessions.get("s1") is None
    assert [found.id for found in sessions.all()] == ["s2"]


def test_items_are_claimed_by_priority_then_id_and_end_once(queue_store: QueueStore) -> None:
    low = queue_store.add("s1", RunMode.ALL, 0, now())
    high = queue_store.add("s2", RunMode.NEXT, 5, now())
    batch = queue_store.add_all(["s3", "s4"], RunMode.ALL, 0, now())
    assert [item.id for item in batch] == [high.id + 1, high.id + 2]
    assert (low.status, low.id + 1) == (PENDING, high.id)

    claimed = queue_store.claim_next(now())
    assert claimed is not None
    assert (claimed.id, claimed.status, claimed.run_mode) == (high.id, RUNNING, RunMode.NEXT)
    assert queue_store.running() == claimed
    assert queue_store.cancel_pending(high.id, now()) is None  # running: not a pending cancel
    assert queue_store.cancel_pending(batch[1].id, now()) is not None

    ended = queue_store.finish(high.id, COMPLETED, None, now())
    assert ended.status is COMPLETED
    assert ended.end_time is not None
    again = queue_store.finish(high.id, FAILED, LOST, now())
    assert again.status is COMPLETED, "an ended item changed"
    order = [queue_store.claim_next(now()) for _ in range(3)]
    assert [item.id if item else None for item in order] == [low.id, batch[0].id, None]

    queue_store.finish(low.id, FAILED, ItemError("BOOM", "broke", 13, "n1"), now())
    failed = queue_store.get(low.id)
    assert failed.error == ItemError("BOOM", "broke", 13, "n1")
    counts = queue_store.counts()
    assert (counts[COMPLETED], counts[FAILED], counts[CANCELLED], counts[RUNNING]) == (1, 1, 1, 1)
    listed = queue_store.list_after(ItemFilter([FAILED, CANCELLED]), 0, 10)
    assert [item.id for item in listed] == [low.id, batch[1].id]
    assert [i.id for i in queue_store.list_after(ItemFilter(session_id="s3"), 0, 10)] == [
        batch[0].id
    ]
    with pytest.raises(NotFoundError):
        queue_store.get(999)


def test_a_set_default_is_kept_and_cleared(database_url: str, tmp_path: Path) -> None:
    path = tmp_path / "sessions.db"
    first = DefaultModels(open_default_model_store(database_url, path, "a"), {})
    first.set(ModelType.MAIN, "key-1", ModelType.MAIN)
    first.set(ModelType.VAE, "key-2", ModelType.VAE)
    first.delete(ModelType.VAE)
    first.close()
    again = DefaultModels(open_default_model_store(database_url, path, "b"), {})
    assert again.keys() == {ModelType.MAIN: "key-1"}
    again.close()


# PostgreSQL: several invoker processes on one database.


@pytest.fixture
def shared(postgres_url: str, tmp_path: Path) -> Iterator[list[SharedQueueStore]]:
    """Two processes' queue stores on one database, leases of one second."""
    stores = [
        open_queue_store(postgres_url, tmp_path / "unused.db", owner, lease_s=1)
        for owner in ("first", "second")
    ]
    assert all(isinstance(store, SharedQueueStore) for store in stores)
    yield stores  # type: ignore[misc]
    for store in stores:
        store.close()


def test_claimers_at_once_never_get_the_same_item(shared: list[SharedQueueStore]) -> None:
    queued = shared[0].add_all([f"s{index}" for index in range(200)], RunMode.ALL, 0, now())
    claimed: list[tuple[str, int]] = []
    lock = threading.Lock()

    def claim_all(store: SharedQueueStore) -> None:
        while (item := store.claim_next(now())) is not None:
            with lock:
                claimed.append((item.owner, item.id))

    threads = [threading.Thread(target=claim_all, args=(store,)) for store in shared * 3]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ids = sorted(item_id for _, item_id in claimed)
    assert ids == [item.id for item in queued], "an item was claimed twice or never"
    assert {owner for owner, _ in claimed} == {"first", "second"}


def test_an_item_whose_lease_runs_out_fails_once_and_its_owner_cannot_end_it(
    shared: list[SharedQueueStore],
) -> None:
    first, second = shared
    kept = first.add("kept", RunMode.ALL, 0, now())
    lost = first.add("lost", RunMode.ALL, 0, now())
    assert first.claim_next(now()).id == kept.id  # type: ignore[union-attr]
    assert second.claim_next(now()).id == lost.id  # type: ignore[union-attr]
    assert first.fail_expired(LOST, now()) == []  # both leases are fresh

    deadline = time.monotonic() + 10
    failed = []
    while not failed:
        assert time.monotonic() < deadline, "the lease never ran out"
        assert first.renew_leases() == [kept.id]  # the first process is alive
        failed = first.fail_expired(LOST, now()) + second.fail_expired(LOST, now())
    assert [(item.id, item.status) for item in failed] == [(lost.id, FAILED)]
    assert failed[0].error == LOST
    assert second.renew_leases() == []
    ended = second.finish(lost.id, COMPLETED, None, now())
    assert (ended.status, ended.error) == (FAILED, LOST), "a lost item's owner ended it"
    assert first.finish(kept.id, COMPLETED, None, now()).status is COMPLETED
    assert second.claim_next(now()) is None, "a failed item was handed out again"


def test_pausing_is_shared(shared: list[SharedQueueStore]) -> None:
    first, second = shared
    first.add("s1", RunMode.ALL, 0, now())
    first.set_paused(True)
    assert second.paused()
    assert second.claim_next(now()) is None
    second.set_paused(False)
    assert first.claim_next(now()) is not None


def test_a_late_write_never_takes_a_session_back(postgres_url: str, tmp_path: Path) -> None:
    """The process that queued a run and the one that claimed it write close together."""
    store = open_session_store(postgres_url, tmp_path / "unused.db", "test")
    try:
        store.create(record("s1", "QUEUED", 4))
        store.update(SessionChange("s1", "COMPLETED", 4, now()))
        store.update(SessionChange("s1", "QUEUED", 4, now()))  # late
        store.update(SessionChange("s1", "RUNNING", 4, now()))  # late
        assert store.get("s1").status == "COMPLETED"  # type: ignore[union-attr]
        store.update(SessionChange("s1", "QUEUED", 5, now()))  # the next run
        assert store.get("s1").status == "QUEUED"  # type: ignore[union-attr]
        store.update(SessionChange("s1", "IDLE", 3, now()))  # an older item
        assert store.get("s1").status == "QUEUED"  # type: ignore[union-attr]
    finally:
        store.close()
