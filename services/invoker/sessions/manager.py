"""Sessions in memory, saved to their store on every change that matters, and the runner
that executes the queue's items one at a time.

A session's status follows its queue item while it has one queued or running (QUEUED,
RUNNING) and its execution's settled status otherwise. A changed session is saved once
per turn of the event loop (a node's result included, so a crash loses at most the node
that was running). The writes are queued without waiting on them, through the
`OrderedCalls` the queue's store calls go through too, so every store call lands in the
order asked for: a write before any later read or queue change. On SQLite the calls all
run on the file's one writer thread, so no write waits on another; on PostgreSQL they
are awaited on the event loop.
A save writes only what changed since the last one (new nodes, edges and runs, and the
status row), so its cost never grows with the session; a save that fails is logged.

The runner never stops and never leaves an item RUNNING: whatever a run raises, its item
ends (FAILED with INVOKER_FAILED when the run itself broke), an end the store refuses is
retried, and a claim that fails is retried; retries wait RETRY_FIRST_S, doubling up to
RETRY_MAX_S, so a broken store is not hammered.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import structlog

from services.common import errors as error_classes
from services.common.errors import (
    EaselError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
)
from services.common.event_bus import ChangeSignal, Delivery, EventBus, follow
from services.invoker.clients.inference import ModelLoad, Preview
from services.invoker.execution.cache import OutputCache
from services.invoker.execution.events import (
    ExecutionEvent,
    InvocationComplete,
    InvocationError,
)
from services.invoker.execution.executor import ContextFactory, GraphExecution
from services.invoker.execution.state import NodeFailure, RunMode, SettledStatus
from services.invoker.graphs.graph import Edge, FieldRef, Graph, GraphNode, NodeSpec
from services.invoker.invocations.registry import InvocationRegistry
from services.invoker.queue import items as queue_items
from services.invoker.queue.batch import BatchField, BatchMode, expand_batch
from services.invoker.queue.items import ItemError, QueueItem, QueueItemStatus
from services.invoker.queue.queue import InvocationQueue
from services.invoker.sessions.events import (
    InvocationProgress,
    ModelLoadEvent,
    SessionQueued,
    SessionSnapshot,
    SessionStarted,
    Stamped,
)
from services.invoker.sessions.store import EdgeJson, SessionChange, SessionRecord, SessionStore
from services.invoker.sessions.writer import OrderedCalls

log = structlog.get_logger(__name__)

ALL_SESSIONS = ""
"""The key of a watch of every session among the preview watches."""

GraphJson = Callable[[], dict[str, Any]]
"""The session's graph as JSON (see `graph_json`)."""

RETRY_FIRST_S = 0.05
RETRY_MAX_S = 5.0
"""The first and the longest wait before the runner retries a failed claim or item end."""


@dataclass(frozen=True)
class NodeReporter:
    """Where one run's progress (a ProgressSink) and model loads go: the session's
    events, in the order they happen."""

    publish: Callable[[ExecutionEvent], None]
    session_id: str
    run_id: str
    queue_item_id: Callable[[], int]

    def __call__(
        self,
        step: int,
        total: int,
        message: str = "",
        preview: Preview | None = None,
        time: datetime | None = None,
    ) -> None:
        progress = InvocationProgress(
            self.session_id, self.queue_item_id(), self.run_id, step, total, preview, time
        )
        self.publish(progress)

    def model_load(self, load: ModelLoad) -> None:
        self.publish(ModelLoadEvent(self.session_id, self.queue_item_id(), self.run_id, load))


ReporterFor = Callable[[str], NodeReporter]
ContextFactoryFor = Callable[[str, GraphJson, ReporterFor], ContextFactory]
"""Makes the node-context factory of one session from its id, its graph as JSON (for the
provenance of the images its nodes save) and where a run's progress and model loads go."""

FailureCode = Callable[[NodeFailure], int]
"""The gRPC status code number classifying a node failure (the servicer layer knows it)."""


class SessionStatus(StrEnum):
    """Where a session stands, as SessionStatus names it."""

    IDLE = "IDLE"
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def busy(self) -> bool:
        return self in (SessionStatus.QUEUED, SessionStatus.RUNNING)


