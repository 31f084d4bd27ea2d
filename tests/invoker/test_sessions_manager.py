"""The session manager over its SQLite stores: a session reloaded after a restart has the
same graph, results, history and status, and goes on from where it stopped without running
a node again (fan-out runs and failures included); the stores' writes never contend; a
failing store never stops the queue and a failed save is logged; a refused CreateSession or
batch keeps nothing (a batch on PostgreSQL too); a watch's snapshots are the sessions as
they were when it began; and previews are asked for only while a watch wants them."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from google.protobuf import json_format
from structlog.testing import capture_logs

from easel.invoker.v1 import graph_pb2
from easel.invoker.v1 import session_service_pb2 as pb
from services.common.errors import FailedPreconditionError, UnavailableError
from services.common.model_taxonomy import ModelType
from services.invoker import session_convert
from services.invoker.execution.state import NodeFailure
from services.invoker.invocations.model_defaults import (
    DefaultModels,
    SqliteDefaultModelStore,
    WriterDefaultModelStore,
)
from services.invoker.queue.batch import BatchField, BatchMode
from services.invoker.queue.items import QueueItem, QueueItemStatus
from services.invoker.queue.sqlite_store import SqliteQueueStore, WriterQueueStore
from services.invoker.session_servicer import SessionServicer
from services.invoker.sessions.events import SessionSnapshot
from services.invoker.sessions.manager import SessionManager, SessionStatus, graph_json
from services.invoker.sessions.store import SessionChange, SqliteSessionStore, WriterSessionStore
from services.invoker.sessions.writer import database_writer
from tests.invoker.test_execution import REGISTRY, context, edge, node
from tests.invoker.test_shared_sessions import open_manager as open_shared_manager

WAIT_S = 10
"""Only turns a hang (a jammed queue) into a failure."""
WRITER = database_writer()
"""The writer thread of the tests' SQLite files."""


async def open_manager(
    path: Path,
    *,
    store: SqliteSessionStore | None = None,
    queue_store: SqliteQueueStore | None = None,
    writer: ThreadPoolExecutor = WRITER,
) -> SessionManager:
    """A started manager of the SQLite file `path`, or of the stores given."""
    manager = SessionManager(
        REGISTRY,
        WriterSessionStore(store or SqliteSessionStore(path), writer),
        WriterQueueStore(queue_store or SqliteQueueStore(path), writer),
        lambda session_id, graph, progress: context,
        cache=None,
        failure_code=lambda failure: 2,
    )
    await manager.start()
    return manager


async def run_to_end(manager: SessionManager, session_id: str) -> SessionStatus:
    item = await manager.invoke(session_id, run_all=True, priority=0)
    done = await asyncio.wait_for(manager.wait(session_id), WAIT_S)
    assert (await manager.queue.get(item.id)).status.terminal
    return done.status


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
    manager = await open_manager(path, store=store)
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
    manager = await open_manager(path, store=sessions, queue_store=queue)
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


class FailsOnce(SqliteQueueStore):
    """A queue store whose `failing` operation raises the first time it is called."""

    def __init__(self, path: Path, failing: str) -> None:
        super().__init__(path)
        self.failing = failing
        self.failures = 0

    def _fail_once(self, name: str) -> None:
        if name == self.failing and not self.failures:
            self.failures += 1
            raise sqlite3.OperationalError("disk I/O error")

    def claim_next(self, now: datetime) -> QueueItem | None:
        self._fail_once("claim_next")
        return super().claim_next(now)

    def finish(self, item_id: int, status: QueueItemStatus, error: Any, now: datetime) -> QueueItem:
        self._fail_once("finish")
        return super().finish(item_id, status, error, now)


@pytest.mark.parametrize("failing", ["claim_next", "finish"])
async def test_a_store_failure_in_the_runner_never_jams_the_queue(tmp_path, failing):
    path = tmp_path / "sessions.db"
    queue_store = FailsOnce(path, failing)
    manager = await open_manager(path, queue_store=queue_store)
    try:
        first = manager.create([node("one", "integer", value=1)], [])
        assert await run_to_end(manager, first.id) is SessionStatus.COMPLETED
        assert queue_store.failures == 1
        second = manager.create([node("two", "integer", value=2)], [])
        assert await run_to_end(manager, second.id) is SessionStatus.COMPLETED
        assert (await manager.queue.status()).counts[QueueItemStatus.COMPLETED] == 2
    finally:
        await manager.close()


