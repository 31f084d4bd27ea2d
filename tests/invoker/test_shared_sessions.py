"""Two invoker processes' session managers on one PostgreSQL database, in one event loop:
each runs items the other queued, exactly once; a watcher on one sees every event of a
run on the other; waiting, reading and cancelling work from either side; a process whose
item was failed by another (its lease lost) stops the run and settles the session FAILED."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from services.invoker import session_convert
from services.invoker.queue.items import INVOKER_LOST, ItemError, QueueItemStatus
from services.invoker.queue.stores import open_queue_store
from services.invoker.replicas import ReplicaLink
from services.invoker.sessions.manager import SessionStatus
from services.invoker.sessions.shared import SharedSessionManager
from services.invoker.sessions.stores import open_session_store
from services.invoker.sessions.writer import database_writer
from tests.invoker.test_execution import REGISTRY, context, edge, node

TERMINAL = {"session_complete", "session_error", "session_cancelled"}
NO_WRITER = database_writer()
"""The SQLite writer thread, which PostgreSQL stores never use (it never starts)."""


async def open_manager(
    url: str, tmp_path: Path, name: str, lease_s: float = 30
) -> SharedSessionManager:
    path = tmp_path / "unused.db"
    sessions = await open_session_store(url, path, NO_WRITER, name)
    queue = await open_queue_store(url, path, NO_WRITER, name, lease_s)
    manager = SharedSessionManager(
        REGISTRY,
        sessions,
        queue,
        lambda session_id, graph, progress: context,
        cache=None,
        failure_code=lambda failure: 2,
        link=ReplicaLink(url, name),
        encode_event=session_convert.event_to_bytes,
        decode_event=session_convert.event_from_bytes,
    )
    await manager.start()
    return manager


@pytest.fixture
async def pair(postgres_url: str, tmp_path: Path) -> AsyncIterator[Callable]:
    opened: list[SharedSessionManager] = []

    async def start(name: str) -> SharedSessionManager:
        opened.append(await open_manager(postgres_url, tmp_path, name))
        return opened[-1]

    yield start
    for manager in opened:
        await manager.close()


class Watcher:
    """The kinds of events a watch on one manager received, by session, until each
    watched session's run ended."""

    def __init__(self, manager: SharedSessionManager, session_ids: list[str]) -> None:
        self.kinds: dict[str, list[str]] = {session_id: [] for session_id in session_ids}
        self._watch = manager.watch(session_ids)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        first = await anext(self._watch)  # subscribed once the first snapshot arrives
        self._note(first.event)
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for delivery in self._watch:
            self._note(delivery.event)
            if all(TERMINAL & set(kinds) for kinds in self.kinds.values()):
                return

    def _note(self, stamped) -> None:
        message = session_convert.event_to_pb(stamped, 0)
        self.kinds[message.session_id].append(message.WhichOneof("payload"))

    async def finished(self) -> dict[str, list[str]]:
        assert self._task is not None
        await asyncio.wait_for(self._task, timeout=30)
        return self.kinds


async def until(condition: Callable[[], bool] | Callable[[], Awaitable[bool]]) -> None:
    """Waits for a condition to hold (the timeout only turns a hang into a failure)."""
    async with asyncio.timeout(30):
        while True:
            result = condition()
            if result if isinstance(result, bool) else await result:
                return
            await asyncio.sleep(0.01)


