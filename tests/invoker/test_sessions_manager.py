"""The session manager over its SQLite stores: a session reloaded after a restart has the
same graph, results, history and status, and goes on from where it stopped without running
a node again (fan-out runs and failures included); the stores' writes never contend; and
previews are asked for only while a watch wants them."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from services.invoker.execution.state import NodeFailure
from services.invoker.queue.sqlite_store import SqliteQueueStore
from services.invoker.sessions.manager import SessionManager, SessionStatus
from services.invoker.sessions.store import SessionChange, SqliteSessionStore
from tests.invoker.test_execution import REGISTRY, context, edge, node


async def open_manager(path: Path) -> SessionManager:
    manager = SessionManager(
        REGISTRY,
        SqliteSessionStore(path),
        SqliteQueueStore(path),
        lambda session_id, graph, progress: context,
        cache=None,
        failure_code=lambda failure: 2,
    )
    await manager.start()
    return manager


def snapshot(manager: SessionManager, session_id: str) -> tuple:
    session = manager.get(session_id)
    state = session.execution.state
    return (
        session.status,
        session.graph.edges,
        {key: dict(result.outputs) for key, result in state.results.items()},
        list(state.executed),
        {key: failure.error_type for key, failure in state.errors.items()},
        session.execution.ready_ids(),
        session.execution.pending_ids(),
    )


async def test_a_reloaded_session_goes_on_where_it_stopped(tmp_path):
    path = tmp_path / "sessions.db"
    manager = await open_manager(path)
    session = manager.create(
        [
            node("broken", "div", a=1, b=0),
            node("after", "add", b=1),
            node("range", "range", start=0, stop=3),
            node("iterate", "iterate"),
            node("times", "mul", b=10),
            node("plus", "add", b=1),
            node("collect", "collect"),
        ],
        [
            edge("range.collection", "iterate.collection"),
            edge("iterate.item", "times.a"),
            edge("times.value", "plus.a"),
            edge("plus.value", "collect.item"),
            edge("broken.value", "after.a"),
        ],
    )
    for _ in range(6):
        await manager.invoke(session.id, run_all=False, priority=0)
        await manager.wait(session.id)
    before = snapshot(manager, session.id)
    assert before[4] == {"broken": "DIVISION_BY_ZERO"}
    assert before[3] == ["range", "iterate#0", "iterate#1", "iterate#2", "times#0"]
    await manager.close()

    reopened = await open_manager(path)
    assert snapshot(reopened, session.id) == before
    await reopened.invoke(session.id, run_all=True, priority=0)
    done = await reopened.wait(session.id)
    results = done.execution.state.results
    assert results["collect"].outputs == {"collection": [1, 11, 21]}
    assert done.status is SessionStatus.FAILED
    assert done.execution.nothing_to_run
    failure = done.execution.state.errors["broken"]
    assert isinstance(failure, NodeFailure)
    assert failure.cause is not None
    await reopened.close()


async def save_cost_of_add_node(path: Path, size: int) -> tuple[int, int]:
    """The SQL statements and their bytes (values included) that saving one AddNode runs,
    in a session of `size` nodes that have all run."""
    store = SqliteSessionStore(path)
    manager = SessionManager(
        REGISTRY,
        store,
        SqliteQueueStore(path),
        lambda session_id, graph, progress: context,
        cache=None,
        failure_code=lambda failure: 2,
    )
    await manager.start()
    session = manager.create([node(f"n{i}", "add", a=i, b=1) for i in range(size)], [])
    await manager.invoke(session.id, run_all=True, priority=0)
    await manager.wait(session.id)
    await manager.saved()
    statements: list[str] = []
    store.trace(statements.append)
    manager.add_node(session.id, node("new", "add", b=1), [edge("n0.value", "new.a")])
    await manager.saved()
    store.trace(None)
    await manager.close()
    return len(statements), sum(len(statement) for statement in statements)


async def test_saving_an_added_node_costs_the_same_in_a_small_and_a_large_session(tmp_path):
    small_statements, small_bytes = await save_cost_of_add_node(tmp_path / "small.db", 10)
    large_statements, large_bytes = await save_cost_of_add_node(tmp_path / "large.db", 500)
    assert large_statements == small_statements
    # Only the update time's text may differ (microseconds are left out when zero).
    assert abs(large_bytes - small_bytes) <= 7


async def test_nodes_and_edges_added_one_by_one_are_reloaded(tmp_path):
    path = tmp_path / "sessions.db"
    manager = await open_manager(path)
    session = manager.create([node("one", "integer", value=1)], [])
    await manager.invoke(session.id, run_all=True, priority=0)
    await manager.wait(session.id)
    manager.add_node(session.id, node("plus", "add", b=10), [edge("one.value", "plus.a")])
    manager.add_node(session.id, node("two", "integer", value=2), [])
    manager.add_node(session.id, node("times", "mul"), [edge("plus.value", "times.a")])
    manager.add_edge(session.id, edge("two.value", "times.b"))
    before = snapshot(manager, session.id)
    await manager.close()

    reopened = await open_manager(path)
    assert snapshot(reopened, session.id) == before
    await reopened.invoke(session.id, run_all=True, priority=0)
    done = await reopened.wait(session.id)
    assert done.execution.state.results["times"].outputs == {"value": 22}
    assert done.status is SessionStatus.COMPLETED
    await reopened.close()


async def test_a_session_saved_running_whose_item_ended_is_settled_at_start(tmp_path):
    """The invoker stopped after writing the item's end and before the session's status:
    the session must not stay RUNNING (it could then never be run or cancelled again)."""
    path = tmp_path / "sessions.db"
    manager = await open_manager(path)
    session = manager.create([node("one", "integer", value=1)], [])
    item = await manager.invoke(session.id, run_all=True, priority=0)
    await manager.wait(session.id)
    await manager.close()
    store = SqliteSessionStore(path)
    store.update(SessionChange(session.id, "RUNNING", item.id, datetime.now(UTC)))
    store.close()

    reopened = await open_manager(path)
    assert reopened.get(session.id).status is SessionStatus.COMPLETED
    reopened.add_node(session.id, node("two", "integer", value=2), [])
    await reopened.invoke(session.id, run_all=True, priority=0)
    done = await reopened.wait(session.id)
    assert done.execution.state.results["two"].outputs == {"value": 2}
    await reopened.close()


class Overlaps:
    """Counts calls of the session and queue stores that ran while another was running."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running = 0
        self.overlapping = 0
        self.calls = 0

    def around(self, call: Callable[..., Any]) -> Callable[..., Any]:
        def measured(*args: Any) -> Any:
            with self._lock:
                self._running += 1
                self.calls += 1
                if self._running > 1:
                    self.overlapping += 1
            try:
                time.sleep(0.005)  # a slow disk: a write takes a while
                return call(*args)
            finally:
                with self._lock:
                    self._running -= 1

        return measured


