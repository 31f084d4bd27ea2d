"""Runs a session's graph: one node at a time, the next ready one (RunMode.NEXT) or every
node that is or becomes ready (RunMode.ALL).

A node's inputs are its direct values and the outputs of the nodes its edges come from.
A node is ready once every node feeding it has finished all its runs successfully, so a
failed node stops only what depends on it: the run goes on with the other branches and
then ends FAILED with the first failure. Cancellation is checked between nodes and handed
to each node through its context.

Fan-out: an iterate runs once per item of its collection, and so does every node
downstream of it until a collect, which gathers one list per run of what lies outside the
iterate, in index order (an empty collection gives []). Each node is expanded into its
runs when it becomes ready, so runs are known only once the collections they range over
are; runs of one node may fail independently, but its dependants wait for all of them.
An iterate whose collection is neither set directly nor connected is not ready: it waits
(pending, the session IDLE) for an edge into its collection, and expands once it has one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from heapq import heapify, heappop, heappush
from typing import Any

from pydantic import BaseModel

from services.common.errors import InvalidArgumentError, OperationCancelledError
from services.invoker.execution.cache import OutputCache
from services.invoker.execution.events import (
    Emit,
    InvocationComplete,
    InvocationError,
    InvocationStarted,
    SessionCancelled,
    SessionComplete,
    SessionError,
)
from services.invoker.execution.state import (
    ExecutionState,
    NodeFailure,
    NodeResult,
    RunMode,
    SettledStatus,
    run_id,
)
from services.invoker.graphs.graph import Edge, Graph, GraphNode
from services.invoker.graphs.readiness import is_ready, newly_ready, ready_nodes, topological_order
from services.invoker.invocations.base import BaseInvocation, BaseOutput
from services.invoker.invocations.context import InvocationContext
from services.invoker.invocations.fields import ImageRef
from services.invoker.invocations.iteration import CollectInvocation, IterateInvocation

ContextFactory = Callable[[str, BaseInvocation, asyncio.Event], InvocationContext]
"""Makes the context of one node run from its run id, the node with the values it runs
with (direct, from edges and defaults) and the run's cancellation event."""

Index = tuple[int, ...]


@dataclass
class _Expansion:
    """A node that became ready: the iterates it lies inside and how its runs went."""

    scope: tuple[str, ...]
    """Ids of the enclosing iterates, outermost first (an iterate's scope ends with itself)."""
    total: int
    started: int = 0
    finished: int = 0
    failed: bool = False


@dataclass(frozen=True)
class RunResult:
    """How a run ended: the session's status after it and, when FAILED by this run, the
    first run that failed."""

    status: SettledStatus
    failed_node_id: str = ""
    failure: NodeFailure | None = None


class _Cancelled(Exception):
    pass