class FailingUpdates(SqliteSessionStore):
    def update(self, change: SessionChange) -> None:
        raise sqlite3.OperationalError("database or disk is full")


async def test_a_failed_save_is_logged(tmp_path):
    path = tmp_path / "sessions.db"
    manager = await open_manager(path, store=FailingUpdates(path))
    try:
        session = manager.create([node("one", "integer", value=1)], [])
        await manager.saved()
        with capture_logs() as logs:
            manager.add_node(session.id, node("two", "integer", value=2), [])
            await manager.saved()
        failed = [entry for entry in logs if entry["event"] == "writing a session failed"]
        assert len(failed) == 1
        assert failed[0]["log_level"] == "error"
        assert isinstance(failed[0]["exc_info"], sqlite3.OperationalError)
    finally:
        await manager.close()


def fail_the_third_item(database_url: str, path: Path) -> type[Exception]:
    """Makes the insert of a third queue item fail, as a full disk would; the error raised."""
    if database_url == "sqlite:":
        with sqlite3.connect(path) as db:
            db.execute(
                "CREATE TRIGGER full BEFORE INSERT ON queue_items "
                "WHEN (SELECT COUNT(*) FROM queue_items) >= 2 "
                "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"
            )
        return sqlite3.IntegrityError
    with psycopg.connect(database_url, autocommit=True) as db:
        db.execute(
            "CREATE FUNCTION fill_up() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "IF (SELECT COUNT(*) FROM invoker_queue_items) >= 2 THEN "
            "RAISE EXCEPTION 'No space left on device' USING ERRCODE = 'disk_full'; END IF; "
            "RETURN NEW; END $$"
        )
        db.execute(
            "CREATE TRIGGER fill_up BEFORE INSERT ON invoker_queue_items "
            "FOR EACH ROW EXECUTE FUNCTION fill_up()"
        )
    return UnavailableError  # how the store reports a server that cannot write


async def test_a_batch_that_fails_part_way_leaves_no_session_and_no_item(database_url, tmp_path):
    path = tmp_path / "sessions.db"

    async def start(name: str) -> SessionManager:
        if database_url == "sqlite:":
            return await open_manager(path)
        return await open_shared_manager(database_url, tmp_path, name)

    manager = await start("first")
    await manager.queue.pause()
    error = fail_the_third_item(database_url, path)
    batch = BatchField("n", "value", [1, 2, 3])
    with pytest.raises(error):
        await manager.enqueue_batch(
            [node("n", "integer")], [], [batch], BatchMode.ZIP, run_all=True, priority=0
        )
    assert manager.list([]) == []
    items, _ = await manager.queue.list_items()
    assert items == []
    await manager.close()

    reopened = await start("second")
    assert reopened.list([]) == []
    items, _ = await reopened.queue.list_items()
    assert items == []
    await reopened.close()


async def test_a_create_session_whose_reply_fails_keeps_no_session(tmp_path, monkeypatch):
    manager = await open_manager(tmp_path / "sessions.db")
    servicer = SessionServicer(manager)
    request = pb.CreateSessionRequest(graph=graph_pb2.Graph(nodes=[graph_pb2.Node(id="one")]))
    request.graph.nodes[0].type = "integer"

    def broken(*args: Any) -> None:
        raise RuntimeError("the reply could not be made")

    monkeypatch.setattr(session_convert, "session_to_pb", broken)
    with pytest.raises(RuntimeError):
        await servicer.CreateSession(request, None)  # type: ignore[arg-type]
    assert manager.list([]) == []
    await manager.close()

    reopened = await open_manager(tmp_path / "sessions.db")
    assert reopened.list([]) == []
    await reopened.close()