async def test_session_and_queue_writes_to_the_one_file_never_overlap(tmp_path):
    """Two connections writing one SQLite file at once make the second wait in SQLite's
    busy handler, which sleeps 1, 2, 5… ms: a queue item would start milliseconds late
    behind a session's save. The writes of both stores go one after another instead."""
    path = tmp_path / "sessions.db"
    overlaps = Overlaps()
    sessions, queue = SqliteSessionStore(path), SqliteQueueStore(path)
    for store, names in ((sessions, ("create", "update")), (queue, ("add", "claim_next"))):
        for name in names:
            setattr(store, name, overlaps.around(getattr(store, name)))
    manager = SessionManager(
        REGISTRY,
        sessions,
        queue,
        lambda session_id, graph, progress: context,
        cache=None,
        failure_code=lambda failure: 2,
    )
    await manager.start()
    for _ in range(5):
        session = manager.create([node(f"n{i}", "add", a=i, b=1) for i in range(20)], [])
        await manager.invoke(session.id, run_all=True, priority=0)
        await manager.wait(session.id)
    await manager.close()
    assert overlaps.calls > 10
    assert overlaps.overlapping == 0


async def test_generations_make_previews_only_while_a_watch_asks_for_them(tmp_path):
    manager = await open_manager(tmp_path / "sessions.db")
    session = manager.create([node("one", "integer", value=1)], [])
    other = manager.create([node("one", "integer", value=1)], [])
    assert not manager.wants_previews(session.id)

    plain = manager.watch([session.id])
    await anext(plain)
    assert not manager.wants_previews(session.id)
    named = manager.watch([session.id], previews=True)
    await anext(named)
    assert manager.wants_previews(session.id)
    assert not manager.wants_previews(other.id)
    await named.aclose()
    assert not manager.wants_previews(session.id)

    await manager.queue.pause()
    await manager.invoke(other.id, run_all=True, priority=0)
    every = manager.watch([], previews=True)
    await anext(every)  # the snapshot of the QUEUED session
    assert manager.wants_previews(session.id)
    assert manager.wants_previews(other.id)
    await every.aclose()
    await plain.aclose()
    assert not manager.wants_previews(other.id)
    await manager.queue.resume()
    await manager.wait(other.id)
    await manager.close()