class GraphExecution:
    """The execution of one session's graph across its runs; one run at a time."""

    def __init__(
        self,
        session_id: str,
        graph: Graph,
        context_factory: ContextFactory,
        *,
        cache: OutputCache | None,
        emit: Emit = lambda _event: None,
    ) -> None:
        """`cache` is the invoker's shared node-output cache (on by default, see
        OutputCache); None runs every node."""
        self.session_id = session_id
        self.graph = graph
        self.state = ExecutionState()
        self._context = context_factory
        self._cache = cache
        self._emit = emit
        self._expanded: dict[str, _Expansion] = {}
        self._done: set[str] = set()
        """Nodes whose every run succeeded."""
        self._failed: set[str] = set()
        """Nodes with a failed run (or that could not be expanded)."""
        self._waiting: set[str] = set()
        """Iterates waiting for an edge into their unset collection."""
        self._items: dict[str, dict[Index, int]] = {}
        """Per iterate: the index of each of its runs outside it -> its number of items."""
        self._ready: list[tuple[int, Index, str]] = []
        """Heap of runs ready to go: (node position, index, node id), so runs go in
        topological order, ties broken by the order nodes were added, then by index."""
        self._unreported: list[tuple[str, NodeFailure]] = []
        """Nodes that failed as they became ready (their runs could not be made), to be
        reported by the run in progress or the next one."""
        self._expand(ready_nodes(graph, self._done))

    @property
    def status(self) -> SettledStatus:
        """IDLE while some node can still run (or the graph is empty, or an iterate waits
        for its collection); else FAILED when a node failed (only failed nodes and their
        dependants are left), else COMPLETED."""
        if self._ready or self._waiting or not self.graph.nodes:
            return SettledStatus.IDLE
        return SettledStatus.FAILED if self._failed else SettledStatus.COMPLETED

    @property
    def nothing_to_run(self) -> bool:
        """No run is ready: every node has executed, failed, waits behind a failure or
        waits for an edge into an iterate's collection."""
        return not self._ready

    def ready_ids(self) -> list[str]:
        """Run ids of the ready runs, in the order they will run."""
        return [run_id(node_id, index) for _, index, node_id in sorted(self._ready)]

    def pending_ids(self) -> list[str]:
        """Run ids of every run not executed, not running and not failed, in topological
        order; a node not expanded into its runs yet is listed by its node id."""
        if not self._ready and len(self._expanded) == len(self.graph.nodes):
            return []  # every node expanded and none queued: no need to order the graph
        queued: dict[str, list[Index]] = {}
        for _, index, node_id in sorted(self._ready):
            queued.setdefault(node_id, []).append(index)
        pending: list[str] = []
        for node_id in topological_order(self.graph):
            if node_id in self._expanded:
                pending.extend(run_id(node_id, index) for index in queued.get(node_id, ()))
            else:
                pending.append(node_id)
        return pending

    def node_added(self, node_id: str) -> None:
        """Takes in a node just added to the graph: ready at once if its sources are done
        (so a running ALL run also runs it)."""
        if is_ready(self.graph, node_id, self._done):
            self._expand([node_id])

    def accepts_edge_into(self, node_id: str) -> bool:
        """Whether an edge may still be added into the node: none of its runs has started
        (a node that completed with no runs counts as executed)."""
        expansion = self._expanded.get(node_id)
        return expansion is None or (expansion.started == 0 and expansion.total > 0)

    def edge_added(self, edge: Edge) -> None:
        """Takes in an edge just added: its destination waits for the new source."""
        destination = edge.destination.node_id
        self._waiting.discard(destination)
        if destination in self._expanded:
            del self._expanded[destination]
            self._ready = [entry for entry in self._ready if entry[2] != destination]
            heapify(self._ready)
        self.node_added(destination)

    def restore(
        self,
        results: Mapping[str, Mapping[str, Any]],
        errors: Mapping[str, NodeFailure],
        executed: Sequence[str],
    ) -> None:
        """Brings a new execution of a graph to a saved state (a session loaded after a
        restart) without running a node: each saved run is replayed as it becomes ready,
        its outputs rebuilt from their JSON."""
        replayed = True
        while replayed:
            replayed = False
            for entry in sorted(self._ready):
                _, index, node_id = entry
                this_run = run_id(node_id, index)
                outcome = errors.get(this_run) or results.get(this_run)
                if outcome is not None:
                    self._ready.remove(entry)
                    heapify(self._ready)
                    self._replay(node_id, this_run, outcome)
                    replayed = True
                    break
        self.state.executed = [key for key in executed if key in self.state.results]
        self._unreported = [entry for entry in self._unreported if entry[0] not in errors]

    def _replay(
        self,
        node_id: str,
        this_run: str,
        outcome: Mapping[str, Any] | NodeFailure,
    ) -> None:
        """Records a saved run: its failure, or its outputs (JSON)."""
        expansion = self._expanded[node_id]
        expansion.started += 1
        expansion.finished += 1
        if isinstance(outcome, NodeFailure):
            self.state.errors[this_run] = outcome
            expansion.failed = True
            self._failed.add(node_id)
            return
        output = self.graph.nodes[node_id].type.spec.output_class.model_validate(outcome)
        self.state.results[this_run] = NodeResult(node_id, output, dict(outcome), False)
        if expansion.finished == expansion.total and not expansion.failed:
            self._complete(node_id)

    async def run(
        self,
        mode: RunMode = RunMode.ALL,
        *,
        cancelled: asyncio.Event | None = None,
        queue_item_id: int = 0,
    ) -> RunResult:
        """Runs the next ready node or all of them, then emits the terminal event."""
        if cancelled is None:
            cancelled = asyncio.Event()
        failures = self._report_unreported(queue_item_id)
        try:
            while self._ready:
                if cancelled.is_set():
                    raise _Cancelled
                failed = await self._run_next(cancelled, queue_item_id)
                if failed is not None:
                    failures.append(failed)
                failures.extend(self._report_unreported(queue_item_id))
                if mode is RunMode.NEXT:
                    break
        except _Cancelled:
            self._emit(SessionCancelled(self.session_id, queue_item_id))
            return RunResult(SettledStatus.CANCELLED)
        if failures:
            node_id, failure = failures[0]
            self._emit(SessionError(self.session_id, queue_item_id, node_id, failure))
            return RunResult(SettledStatus.FAILED, node_id, failure)
        status = self.status
        self._emit(SessionComplete(self.session_id, queue_item_id, status))
        return RunResult(status)

    def _report_unreported(self, queue_item_id: int) -> list[tuple[str, NodeFailure]]:
        """Emits the failures of nodes whose runs could not be made, for this run to end
        FAILED with them."""
        reported, self._unreported = self._unreported, []
        for node_id, failure in reported:
            type_name = self.graph.nodes[node_id].type.spec.name
            self._emit(InvocationError(self.session_id, queue_item_id, node_id, type_name, failure))
        return reported

    async def _run_next(
        self, cancelled: asyncio.Event, queue_item_id: int
    ) -> tuple[str, NodeFailure] | None:
        """Runs the first ready run; returns its id and failure when it failed."""
        entry = heappop(self._ready)
        _, index, node_id = entry
        node = self.graph.nodes[node_id]
        expansion = self._expanded[node_id]
        expansion.started += 1
        this_run = run_id(node_id, index)
        type_name = node.type.spec.name
        self.state.running = this_run
        self._emit(InvocationStarted(self.session_id, queue_item_id, this_run, type_name))
        try:
            output, cache_hit = await self._compute(node, index, this_run, cancelled)
        except asyncio.CancelledError:
            self._requeue(entry, expansion)
            raise
        except Exception as exc:
            if cancelled.is_set() and isinstance(exc, OperationCancelledError):
                self._requeue(entry, expansion)
                raise _Cancelled from exc
            failure = NodeFailure.of(exc)
            self.state.errors[this_run] = failure
            expansion.finished += 1
            expansion.failed = True
            self._failed.add(node_id)
            self._emit(
                InvocationError(self.session_id, queue_item_id, this_run, type_name, failure)
            )
            return this_run, failure
        finally:
            self.state.running = ""
        outputs = output.model_dump(mode="json")
        self.state.results[this_run] = NodeResult(node_id, output, outputs, cache_hit)
        self.state.executed.append(this_run)
        self._emit(
            InvocationComplete(
                self.session_id,
                queue_item_id,
                this_run,
                type_name,
                output.output_type,
                outputs,
                cache_hit,
            )
        )
        expansion.finished += 1
        if expansion.finished == expansion.total and not expansion.failed:
            self._complete(node_id)
        return None

    async def _compute(
        self, node: GraphNode, index: Index, this_run: str, cancelled: asyncio.Event
    ) -> tuple[Any, bool]:
        """The node's output for one run, from the cache when it may and can be: the key
        is taken once the node has resolved its inputs, and a hit counts only while the
        images it names are still stored."""
        values = self._inputs(node, index)
        if issubclass(node.type.cls, IterateInvocation):
            values["index"] = index[-1]
        invocation = node.type.cls.model_validate(values)
        context = self._context(this_run, invocation, cancelled)
        await invocation.resolve(context)
        key = OutputCache.key(invocation) if self._cache is not None else None
        if key is not None and self._cache is not None:
            cached = self._cache.get(key)
            if cached is not None and await _images_exist(cached, context):
                return cached, True
        output = await invocation.invoke(context)
        if key is not None and self._cache is not None:
            self._cache.put(key, output)
        return output, False

    def _requeue(self, entry: tuple[int, Index, str], expansion: _Expansion) -> None:
        """Puts back a run that was interrupted: it runs again in the next run."""
        expansion.started -= 1
        heappush(self._ready, entry)

    def _complete(self, node_id: str) -> None:
        self._done.add(node_id)
        self._expand(newly_ready(self.graph, node_id, self._done))

    def _expand(self, node_ids: Iterable[str]) -> None:
        """Turns nodes that became ready into their runs; a node with no runs (inside an
        empty fan-out) completes at once and may make others ready in turn."""
        work = list(node_ids)
        while work:
            node_id = work.pop()
            if node_id in self._expanded:
                continue
            if self._awaits_collection(self.graph.nodes[node_id]):
                self._waiting.add(node_id)
                continue
            try:
                scope, indexes = self._runs(self.graph.nodes[node_id])
            except Exception as exc:
                self._expanded[node_id] = _Expansion((), 0, failed=True)
                self._failed.add(node_id)
                failure = NodeFailure.of(exc)
                self.state.errors[node_id] = failure
                self._unreported.append((node_id, failure))
                continue
            self._expanded[node_id] = _Expansion(scope, len(indexes))
            position = self.graph.position(node_id)
            for index in indexes:
                heappush(self._ready, (position, index, node_id))
            if not indexes:
                self._done.add(node_id)
                work.extend(newly_ready(self.graph, node_id, self._done))

    def _awaits_collection(self, node: GraphNode) -> bool:
        """An iterate with neither a collection set nor an edge into it: it has no items
        yet, rather than an empty list of them."""
        return (
            issubclass(node.type.cls, IterateInvocation)
            and "collection" not in node.inputs
            and "collection" not in self.graph.incoming(node.id)
        )

    def _runs(self, node: GraphNode) -> tuple[tuple[str, ...], list[Index]]:
        """The scope of a node whose sources are done, and the indexes of its runs."""
        scopes = [
            self._source_scope(node, name, edge)
            for name, edge in self.graph.incoming(node.id).items()
        ]
        scope = max(scopes, key=len, default=())
        if any(scope[: len(other)] != other for other in scopes):
            raise InvalidArgumentError(
                f"node {node.id!r} takes inputs from the items of different iterates",
                reason="ITERATION_MISMATCH",
                metadata={"node_id": node.id},
            )
        outer = self._indexes(scope)
        if not issubclass(node.type.cls, IterateInvocation):
            return scope, outer
        counts: dict[Index, int] = {}
        indexes: list[Index] = []
        for index in outer:
            total = len(self._inputs(node, index).get("collection", ()))
            counts[index] = total
            indexes.extend((*index, item) for item in range(total))
        self._items[node.id] = counts
        return (*scope, node.id), indexes

    def _source_scope(self, node: GraphNode, name: str, edge: Edge) -> tuple[str, ...]:
        """The scope an edge brings: a collect's item edge closes the innermost iterate."""
        scope = self._expanded[edge.source.node_id].scope
        if name == "item" and scope and issubclass(node.type.cls, CollectInvocation):
            return scope[:-1]
        return scope

    def _indexes(self, scope: tuple[str, ...]) -> list[Index]:
        """Every index of a scope, in order: one entry per item of each iterate in it."""
        indexes: list[Index] = [()]
        for iterate_id in scope:
            counts = self._items[iterate_id]
            indexes = [(*index, item) for index in indexes for item in range(counts.get(index, 0))]
        return indexes

    def _inputs(self, node: GraphNode, index: Index) -> dict[str, Any]:
        """The node's input values for the run at `index`: direct values, then the outputs
        of the matching runs of its sources (for a collect's item edge: every item of the
        closed iterate, appended to `collection`)."""
        values: dict[str, Any] = dict(node.inputs)
        collected: list[Any] | None = None
        for name, edge in self.graph.incoming(node.id).items():
            source_scope = self._expanded[edge.source.node_id].scope
            if name == "item" and source_scope and issubclass(node.type.cls, CollectInvocation):
                outer = index[: len(source_scope) - 1]
                total = self._items[source_scope[-1]].get(outer, 0)
                collected = [self._value(edge, (*outer, item)) for item in range(total)]
            else:
                values[name] = self._value(edge, index[: len(source_scope)])
        if collected is not None:
            values["collection"] = [*values.get("collection", ()), *collected]
        return values

    def _value(self, edge: Edge, index: Index) -> Any:
        result = self.state.results[run_id(edge.source.node_id, index)]
        return getattr(result.output, edge.source.field)


async def _images_exist(output: BaseOutput, context: InvocationContext) -> bool:
    """Whether every image an output names (in lists and nested values too) is stored."""
    found: list[ImageRef] = []
    pending: list[Any] = [output]
    while pending:
        value = pending.pop()
        if isinstance(value, ImageRef):
            found.append(value)
        elif isinstance(value, BaseModel):
            pending.extend(getattr(value, name) for name in type(value).model_fields)
        elif isinstance(value, list | tuple):
            pending.extend(value)
        elif isinstance(value, dict):
            pending.extend(value.values())
    for image in found:
        if not await context.images.exists(image):
            return False
    return True