SETTLED = {
    SettledStatus.IDLE: SessionStatus.IDLE,
    SettledStatus.COMPLETED: SessionStatus.COMPLETED,
    SettledStatus.FAILED: SessionStatus.FAILED,
    SettledStatus.CANCELLED: SessionStatus.CANCELLED,
}
RUN_MODES = {queue_items.RunMode.ALL: RunMode.ALL, queue_items.RunMode.NEXT: RunMode.NEXT}
ENDED = {
    QueueItemStatus.FAILED: SessionStatus.FAILED,
    QueueItemStatus.CANCELLED: SessionStatus.CANCELLED,
}
"""The session status an ended item leaves; a COMPLETED item leaves the execution's."""


@dataclass
class _Unsaved:
    """What changed in a session since it was last saved: all of it when `new`, else the
    nodes, edges and run ids added (the status row is written with every save)."""

    new: bool = False
    nodes: list[dict[str, Any]] = field(default_factory=list)
    edges: list[EdgeJson] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)


@dataclass
class Session:
    """A graph with its execution across runs, its status and its latest queue item;
    `cancelled` stops the run in progress."""

    id: str
    execution: GraphExecution
    status: SessionStatus
    create_time: datetime
    update_time: datetime
    queue_item_id: int = 0
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def graph(self) -> Graph:
        return self.execution.graph

    def view(self) -> SessionView:
        """The session as it stands now, unaffected by what happens to it later."""
        execution = self.execution
        state = execution.state
        return SessionView(
            self.id,
            self.status,
            self.queue_item_id,
            self.create_time,
            self.update_time,
            tuple(self.graph.nodes.values()),
            tuple(self.graph.edges),
            tuple(state.executed),
            {key: result.outputs for key, result in state.results.items()},
            dict(state.errors),
            state.running,
            tuple(execution.ready_ids()),
            tuple(execution.pending_ids()),
        )


@dataclass(frozen=True)
class SessionView:
    """A session at one moment, as SessionService shows it: copies of its graph and
    execution state (whose nodes, edges, outputs and failures never change once made)."""

    id: str
    status: SessionStatus
    queue_item_id: int
    create_time: datetime
    update_time: datetime
    nodes: tuple[GraphNode, ...]
    edges: tuple[Edge, ...]
    executed: tuple[str, ...]
    results: Mapping[str, Mapping[str, Any]]
    """Outputs as JSON by run id."""
    errors: Mapping[str, NodeFailure]
    running: str
    ready: tuple[str, ...]
    pending: tuple[str, ...]


