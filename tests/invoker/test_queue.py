"""The execution queue on its own: order by priority then id, the next item claimed the
moment the previous one finishes, the cancel and clear races, pause and resume, paging,
restart after a crash, and the expansion of a batch."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from services.common.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
)
from services.invoker.queue.batch import (
    MAX_BATCH_SESSIONS,
    BatchField,
    BatchMode,
    expand_batch,
)
from services.invoker.queue.items import (
    INVOKER_RESTARTED,
    QueueItem,
    QueueItemStatus,
    QueueStore,
)
from services.invoker.queue.queue import InvocationQueue
from services.invoker.queue.sqlite_store import SqliteQueueStore, WriterQueueStore
from services.invoker.queue.stores import open_queue_store
from services.invoker.sessions.writer import database_writer

PENDING, RUNNING = QueueItemStatus.PENDING, QueueItemStatus.RUNNING
COMPLETED, FAILED, CANCELLED = (
    QueueItemStatus.COMPLETED,
    QueueItemStatus.FAILED,
    QueueItemStatus.CANCELLED,
)


class Recorder:
    """What the queue told its runner (cancels) and its listeners (status changes)."""

    def __init__(self) -> None:
        self.cancelled: list[int] = []
        self.changes: list[tuple[int, QueueItemStatus]] = []

    def on_cancel(self, item: QueueItem) -> None:
        self.cancelled.append(item.id)

    def on_change(self, item: QueueItem) -> None:
        self.changes.append((item.id, item.status))


async def open_queue(store: QueueStore, recorder: Recorder) -> InvocationQueue:
    queue = InvocationQueue(store, on_cancel=recorder.on_cancel, on_change=recorder.on_change)
    await queue.start()
    return queue


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def writer() -> Iterator[ThreadPoolExecutor]:
    """The writer thread of the SQLite file."""
    thread = database_writer()
    yield thread
    thread.shutdown()


@pytest.fixture
async def queue(
    tmp_path: Path, recorder: Recorder, database_url: str, writer: ThreadPoolExecutor
) -> AsyncIterator[InvocationQueue]:
    """The queue on each engine (on PostgreSQL: one invoker process of a shared queue)."""
    path = tmp_path / "invoker.db"
    store = await open_queue_store(database_url, path, writer, "test")
    queue = await open_queue(store, recorder)
    yield queue
    await queue.close()


async def claim_soon(queue: InvocationQueue) -> QueueItem:
    """A claim that must succeed; the timeout only turns a hang into a failure."""
    return await asyncio.wait_for(queue.claim(), timeout=10)


async def settle(queue: InvocationQueue) -> None:
    """Returns once every task started so far has got as far as it can, so a claim that
    should not succeed has had every chance to. Each pass lets the ready tasks run up to
    their next store call, then makes a store call itself: the queue runs its store calls
    one at a time in order, so when ours is answered theirs are too, and their answers
    have reached them first. A second pass covers a task whose answer leads to another
    call."""
    for _ in range(2):
        await asyncio.sleep(0)
        await queue.status()


async def test_items_run_by_priority_then_in_queue_order(queue: InvocationQueue) -> None:
    await queue.pause()
    queued = [
        await queue.enqueue("s1", priority=0),
        await queue.enqueue("s2", priority=5),
        await queue.enqueue("s3", priority=0),
        await queue.enqueue("s4", priority=5),
        await queue.enqueue("s5", priority=-1),
    ]
    assert [item.id for item in queued] == [1, 2, 3, 4, 5]
    assert all(item.status is PENDING for item in queued)

    await queue.resume()
    order = []
    for _ in queued:
        item = await claim_soon(queue)
        order.append(item.session_id)
        await queue.finish(item.id, COMPLETED)
    assert order == ["s2", "s4", "s1", "s3", "s5"]


async def test_listing_is_by_id_with_filters_and_stable_pages(queue: InvocationQueue) -> None:
    await queue.pause()
    for index in range(5):
        await queue.enqueue(f"s{index % 2}", priority=index)
    first, token = await queue.list_items(statuses=[PENDING], page_size=2)
    assert [item.id for item in first] == [1, 2]
    await queue.cancel(3)  # leaves the filter between pages: nothing after it is skipped
    second, last = await queue.list_items(statuses=[PENDING], page_size=2, page_token=token)
    assert [item.id for item in second] == [4, 5]
    assert last == ""

    only_s1, _ = await queue.list_items(session_id="s1")
    assert [item.id for item in only_s1] == [2, 4]
    with pytest.raises(InvalidArgumentError) as refused:
        await queue.list_items(session_id="s0", page_size=2, page_token=token)
    assert refused.value.reason == "INVALID_PAGE_TOKEN"


async def test_the_next_item_is_claimed_the_moment_the_previous_finishes(
    queue: InvocationQueue, recorder: Recorder
) -> None:
    first = await queue.enqueue("s1")
    second = await queue.enqueue("s2")
    assert (await claim_soon(queue)).id == first.id

    waiting = asyncio.create_task(queue.claim())
    await settle(queue)
    assert not waiting.done(), "a second item started while one was RUNNING"

    await queue.finish(first.id, COMPLETED)
    claimed = await asyncio.wait_for(waiting, timeout=10)
    assert claimed.id == second.id
    assert claimed.status is RUNNING
    # The finish woke the claimer: the next change after the COMPLETED is the start.
    finished_at = recorder.changes.index((first.id, COMPLETED))
    assert recorder.changes[finished_at + 1] == (second.id, RUNNING)
    assert (await queue.status()).current_item == claimed


async def test_an_idle_claimer_wakes_on_enqueue_and_on_resume(queue: InvocationQueue) -> None:
    waiting = asyncio.create_task(queue.claim())
    await settle(queue)
    assert not waiting.done()
    item = await queue.enqueue("s1")
    assert (await asyncio.wait_for(waiting, timeout=10)).id == item.id
    await queue.finish(item.id, COMPLETED)

    await queue.pause()
    waiting = asyncio.create_task(queue.claim())
    later = await queue.enqueue("s2")
    await settle(queue)
    assert not waiting.done(), "an item started while the queue was paused"
    status = await queue.resume()
    assert not status.paused
    assert (await asyncio.wait_for(waiting, timeout=10)).id == later.id


async def test_cancelling_a_pending_item_never_touches_the_running_one(
    queue: InvocationQueue, recorder: Recorder
) -> None:
    running = await queue.enqueue("s1")
    pending = await queue.enqueue("s2")
    await claim_soon(queue)

    cancelled = await queue.cancel(pending.id)
    assert cancelled.status is CANCELLED
    assert cancelled.start_time is None
    assert recorder.cancelled == []
    assert not queue.cancel_requested(running.id)
    assert (await queue.get(running.id)).status is RUNNING

    done = await queue.finish(running.id, COMPLETED)
    assert done.status is COMPLETED
    after = await queue.enqueue("s3")
    assert (await claim_soon(queue)).id == after.id, "the cancelled item ran"


async def test_cancelling_the_running_item_calls_its_runner_once(
    queue: InvocationQueue, recorder: Recorder
) -> None:
    item = await queue.enqueue("s1")
    await claim_soon(queue)
    assert (await queue.cancel(item.id)).status is RUNNING
    assert (await queue.cancel(item.id)).status is RUNNING
    assert recorder.cancelled == [item.id]
    assert queue.cancel_requested(item.id)

    assert (await queue.finish(item.id, CANCELLED)).status is CANCELLED
    with pytest.raises(FailedPreconditionError) as refused:
        await queue.cancel(item.id)
    assert refused.value.reason == "QUEUE_ITEM_FINISHED"
    with pytest.raises(NotFoundError):
        await queue.cancel(99)


class GatedStore(SqliteQueueStore):
    """Holds the claim's store operation until the test lets it go, having moved the item
    to RUNNING: the window in which a cancel meets an item being claimed."""

    def __init__(self, path: Path, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(path)
        self.loop = loop
        self.claimed = asyncio.Event()
        self.release = asyncio.Event()

    def claim_next(self, now: datetime) -> QueueItem | None:
        item = super().claim_next(now)
        if item is not None:
            self.loop.call_soon_threadsafe(self.claimed.set)
            asyncio.run_coroutine_threadsafe(self.release.wait(), self.loop).result()
        return item


async def test_a_cancel_that_arrives_during_the_claim_is_honoured(
    tmp_path: Path, recorder: Recorder, writer: ThreadPoolExecutor
) -> None:
    store = GatedStore(tmp_path / "invoker.db", asyncio.get_running_loop())
    queue = await open_queue(WriterQueueStore(store, writer), recorder)
    try:
        doomed = await queue.enqueue("s1")
        claiming = asyncio.create_task(queue.claim())
        await store.claimed.wait()
        assert (await asyncio.to_thread(store.get, doomed.id)).status is RUNNING

        cancelling = asyncio.create_task(queue.cancel(doomed.id))
        await asyncio.sleep(0)  # the cancel starts and notes its request before any wait
        assert queue.cancel_requested(doomed.id), "the cancel arrives during the claim"
        store.release.set()

        assert (await asyncio.wait_for(cancelling, timeout=10)).status is CANCELLED
        assert not claiming.done(), "the cancelled item was handed out to run"
        assert recorder.cancelled == []
        assert (doomed.id, RUNNING) not in recorder.changes

        store.claimed.clear()
        following = await queue.enqueue("s2")
        assert (await asyncio.wait_for(claiming, timeout=10)).id == following.id
    finally:
        store.release.set()
        await queue.close()


async def test_clear_queue_during_a_run_cancels_the_pending_and_lets_the_run_finish(
    queue: InvocationQueue, recorder: Recorder
) -> None:
    running = await queue.enqueue("s1")
    pending = [await queue.enqueue(f"s{index}") for index in (2, 3, 4)]
    await claim_soon(queue)

    cleared = await queue.clear()
    assert [item.id for item in cleared] == [item.id for item in pending]
    assert all(item.status is CANCELLED for item in cleared)
    assert recorder.cancelled == []
    status = await queue.status()
    assert status.current_item is not None
    assert status.current_item.id == running.id
    assert status.counts[PENDING] == 0
    assert status.counts[CANCELLED] == 3

    waiting = asyncio.create_task(queue.claim())
    await queue.finish(running.id, COMPLETED)
    await settle(queue)
    assert not waiting.done(), "a cleared item ran"
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting


async def test_after_a_crash_the_running_item_fails_and_pending_items_run(
    tmp_path: Path, recorder: Recorder, writer: ThreadPoolExecutor
) -> None:
    path = tmp_path / "invoker.db"
    before = await open_queue(await open_queue_store("sqlite:", path, writer), recorder)
    done = await before.enqueue("s1")
    crashed = await before.enqueue("s2")
    kept = await before.enqueue("s3", priority=1)
    later = await before.enqueue("s4")
    assert (await claim_soon(before)).id == kept.id
    await before.finish(kept.id, COMPLETED)
    assert (await claim_soon(before)).id == done.id
    await before.finish(done.id, COMPLETED)
    assert (await claim_soon(before)).id == crashed.id
    await before.close()  # the process dies with s2 RUNNING

    store = await open_queue_store("sqlite:", path, writer)
    after = InvocationQueue(store, on_cancel=recorder.on_cancel)
    try:
        failed = await after.start()
        assert [item.id for item in failed] == [crashed.id]
        item = await after.get(crashed.id)
        assert item.status is FAILED
        assert item.end_time is not None
        assert item.error is not None
        assert item.error.error_type == INVOKER_RESTARTED
        assert (await after.get(later.id)).status is PENDING

        assert (await claim_soon(after)).id == later.id, "the pending item did not run"
        await after.finish(later.id, COMPLETED)
        assert (await after.enqueue("s5")).id == later.id + 1
        assert (await claim_soon(after)).session_id == "s5", "the failed item ran again"
    finally:
        await after.close()


def test_a_zipped_batch_pairs_the_values_in_order() -> None:
    fields = [
        BatchField("prompt", "value", ["a cat", "a dog", "a fox"]),
        BatchField("noise", "seed", [1, 2, 3]),
        BatchField("noise", "width", [64, 128, 256]),
    ]
    assert expand_batch(fields, BatchMode.ZIP) == [
        {"prompt": {"value": "a cat"}, "noise": {"seed": 1, "width": 64}},
        {"prompt": {"value": "a dog"}, "noise": {"seed": 2, "width": 128}},
        {"prompt": {"value": "a fox"}, "noise": {"seed": 3, "width": 256}},
    ]


def test_a_product_batch_makes_every_combination_first_field_slowest() -> None:
    fields = [BatchField("a", "x", [1, 2.5]), BatchField("b", "y", ["p", "q", "r"])]
    combos = [(o["a"]["x"], o["b"]["y"]) for o in expand_batch(fields, BatchMode.PRODUCT)]
    assert combos == [(1, "p"), (1, "q"), (1, "r"), (2.5, "p"), (2.5, "q"), (2.5, "r")]


@pytest.mark.parametrize(
    ("fields", "mode", "field", "reason"),
    [
        ([], BatchMode.ZIP, "fields", "INVALID_ARGUMENT"),
        (
            [BatchField("a", "x", [1, 2]), BatchField("b", "y", [1, 2, 3])],
            BatchMode.ZIP,
            "fields[1].values",
            "BATCH_LENGTH_MISMATCH",
        ),
        (
            [BatchField("a", "x", [1, 2]), BatchField("b", "y", [1, "two"])],
            BatchMode.PRODUCT,
            "fields[1].values[1]",
            "BATCH_VALUE_TYPE_MISMATCH",
        ),
        (
            [BatchField("a", "x", [True, 1])],
            BatchMode.ZIP,
            "fields[0].values[1]",
            "BATCH_VALUE_TYPE_MISMATCH",
        ),
        (
            [BatchField("a", "x", [1]), BatchField("a", "x", [2])],
            BatchMode.PRODUCT,
            "fields[1]",
            "DUPLICATE_BATCH_FIELD",
        ),
        ([BatchField("a", "x", [])], BatchMode.PRODUCT, "fields[0].values", "INVALID_ARGUMENT"),
        ([BatchField("", "x", [1])], BatchMode.ZIP, "fields[0].node_id", "INVALID_ARGUMENT"),
        (
            [BatchField("a", "x", list(range(101))), BatchField("b", "y", list(range(100)))],
            BatchMode.PRODUCT,
            "fields",
            "BATCH_TOO_LARGE",
        ),
    ],
)
def test_a_batch_that_cannot_be_expanded_is_refused_naming_the_field(
    fields: list[BatchField], mode: BatchMode, field: str, reason: str
) -> None:
    with pytest.raises(InvalidArgumentError) as refused:
        expand_batch(fields, mode)
    assert refused.value.reason == reason
    assert refused.value.violations[0].field == field


def test_the_batch_limit_admits_exactly_the_maximum() -> None:
    values: list[Any] = list(range(MAX_BATCH_SESSIONS))
    assert len(expand_batch([BatchField("a", "x", values)], BatchMode.ZIP)) == MAX_BATCH_SESSIONS