async def test_each_process_runs_the_others_items_once_and_both_see_every_event(pair):
    first = await pair("first")
    # The first process runs a session that blocks until cancelled...
    blocking = first.create([node("wait", "await_cancel")], [])
    blocked_item = await first.invoke(blocking.id, run_all=True, priority=0)
    await until(lambda: first.get(blocking.id).status is SessionStatus.RUNNING)
    second = await pair("second")

    # ...so the second runs every session the first queues.
    made = [
        first.create([node("a", "add", a=n, b=1), node("b", "mul", b=2)], [edge("a.value", "b.a")])
        for n in range(10)
    ]
    await first.saved()
    ids = [session.id for session in made]
    watchers = [Watcher(first, ids), Watcher(second, ids)]
    for watcher in watchers:
        await watcher.start()
    items = [await first.invoke(session_id, run_all=True, priority=0) for session_id in ids]

    for n, session_id in enumerate(ids):
        done = await asyncio.wait_for(first.wait(session_id), timeout=30)
        assert done.status is SessionStatus.COMPLETED
        assert dict(done.execution.state.results["b"].outputs) == {"value": (n + 1) * 2}
    expected = [
        "snapshot",
        "session_started",
        "invocation_started",
        "invocation_complete",
        "invocation_started",
        "invocation_complete",
        "session_complete",
    ]
    for watcher in watchers:
        seen = await watcher.finished()
        # SessionQueued comes from the process that queued the run: it may follow the
        # first events of the run the other process started at once.
        assert all(kinds.count("session_queued") == 1 for kinds in seen.values())
        runs = {
            session_id: [kind for kind in kinds if kind != "session_queued"]
            for session_id, kinds in seen.items()
        }
        assert runs == {session_id: expected for session_id in ids}
    for item in items:
        ended = await first.queue.get(item.id)
        assert (ended.status, ended.owner) == (QueueItemStatus.COMPLETED, "second")

    # A cancel through the second process stops the run on the first.
    await until(lambda: second.get(blocking.id).status is SessionStatus.RUNNING)
    cancelled = await second.cancel(blocking.id)
    assert cancelled.status is QueueItemStatus.RUNNING
    assert (await asyncio.wait_for(second.wait(blocking.id), 30)).status is SessionStatus.CANCELLED
    ended = await second.queue.get(blocked_item.id)
    assert (ended.status, ended.owner) == (QueueItemStatus.CANCELLED, "first")
    assert first.get(blocking.id).status is SessionStatus.CANCELLED


async def test_a_run_whose_lease_was_lost_stops_and_its_session_fails(postgres_url, tmp_path):
    manager = await open_manager(postgres_url, tmp_path, "first", lease_s=1)
    other = await open_queue_store(postgres_url, tmp_path / "u.db", NO_WRITER, "other", 1)
    try:
        session = manager.create([node("wait", "await_cancel")], [])
        item = await manager.invoke(session.id, run_all=True, priority=0)
        await until(lambda: manager.get(session.id).status is SessionStatus.RUNNING)
        # Another process found the lease run out: this one could not renew it in time.
        lost = ItemError(INVOKER_LOST, "its invoker stopped", 10)
        await other.fail_running(lost, datetime.now(UTC))

        done = await asyncio.wait_for(manager.wait(session.id), timeout=30)
        assert done.status is SessionStatus.FAILED
        ended = await manager.queue.get(item.id)
        assert (ended.status, ended.error) == (QueueItemStatus.FAILED, lost)
    finally:
        await other.close()
        await manager.close()


async def test_a_session_changed_and_invoked_at_once_runs_as_changed_elsewhere(pair):
    """A process's writes of a session land before the queue item it adds next, so the
    process that claims the item reads the session with every change made before."""
    first = await pair("first")
    blocking = first.create([node("wait", "await_cancel")], [])
    await first.invoke(blocking.id, run_all=True, priority=0)
    await until(lambda: first.get(blocking.id).status is SessionStatus.RUNNING)
    second = await pair("second")

    session = first.create([node("one", "integer", value=1)], [])
    first.add_node(session.id, node("plus", "add", b=10), [edge("one.value", "plus.a")])
    item = await first.invoke(session.id, run_all=True, priority=0)  # no wait for the save

    done = await asyncio.wait_for(first.wait(session.id), timeout=30)
    assert done.status is SessionStatus.COMPLETED
    assert dict(done.execution.state.results["plus"].outputs) == {"value": 11}
    assert (await second.queue.get(item.id)).owner == "second"
    await first.cancel(blocking.id)
    await asyncio.wait_for(first.wait(blocking.id), timeout=30)