class SessionManager:
    """Every session of the invoker, and the runner of the queue."""

    def __init__(
        self,
        registry: InvocationRegistry,
        store: SessionStore,
        queue_store: queue_items.QueueStore,
        contexts: ContextFactoryFor,
        *,
        cache: OutputCache | None,
        failure_code: FailureCode,
    ) -> None:
        self._failure_code = failure_code
        self._registry = registry
        self._store = store
        self._contexts = contexts
        self._cache = cache
        self.events: EventBus[Stamped] = EventBus()
        """Every session's events, for WatchSessionEvents."""
        self._closing = asyncio.Event()
        self._sessions: dict[str, Session] = {}
        self._calls = OrderedCalls()
        """Every call of both stores, in the order asked for."""
        self._changed = ChangeSignal()
        self._preview_watches: Counter[str] = Counter()
        """Watches that asked for previews, by session id (ALL_SESSIONS: every session)."""
        self._unsaved: dict[str, _Unsaved] = {}
        self._flush_scheduled = False
        self.queue = InvocationQueue(
            queue_store,
            on_cancel=self._item_cancelled,
            on_change=self._item_changed,
            calls=self._calls,
        )
        self._runner: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Loads the stored sessions, recovers the queue and starts the runner."""
        records = await self._calls.run(self._store.all)
        for record in records:
            self._sessions[record.id] = self._load(record)
        await self.queue.start()
        await self._settle_ended_runs()
        self._runner = asyncio.create_task(self._run_queue())

    async def _settle_ended_runs(self) -> None:
        """A session saved QUEUED or RUNNING whose item has ended (the invoker stopped
        between writing the item's end and the session's status) takes the status the
        end gives it, rather than staying busy for good."""
        for session in [s for s in self._sessions.values() if s.status.busy]:
            try:
                item = await self.queue.get(session.queue_item_id)
            except NotFoundError:
                session.status = SETTLED[session.execution.status]
                self._touch(session)
                continue
            if item.status.terminal:
                session.status = ENDED.get(item.status) or SETTLED[session.execution.status]
                self._touch(session)

    async def close(self) -> None:
        self._closing.set()
        if self._runner is not None:
            self._runner.cancel()
            await asyncio.gather(self._runner, return_exceptions=True)
        self._flush()
        await self.queue.close()
        await self._calls.run(self._store.close)
        await self._calls.close()

    def create(self, nodes: Sequence[NodeSpec], edges: Sequence[Edge]) -> Session:
        """A new IDLE session from a graph validated as a whole."""
        session = self.build(nodes, edges)
        self.keep(session)
        return session

    def build(self, nodes: Sequence[NodeSpec], edges: Sequence[Edge]) -> Session:
        """A new IDLE session from a graph validated as a whole, not kept yet: `keep` it
        once its reply is made, so a request that fails on the way keeps nothing."""
        return self._new(Graph.build(self._registry, nodes, edges))

    def keep(self, session: Session) -> None:
        """Keeps (and saves) a session made by `build`."""
        self._sessions[session.id] = session
        self._save(session).new = True

    def _new(self, graph: Graph) -> Session:
        now = _now()
        session_id = str(uuid.uuid4())
        execution = self._execution(session_id, graph)
        return Session(session_id, execution, SessionStatus.IDLE, now, now)

    def _discard(self, session: Session) -> None:
        """Forgets a session kept moments ago, and deletes it from the store if a save
        already wrote it."""
        self._sessions.pop(session.id, None)
        unsaved = self._unsaved.pop(session.id, None)
        if unsaved is None or not unsaved.new:
            self._write(lambda: self._store.delete(session.id))
        self._changed.notify()

    def get(self, session_id: str) -> Session:
        session = self._sessions.get(session_id)
        if session is None:
            raise NotFoundError(
                f"no session has id {session_id!r}",
                reason="SESSION_NOT_FOUND",
                metadata={"session_id": session_id},
            )
        return session

    def list(self, statuses: Collection[SessionStatus]) -> list[Session]:
        """Matching sessions, newest first."""
        found = [s for s in self._sessions.values() if not statuses or s.status in statuses]
        return sorted(found, key=lambda s: (s.create_time, s.id), reverse=True)

    def delete(self, session_id: str) -> None:
        session = self.get(session_id)
        if session.status.busy:
            raise FailedPreconditionError(
                f"session {session_id!r} is {session.status}; cancel it first",
                reason="SESSION_BUSY",
                metadata={"session_id": session_id},
            )
        del self._sessions[session_id]
        self._write(lambda: self._store.delete(session_id))
        self._changed.notify()

    def add_node(
        self, session_id: str, spec: NodeSpec, links: Sequence[Edge]
    ) -> tuple[GraphNode, list[Edge], SessionStatus]:
        session = self.get(session_id)
        execution = session.execution
        node, edges = session.graph.add_node(spec, links, execution.state.executed)
        execution.node_added(node.id)
        if not session.status.busy:
            session.status = SETTLED[execution.status]
        unsaved = self._touch(session)
        unsaved.nodes.append(_node_json(node))
        unsaved.edges.extend(_edge_json(edge) for edge in edges)
        return node, edges, session.status

    def add_edge(self, session_id: str, edge: Edge) -> Edge:
        session = self.get(session_id)
        execution = session.execution
        destination = edge.destination.node_id
        if destination in session.graph.nodes and not execution.accepts_edge_into(destination):
            raise FailedPreconditionError(
                f"node {destination!r} has already run",
                reason="NODE_ALREADY_EXECUTED",
                metadata={"node_id": destination},
            )
        added = session.graph.add_edge(edge)
        execution.edge_added(added)
        if not session.status.busy:
            session.status = SETTLED[execution.status]
        self._touch(session).edges.append(_edge_json(added))
        return added

    async def invoke(self, session_id: str, run_all: bool, priority: int) -> QueueItem:
        session = self.get(session_id)
        if session.status.busy:
            raise FailedPreconditionError(
                f"session {session_id!r} already has a run {session.status.lower()}",
                reason="SESSION_BUSY",
                metadata={"session_id": session_id},
            )
        if session.execution.nothing_to_run:
            raise FailedPreconditionError(
                f"session {session_id!r} has no node ready to run",
                reason="NOTHING_TO_RUN",
                metadata={"session_id": session_id},
            )
        session.status = SessionStatus.QUEUED
        mode = _run_mode(run_all)
        try:
            item = await self.queue.enqueue(session_id, mode, priority)
        except Exception:
            session.status = SETTLED[session.execution.status]
            raise
        self._queued(session, item)
        return item

    def _queued(self, session: Session, item: QueueItem) -> None:
        session.queue_item_id = item.id
        self._touch(session)
        self._emit(SessionQueued(session.id, item.id, item.run_mode))

    async def enqueue_batch(
        self,
        nodes: Sequence[NodeSpec],
        edges: Sequence[Edge],
        fields: Sequence[BatchField],
        mode: BatchMode,
        run_all: bool,
        priority: int,
    ) -> list[QueueItem]:
        """One session per expansion of the batch, each queued at once. All or nothing:
        every graph is built and validated before the first session is made, and the
        items are queued in one store operation, so a refused or failed batch leaves
        neither a session nor an item."""
        node_ids = {spec.id for spec in nodes}
        for index, batch_field in enumerate(fields):
            if batch_field.node_id and batch_field.node_id not in node_ids:
                raise InvalidArgumentError(
                    f"the graph has no node {batch_field.node_id!r}",
                    field=f"fields[{index}].node_id",
                    reason="UNKNOWN_NODE",
                    metadata={"node_id": batch_field.node_id},
                )
        graphs = [
            Graph.build(
                self._registry,
                [
                    NodeSpec(spec.id, spec.type, {**spec.inputs, **values.get(spec.id, {})})
                    for spec in nodes
                ],
                edges,
            )
            for values in expand_batch(fields, mode)
        ]
        sessions = [self._new(graph) for graph in graphs]
        if any(session.execution.nothing_to_run for session in sessions):
            raise FailedPreconditionError(
                "the batch's graph has no node ready to run", reason="NOTHING_TO_RUN"
            )
        # Shielded: a caller that goes away mid-way still leaves the whole batch or none.
        queueing = self._queue_all(sessions, _run_mode(run_all), priority)
        return await asyncio.shield(asyncio.ensure_future(queueing))

    async def _queue_all(
        self, sessions: Sequence[Session], mode: queue_items.RunMode, priority: int
    ) -> list[QueueItem]:
        """Keeps the new sessions QUEUED and queues their items in one store operation;
        if that fails, the sessions are forgotten again."""
        for session in sessions:
            session.status = SessionStatus.QUEUED
            self.keep(session)
        try:
            items = await self.queue.enqueue_all([s.id for s in sessions], mode, priority)
        except Exception:
            for session in sessions:
                self._discard(session)
            raise
        for session, item in zip(sessions, items, strict=True):
            self._queued(session, item)
        return items

    async def cancel(self, session_id: str) -> QueueItem:
        session = self.get(session_id)
        if not session.status.busy:
            raise FailedPreconditionError(
                f"session {session_id!r} has no run queued or running",
                reason="SESSION_NOT_RUNNING",
                metadata={"session_id": session_id},
            )
        return await self.queue.cancel(session.queue_item_id)

    async def wait(self, session_id: str) -> Session:
        """The session once it has no run queued or running."""
        session = self.get(session_id)
        await self._changed.wait_until(lambda: not session.status.busy)
        return session

    async def watch(
        self, session_ids: Sequence[str], previews: bool = False
    ) -> AsyncIterator[Delivery[Stamped]]:
        """What WatchSessionEvents streams: a snapshot of each watched session (the named
        ones, or every one QUEUED or RUNNING), then the live events, until the reader
        stops. The snapshots are taken together, in the same instant as the subscription,
        so no event falls between the two and a slow reader still gets each session as it
        stood then. While a watch with `previews` lasts, its sessions' generations make
        previews."""
        ids = set(session_ids)
        watched = [self.get(session_id) for session_id in dict.fromkeys(session_ids)]
        if ids:
            subscription = self.events.subscribe(lambda stamped: stamped.event.session_id in ids)
        else:
            subscription = self.events.subscribe()
            watched = [session for session in self._sessions.values() if session.status.busy]
        now = _now()
        snapshots = [
            Stamped(
                now, SessionSnapshot(view.id, view.queue_item_id if view.status.busy else 0, view)
            )
            for view in (session.view() for session in watched)
        ]
        preview_keys = (ids or {ALL_SESSIONS}) if previews else set()
        self._preview_watches.update(preview_keys)
        try:
            for snapshot in snapshots:
                yield Delivery(snapshot, 0)
            async for delivery in follow(subscription, self._closing, "invoker"):
                yield delivery
        finally:
            subscription.close()
            self._preview_watches.subtract(preview_keys)
            self._preview_watches = +self._preview_watches  # drops the keys back at zero

    def wants_previews(self, session_id: str) -> bool:
        """Whether a watch that asked for previews covers the session now: its
        generations make previews only then."""
        return self._preview_watches[session_id] > 0 or self._preview_watches[ALL_SESSIONS] > 0

    def _item_changed(self, item: QueueItem) -> None:
        session = self._sessions.get(item.session_id)
        if session is None:
            return
        if item.status is QueueItemStatus.PENDING:
            session.queue_item_id = item.id
            session.status = SessionStatus.QUEUED
        elif session.queue_item_id != item.id:
            return
        elif item.status is QueueItemStatus.RUNNING:
            session.status = SessionStatus.RUNNING
        elif item.status is QueueItemStatus.CANCELLED and session.status is SessionStatus.QUEUED:
            session.status = SessionStatus.CANCELLED
        elif item.error is not None and item.error.error_type == queue_items.INVOKER_RESTARTED:
            session.status = SessionStatus.FAILED
        else:
            return
        self._touch(session)

    def _item_cancelled(self, item: QueueItem) -> None:
        session = self._sessions.get(item.session_id)
        if session is not None:
            session.cancelled.set()

    async def _run_queue(self) -> None:
        """Claims items one after another, the next the moment the previous one ends; a
        failed claim is logged and retried."""
        waits = _retry_waits()
        while True:
            try:
                item = await self.queue.claim()
            except Exception:
                wait = next(waits)
                log.exception("claiming the next queue item failed", retry_in_s=wait)
                await asyncio.sleep(wait)
                continue
            waits = _retry_waits()
            await self._run_item(item)

    async def _run_item(self, item: QueueItem) -> None:
        """Runs the item's session, then ends the item and settles the session: the
        session stays RUNNING until its item has ended, so no new run of it is queued
        while this one is still finishing. The run's results are written before the item
        ends."""
        session = self._sessions.get(item.session_id)
        if session is None:
            error = ItemError("SESSION_NOT_FOUND", "the session was deleted", 5)
            await self._end(item, QueueItemStatus.FAILED, error)
            return
        try:
            status, item_status, error = await self._execute(session, item)
        except Exception as exc:
            log.exception("running a queue item failed", queue_item_id=item.id)
            status, item_status = SessionStatus.FAILED, QueueItemStatus.FAILED
            error = ItemError("INVOKER_FAILED", f"{type(exc).__name__}: {exc}", 13)
        try:
            self._flush()
        except Exception:
            log.exception("saving a session failed", session_id=session.id)
        ended = await self._end(item, item_status, error)
        # An end refused (another invoker failed the item, its lease lost) decides too.
        session.status = status if ended.status is item_status else ENDED.get(ended.status, status)
        self._touch(session)

    async def _execute(
        self, session: Session, item: QueueItem
    ) -> tuple[SessionStatus, QueueItemStatus, ItemError | None]:
        """Runs the session as the item asks; returns how the session and the item end."""
        session.cancelled = asyncio.Event()
        self._emit(SessionStarted(session.id, item.id, item.run_mode))
        if self.queue.cancel_requested(item.id):
            session.cancelled.set()
        result = await session.execution.run(
            RUN_MODES[item.run_mode], cancelled=session.cancelled, queue_item_id=item.id
        )
        if result.status is SettledStatus.CANCELLED:
            return SessionStatus.CANCELLED, QueueItemStatus.CANCELLED, None
        if result.failure is not None:
            failure = result.failure
            code = self._failure_code(failure)
            error = ItemError(failure.error_type, failure.error, code, result.failed_node_id)
            return SessionStatus.FAILED, QueueItemStatus.FAILED, error
        return SETTLED[result.status], QueueItemStatus.COMPLETED, None

    async def _end(
        self, item: QueueItem, status: QueueItemStatus, error: ItemError | None
    ) -> QueueItem:
        """Ends the item, retrying until the store takes it (ending an item is
        idempotent), so the queue never stays on an item that is over; the item as
        ended."""
        waits = _retry_waits()
        while True:
            try:
                return await self.queue.finish(item.id, status, error)
            except Exception:
                wait = next(waits)
                log.exception("ending a queue item failed", queue_item_id=item.id, retry_in_s=wait)
                await asyncio.sleep(wait)

    def _execution(self, session_id: str, graph: Graph) -> GraphExecution:
        def queue_item_id() -> int:
            session = self._sessions.get(session_id)
            return 0 if session is None else session.queue_item_id

        def reporter_for(run_id: str) -> NodeReporter:
            publish = self._publish
            return NodeReporter(publish, session_id, run_id, queue_item_id)

        contexts = self._contexts(session_id, lambda: graph_json(graph), reporter_for)
        return GraphExecution(session_id, graph, contexts, cache=self._cache, emit=self._emit)

    def _emit(self, event: ExecutionEvent) -> None:
        """Publishes a run's event; a node's result is saved at once, so a crash loses at
        most the node that was running."""
        if isinstance(event, InvocationComplete | InvocationError):
            session = self._sessions.get(event.session_id)
            if session is not None:
                self._save(session).runs.append(event.node_id)
        self.events.publish(Stamped(_now(), event))

    async def saved(self) -> None:
        """Returns once every change made so far is written to the store."""
        self._flush()
        await self._calls.run(_nothing)

    def _publish(self, event: ExecutionEvent) -> None:
        """Publishes a relayed event, at the time it happened by the inference service's
        clock when it comes from there; a slow watcher drops it, the run never waits."""
        match event:
            case InvocationProgress(time=datetime() as relayed):
                stamp = relayed
            case ModelLoadEvent(load=ModelLoad(time=datetime() as relayed)):
                stamp = relayed
            case _:
                stamp = _now()
        self.events.publish(Stamped(stamp, event))

    def _touch(self, session: Session) -> _Unsaved:
        session.update_time = _now()
        self._changed.notify()
        return self._save(session)

    def _save(self, session: Session) -> _Unsaved:
        """Marks the session for saving and returns where its changes are noted; every
        change of one turn of the event loop is written at once."""
        unsaved = self._unsaved.setdefault(session.id, _Unsaved())
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        return unsaved

    def _flush(self) -> None:
        self._flush_scheduled = False
        unsaved, self._unsaved = self._unsaved, {}
        for session_id, changes in unsaved.items():
            session = self._sessions.get(session_id)
            if session is None:
                continue
            if changes.new:
                record = _record(session)
                self._write(lambda record=record: self._store.create(record))
            else:
                change = _change(session, changes)
                self._write(lambda change=change: self._store.update(change))

    def _write(self, work: Callable[[], Awaitable[None]]) -> None:
        self._calls.soon(work, "writing a session failed")

    def _load(self, record: SessionRecord) -> Session:
        nodes = [NodeSpec(n["id"], n["type"], n["inputs"]) for n in record.graph["nodes"]]
        edges = [Edge(FieldRef(e[0], e[1]), FieldRef(e[2], e[3])) for e in record.graph["edges"]]
        graph = Graph.build(self._registry, nodes, edges)
        execution = self._execution(record.id, graph)
        state = record.state
        errors = {key: _failure(error) for key, error in state["errors"].items()}
        execution.restore(state["results"], errors, state["executed"])
        status = SessionStatus(record.status)
        return Session(
            record.id,
            execution,
            status,
            record.create_time,
            record.update_time,
            record.queue_item_id,
        )


def graph_json(graph: Graph) -> dict[str, Any]:
    """The graph in graph.proto's Graph JSON form (proto field names), as the `easel_graph`
    chunk of a saved image holds it: nodes with their direct inputs, edges as source and
    destination {node_id, field}."""
    return {
        "nodes": [_node_json(node) for node in graph.nodes.values()],
        "edges": [
            {
                "source": {"node_id": edge.source.node_id, "field": edge.source.field},
                "destination": {
                    "node_id": edge.destination.node_id,
                    "field": edge.destination.field,
                },
            }
            for edge in graph.edges
        ],
    }


def _stored_graph(graph: Graph) -> dict[str, Any]:
    """The graph as the session store keeps it (edges as EdgeJson)."""
    return {
        "nodes": [_node_json(node) for node in graph.nodes.values()],
        "edges": [_edge_json(edge) for edge in graph.edges],
    }


def _run_mode(run_all: bool) -> queue_items.RunMode:
    return queue_items.RunMode.ALL if run_all else queue_items.RunMode.NEXT


def _retry_waits() -> Iterator[float]:
    """The waits before each retry: doubling from RETRY_FIRST_S up to RETRY_MAX_S."""
    wait = RETRY_FIRST_S
    while True:
        yield wait
        wait = min(wait * 2, RETRY_MAX_S)


async def _nothing() -> None:
    return None


def _node_json(node: GraphNode) -> dict[str, Any]:
    return {"id": node.id, "type": node.type.spec.name, "inputs": dict(node.inputs)}


def _edge_json(edge: Edge) -> EdgeJson:
    return [
        edge.source.node_id,
        edge.source.field,
        edge.destination.node_id,
        edge.destination.field,
    ]


def _failure_json(failure: NodeFailure) -> dict[str, str]:
    cause = "" if failure.cause is None else type(failure.cause).__name__
    return {"error_type": failure.error_type, "error": failure.error, "cause": cause}


def _change(session: Session, unsaved: _Unsaved) -> SessionChange:
    """The runs, nodes and edges noted since the last save, with the status row."""
    state = session.execution.state
    return SessionChange(
        session.id,
        session.status.value,
        session.queue_item_id,
        session.update_time,
        unsaved.nodes,
        unsaved.edges,
        {key: dict(state.results[key].outputs) for key in unsaved.runs if key in state.results},
        {key: _failure_json(state.errors[key]) for key in unsaved.runs if key in state.errors},
    )


def _record(session: Session) -> SessionRecord:
    state = session.execution.state
    return SessionRecord(
        session.id,
        _stored_graph(session.graph),
        {
            "executed": list(state.executed),
            "results": {key: dict(result.outputs) for key, result in state.results.items()},
            "errors": {key: _failure_json(failure) for key, failure in state.errors.items()},
        },
        session.status.value,
        session.queue_item_id,
        session.create_time,
        session.update_time,
    )


def _failure(saved: dict[str, str]) -> NodeFailure:
    """A saved failure with its cause's class (so its status code) restored."""
    cause_class = getattr(error_classes, saved.get("cause", ""), None)
    cause = None
    if isinstance(cause_class, type) and issubclass(cause_class, EaselError):
        cause = cause_class(saved["error"], reason=saved["error_type"])
    return NodeFailure(saved["error_type"], saved["error"], cause)


def _now() -> datetime:
    return datetime.now(UTC)
