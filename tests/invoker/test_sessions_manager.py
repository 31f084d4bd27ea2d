"""The session manager over its SQLite stores: a session reloaded after a restart has the
same graph, results, history and status, and goes on from where it stopped without running
a node again (fan-out runs and failures included)."""

from __future__ import annotations

from pathlib import Path

from services.invoker.execution.state import NodeFailure
from services.invoker.queue.sqlite_store import SqliteQueueStore
from services.invoker.sessions.manager import SessionManager, SessionStatus
from services.invoker.sessions.store import SqliteSessionStore
from tests.invoker.test_execution import REGISTRY, context, edge, node


async def open_manager(path: Path) -> SessionManager:
    manager = SessionManager(
        REGISTRY,
        SqliteSessionStore(path),
        SqliteQueueStore(path),
        lambda session_id, graph, inputs, progress: context,
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
        lambda session_id, graph, inputs, progress: context,
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