async def test_a_watch_snapshot_is_the_session_as_it_was_when_the_watch_began(tmp_path):
    manager = await open_manager(tmp_path / "sessions.db")
    first = manager.create([node("one", "integer", value=1)], [])
    second = manager.create([node("one", "integer", value=1)], [])
    watch = manager.watch([first.id, second.id])
    stamped = (await anext(watch)).event
    began = stamped.time
    # The watcher is slow: both sessions change before it reads the second snapshot.
    for session in (first, second):
        manager.add_node(session.id, node("two", "integer", value=2), [])
    await run_to_end(manager, second.id)
    later = (await anext(watch)).event

    for snapshot in (stamped, later):
        assert isinstance(snapshot.event, SessionSnapshot)
        assert snapshot.time == began
        assert [n.id for n in snapshot.event.session.nodes] == ["one"]
        assert snapshot.event.session.status is SessionStatus.IDLE
        assert snapshot.event.session.executed == ()
        message = session_convert.session_to_pb(snapshot.event.session)
        assert [n.id for n in message.graph.nodes] == ["one"]
        assert list(message.state.pending_node_ids) == ["one"]
    await watch.aclose()
    await manager.close()


async def test_the_easel_graph_chunk_is_the_graph_message_in_its_json_form(tmp_path):
    manager = await open_manager(tmp_path / "sessions.db")
    session = manager.create(
        [node("two", "integer", value=2), node("plus", "add", b=3), node("times", "mul", b=4)],
        [edge("two.value", "plus.a"), edge("plus.value", "times.a")],
    )
    chunk = json.dumps(graph_json(session.graph))

    parsed = json_format.Parse(chunk, graph_pb2.Graph())

    assert parsed == session_convert.session_to_pb(session).graph
    expected = json_format.MessageToJson(parsed, preserving_proto_field_name=True)
    assert json.loads(chunk) == json.loads(expected)
    await manager.close()


async def test_an_edge_into_an_iterate_created_without_a_collection_is_accepted(tmp_path):
    manager = await open_manager(tmp_path / "sessions.db")
    session = manager.create(
        [node("it", "iterate"), node("times", "mul", b=10)], [edge("it.item", "times.a")]
    )
    assert session.status is SessionStatus.IDLE
    assert session.execution.pending_ids() == ["it", "times"]
    with pytest.raises(FailedPreconditionError) as refused:
        await manager.invoke(session.id, run_all=True, priority=0)
    assert refused.value.reason == "NOTHING_TO_RUN"

    manager.add_node(session.id, node("range", "range", start=1, stop=3), [])
    manager.add_edge(session.id, edge("range.collection", "it.collection"))
    assert await run_to_end(manager, session.id) is SessionStatus.COMPLETED
    results = session.execution.state.results
    assert [results[f"times#{i}"].outputs["value"] for i in (0, 1)] == [10, 20]
    await manager.close()


async def test_default_model_writes_run_on_the_sessions_writer_thread(tmp_path):
    """The default models share sessions.db with the sessions and the queue, so their
    writes go on the one writer thread too, never overlapping the others."""
    path = tmp_path / "sessions.db"
    threads: dict[str, set[str]] = {"sessions": set(), "defaults": set()}

    class Sessions(SqliteSessionStore):
        def update(self, change: SessionChange) -> None:
            threads["sessions"].add(threading.current_thread().name)
            super().update(change)

    class Defaults(SqliteDefaultModelStore):
        def put(self, model_type: ModelType, model_key: str, update_time: datetime) -> None:
            threads["defaults"].add(threading.current_thread().name)
            super().put(model_type, model_key, update_time)

    writer = database_writer()
    manager = await open_manager(path, store=Sessions(path), writer=writer)
    defaults = await DefaultModels.open(WriterDefaultModelStore(Defaults(path), writer), {})
    session = manager.create([node("one", "integer", value=1)], [])
    await run_to_end(manager, session.id)
    await defaults.set(ModelType.MAIN, "key", ModelType.MAIN)
    await manager.close()
    await defaults.close()
    writer.shutdown()

    assert len(threads["sessions"]) == 1
    assert threads["defaults"] == threads["sessions"]
