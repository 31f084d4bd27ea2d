"""Running session graphs: the run modes and history, error isolation and the statuses it
leaves, NOTHING_TO_RUN, iterate/collect fan-out, the node-output cache, cancellation, the
events of a whole run and a large graph."""

from __future__ import annotations

import asyncio
import sys
from typing import Any, ClassVar

import pytest

from services.common.model_taxonomy import ModelType
from services.invoker.execution.cache import OutputCache
from services.invoker.execution.events import (
    ExecutionEvent,
    InvocationComplete,
    InvocationError,
    InvocationStarted,
    SessionCancelled,
    SessionComplete,
    SessionError,
)
from services.invoker.execution.executor import GraphExecution, RunResult
from services.invoker.execution.state import NODE_FAILED, RunMode, SettledStatus
from services.invoker.graphs.graph import Edge, FieldRef, Graph, NodeSpec
from services.invoker.invocations import arithmetic, iteration, primitives
from services.invoker.invocations.base import BaseInvocation, InputField
from services.invoker.invocations.context import InvocationContext
from services.invoker.invocations.fields import ImageRef, ModelRef
from services.invoker.invocations.image_ops import ImageWithSizeOutput
from services.invoker.invocations.primitives import IntegerOutput, ModelOutput
from services.invoker.invocations.registry import InvocationRegistry, node_types


class FailInvocation(BaseInvocation):
    """Fails with a ValueError, whatever its input."""

    invocation_type: ClassVar[str] = "fail"
    value: int = InputField(0, description="Ignored.")

    async def invoke(self, context: InvocationContext) -> IntegerOutput:
        raise ValueError(f"cannot take {self.value}")


class CountedInvocation(BaseInvocation):
    """Doubles its input and counts how often it was computed."""

    invocation_type: ClassVar[str] = "counted"
    value: int = InputField(0, description="The number doubled.")
    computed: ClassVar[list[int]] = []

    async def invoke(self, context: InvocationContext) -> IntegerOutput:
        CountedInvocation.computed.append(self.value)
        return IntegerOutput(value=2 * self.value)


class AwaitCancelInvocation(BaseInvocation):
    """Waits until its run is cancelled, as a long node checking its context would."""

    invocation_type: ClassVar[str] = "await_cancel"
    cacheable: ClassVar[bool] = False
    value: int = InputField(0, description="Passed on.")

    async def invoke(self, context: InvocationContext) -> IntegerOutput:
        await context.cancelled.wait()
        context.raise_if_cancelled()
        return IntegerOutput(value=self.value)


class DefaultModelInvocation(BaseInvocation):
    """Names the main model it runs with: the one given, else the default at run time."""

    invocation_type: ClassVar[str] = "default_model"
    model: ModelRef | None = InputField(None, description="Main model; empty: the default.")
    computed: ClassVar[list[str]] = []

    async def resolve(self, context: InvocationContext) -> None:
        self.model = ModelRef(key=await context.model_key("model", self.model, ModelType.MAIN))

    async def invoke(self, context: InvocationContext) -> ModelOutput:
        key = await context.model_key("model", self.model, ModelType.MAIN)
        DefaultModelInvocation.computed.append(key)
        return ModelOutput(model=ModelRef(key=key))


class MakeImageInvocation(BaseInvocation):
    """Stores a new image of `side` x `side` pixels (as image nodes do) and names it."""

    invocation_type: ClassVar[str] = "make_image"
    side: int = InputField(8, description="Width and height.")

    async def invoke(self, context: InvocationContext) -> ImageWithSizeOutput:
        image = await context.images.save_png(b"png")
        return ImageWithSizeOutput(image=image, width=self.side, height=self.side)


REGISTRY = InvocationRegistry(
    node_type
    for module, source in [
        (arithmetic, arithmetic.__name__),
        (primitives, primitives.__name__),
        (iteration, iteration.__name__),
        (sys.modules[__name__], "tests"),
    ]
    for node_type in node_types(module, source)
)


def node(node_id: str, type_name: str, **inputs: Any) -> NodeSpec:
    return NodeSpec(node_id, type_name, inputs)


def edge(source: str, destination: str) -> Edge:
    """An edge from "node.field" to "node.field"."""
    source_node, source_field = source.split(".")
    destination_node, destination_field = destination.split(".")
    return Edge(FieldRef(source_node, source_field), FieldRef(destination_node, destination_field))


def context(node_id: str, node: BaseInvocation, cancelled: asyncio.Event) -> InvocationContext:
    """A context for nodes that use none of its services."""
    return InvocationContext(
        session_id="session",
        node_id=node_id,
        images=None,  # type: ignore[arg-type]
        inference=None,  # type: ignore[arg-type]
        models=None,  # type: ignore[arg-type]
        progress=lambda step, total, message="": None,
        cancelled=cancelled,
    )


def execution(
    nodes: list[NodeSpec],
    edges: list[Edge] = (),  # type: ignore[assignment]
    *,
    cache: OutputCache | None = None,
    events: list[ExecutionEvent] | None = None,
) -> GraphExecution:
    graph = Graph.build(REGISTRY, nodes, list(edges))
    emit = events.append if events is not None else (lambda _event: None)
    return GraphExecution("session", graph, context, cache=cache, emit=emit)


def value(run: GraphExecution, run_id: str, field: str = "value") -> Any:
    return run.state.results[run_id].outputs[field]


def chain() -> GraphExecution:
    """a = 2; b = a + 3; c = b * 4."""
    return execution(
        [node("a", "integer", value=2), node("b", "add", b=3), node("c", "mul", b=4)],
        [edge("a.value", "b.a"), edge("b.value", "c.a")],
    )


def two_branches() -> GraphExecution:
    """x -> bad (fails) -> after; y -> double -> triple, independent of x's branch."""
    return execution(
        [
            node("x", "integer", value=1),
            node("bad", "fail"),
            node("after", "add", b=1),
            node("y", "integer", value=5),
            node("double", "mul", b=2),
            node("triple", "mul", b=3),
        ],
        [
            edge("x.value", "bad.value"),
            edge("bad.value", "after.a"),
            edge("y.value", "double.a"),
            edge("double.value", "triple.a"),
        ],
    )


async def test_run_next_runs_one_node_and_all_runs_the_rest():
    run = chain()
    assert run.status is SettledStatus.IDLE
    assert run.ready_ids() == ["a"]
    assert run.pending_ids() == ["a", "b", "c"]

    result = await run.run(RunMode.NEXT)

    assert result == RunResult(SettledStatus.IDLE)
    assert run.state.executed == ["a"]
    assert run.ready_ids() == ["b"]
    assert run.pending_ids() == ["b", "c"]

    result = await run.run(RunMode.ALL)

    assert result == RunResult(SettledStatus.COMPLETED)
    assert run.state.executed == ["a", "b", "c"]
    assert value(run, "c") == 20
    assert run.nothing_to_run
    assert run.pending_ids() == []


async def test_history_links_name_runs_in_the_order_they_finished():
    run = chain()
    await run.run(RunMode.ALL)

    run.graph.add_node(
        node("d", "add", b=1),
        [Edge(FieldRef("-1", "value"), FieldRef("", "a"))],
        history=run.state.executed,
    )
    run.node_added("d")
    assert run.status is SettledStatus.IDLE

    await run.run(RunMode.NEXT)

    assert value(run, "d") == 21
    assert run.state.executed[-1] == "d"
    assert run.status is SettledStatus.COMPLETED


async def test_a_failed_node_blocks_only_its_dependants():
    run = two_branches()

    result = await run.run(RunMode.ALL)

    assert result.status is SettledStatus.FAILED
    assert result.failed_node_id == "bad"
    assert result.failure is not None
    assert result.failure.error_type == NODE_FAILED
    assert result.failure.error == "ValueError: cannot take 1"
    assert value(run, "triple") == 30
    assert set(run.state.errors) == {"bad"}
    assert "after" not in run.state.results
    assert run.pending_ids() == ["after"]
    assert run.status is SettledStatus.FAILED
    assert run.nothing_to_run


async def test_a_session_with_only_a_failure_and_its_dependants_left_is_failed():
    run = two_branches()

    first = await run.run(RunMode.NEXT)
    assert first.status is SettledStatus.IDLE  # x ran
    failed = await run.run(RunMode.NEXT)
    assert failed.status is SettledStatus.FAILED
    assert failed.failed_node_id == "bad"
    assert run.status is SettledStatus.IDLE  # y's branch can still run
    assert not run.nothing_to_run

    rest = await run.run(RunMode.ALL)

    assert rest.status is SettledStatus.FAILED
    assert rest.failure is None  # the run itself succeeded
    assert run.state.executed == ["x", "y", "double", "triple"]
    assert run.nothing_to_run


async def test_a_node_added_behind_a_failed_node_leaves_nothing_to_run():
    run = two_branches()
    await run.run(RunMode.ALL)

    run.graph.add_node(node("later", "add"), [edge("after.value", "later.a")])
    run.node_added("later")

    assert run.nothing_to_run
    assert run.status is SettledStatus.FAILED


async def test_an_empty_graph_is_idle_with_nothing_to_run():
    run = execution([])
    assert run.status is SettledStatus.IDLE
    assert run.nothing_to_run


def fan_out(stop: int) -> GraphExecution:
    """range(0, stop) -> iterate -> x10 -> +1 -> collect."""
    return execution(
        [
            node("range", "range", start=0, stop=stop),
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
        ],
    )


async def test_nodes_after_an_iterate_run_once_per_item_and_collect_gathers_them():
    run = fan_out(3)

    result = await run.run(RunMode.ALL)

    assert result.status is SettledStatus.COMPLETED
    assert value(run, "collect", "collection") == [1, 11, 21]
    assert [value(run, f"plus#{index}") for index in range(3)] == [1, 11, 21]
    assert run.state.executed == [
        "range",
        "iterate#0",
        "iterate#1",
        "iterate#2",
        "times#0",
        "times#1",
        "times#2",
        "plus#0",
        "plus#1",
        "plus#2",
        "collect",
    ]


async def test_an_iterate_with_no_collection_yet_waits_for_an_edge_into_it():
    run = execution(
        [node("it", "iterate"), node("times", "mul", b=10), node("other", "integer", value=1)],
        [edge("it.item", "times.a")],
    )
    await run.run(RunMode.ALL)

    assert run.state.executed == ["other"]
    assert run.pending_ids() == ["it", "times"]
    assert run.status is SettledStatus.IDLE
    assert run.nothing_to_run
    assert run.accepts_edge_into("it")

    run.graph.add_node(node("range", "range", start=0, stop=2), [])
    run.node_added("range")
    run.edge_added(run.graph.add_edge(edge("range.collection", "it.collection")))
    result = await run.run(RunMode.ALL)

    assert result.status is SettledStatus.COMPLETED
    assert value(run, "times#0") == 0
    assert value(run, "times#1") == 10


async def test_an_empty_collection_collects_nothing():
    run = fan_out(0)

    result = await run.run(RunMode.ALL)

    assert result.status is SettledStatus.COMPLETED
    assert value(run, "collect", "collection") == []
    assert run.state.executed == ["range", "collect"]


async def test_nested_iterates_key_runs_by_every_index():
    run = execution(
        [
            node("outer", "iterate", collection=[1, 2]),
            node("inner_range", "range", start=0),
            node("inner", "iterate"),
            node("inner_collect", "collect"),
            node("outer_collect", "collect"),
        ],
        [
            edge("outer.item", "inner_range.stop"),
            edge("inner_range.collection", "inner.collection"),
            edge("inner.item", "inner_collect.item"),
            edge("inner_collect.collection", "outer_collect.item"),
        ],
    )

    await run.run(RunMode.ALL)

    assert value(run, "outer_collect", "collection") == [[0], [0, 1]]
    assert value(run, "inner#1#1", "item") == 1
    assert {"inner#0#0", "inner#1#0", "inner#1#1"} <= set(run.state.results)


async def test_equal_inputs_hit_the_cache_across_executions():
    CountedInvocation.computed.clear()
    cache = OutputCache()
    nodes = [node("a", "integer", value=4), node("double", "counted")]
    edges = [edge("a.value", "double.value")]
    first_events: list[ExecutionEvent] = []
    second_events: list[ExecutionEvent] = []
    first = execution(nodes, edges, cache=cache, events=first_events)
    second = execution(nodes, edges, cache=cache, events=second_events)

    await first.run(RunMode.ALL)
    await second.run(RunMode.ALL)

    assert CountedInvocation.computed == [4]
    assert value(second, "double") == 8
    assert second.state.results["double"].cache_hit
    assert not first.state.results["double"].cache_hit
    hits = {e.node_id: e.cache_hit for e in second_events if isinstance(e, InvocationComplete)}
    assert hits == {"a": True, "double": True}


async def test_a_changed_edge_value_is_computed_again():
    CountedInvocation.computed.clear()
    cache = OutputCache()
    for number in (4, 5):
        run = execution(
            [node("a", "integer", value=number), node("double", "counted")],
            [edge("a.value", "double.value")],
            cache=cache,
        )
        await run.run(RunMode.ALL)
    assert CountedInvocation.computed == [4, 5]


class Services:
    """The default main model and the stored images, as the model manager and the image
    store would have them, for nodes that use them."""

    def __init__(self) -> None:
        self.default_main = ""
        self.images: set[str] = set()
        self.saved = 0

    async def default_key(self, field: str, model_type: ModelType) -> str:
        return self.default_main

    async def save_png(self, png: bytes, **options: Any) -> ImageRef:
        self.saved += 1
        name = f"image-{self.saved}.png"
        self.images.add(name)
        return ImageRef(image_name=name)

    async def exists(self, image: ImageRef) -> bool:
        return image.image_name in self.images

    def execution(self, nodes: list[NodeSpec], cache: OutputCache) -> GraphExecution:
        def make(node_id: str, node: BaseInvocation, cancelled: asyncio.Event) -> InvocationContext:
            return InvocationContext(
                session_id="session",
                node_id=node_id,
                images=self,
                inference=None,  # type: ignore[arg-type]
                models=self,  # type: ignore[arg-type]
                progress=lambda step, total, message="": None,
                cancelled=cancelled,
            )

        return GraphExecution("session", Graph.build(REGISTRY, nodes, []), make, cache=cache)


async def test_an_empty_model_input_is_cached_under_the_default_it_takes():
    DefaultModelInvocation.computed.clear()
    services, cache = Services(), OutputCache()
    nodes = [node("m", "default_model")]
    services.default_main = "first"
    await services.execution(nodes, cache).run(RunMode.ALL)
    services.default_main = "second"  # the default changed: the same graph means another model
    changed = services.execution(nodes, cache)
    await changed.run(RunMode.ALL)
    again = services.execution(nodes, cache)
    await again.run(RunMode.ALL)

    assert value(changed, "m", "model") == {"key": "second"}
    assert not changed.state.results["m"].cache_hit
    assert again.state.results["m"].cache_hit
    assert DefaultModelInvocation.computed == ["first", "second"]


async def test_a_cached_output_naming_a_deleted_image_is_computed_again():
    services, cache = Services(), OutputCache()
    nodes = [node("i", "make_image", side=8)]
    first = services.execution(nodes, cache)
    await first.run(RunMode.ALL)
    made = value(first, "i", "image")["image_name"]
    hit = services.execution(nodes, cache)
    await hit.run(RunMode.ALL)
    assert hit.state.results["i"].cache_hit

    services.images.discard(made)  # the image was deleted
    again = services.execution(nodes, cache)
    await again.run(RunMode.ALL)

    assert not again.state.results["i"].cache_hit
    remade = value(again, "i", "image")["image_name"]
    assert remade != made
    assert remade in services.images


async def test_random_nodes_are_never_cached():
    cache = OutputCache()
    runs = [execution([node("r", "rand_int", low=0, high=10)], cache=cache) for _ in range(2)]
    for run in runs:
        await run.run(RunMode.ALL)
    assert not any(run.state.results["r"].cache_hit for run in runs)
    assert len(cache) == 0


async def test_the_cache_keeps_only_its_most_recent_entries():
    CountedInvocation.computed.clear()
    cache = OutputCache(max_entries=1)
    for number in (1, 2, 1):
        await execution([node("d", "counted", value=number)], cache=cache).run(RunMode.ALL)
    assert CountedInvocation.computed == [1, 2, 1]
    assert len(cache) == 1


async def test_cancellation_stops_the_run_between_nodes():
    cancelled = asyncio.Event()
    events: list[ExecutionEvent] = []

    def cancel_after_first(event: ExecutionEvent) -> None:
        events.append(event)
        if isinstance(event, InvocationComplete):
            cancelled.set()

    graph = Graph.build(
        REGISTRY,
        [node("a", "integer", value=2), node("b", "add", b=3)],
        [edge("a.value", "b.a")],
    )
    run = GraphExecution("session", graph, context, cache=None, emit=cancel_after_first)

    result = await run.run(RunMode.ALL, cancelled=cancelled)

    assert result.status is SettledStatus.CANCELLED
    assert run.state.executed == ["a"]
    assert isinstance(events[-1], SessionCancelled)
    assert run.ready_ids() == ["b"]
    assert (await run.run(RunMode.ALL)).status is SettledStatus.COMPLETED


async def test_a_node_sees_the_cancellation_through_its_context():
    cancelled = asyncio.Event()

    def cancel_when_waiting(event: ExecutionEvent) -> None:
        if isinstance(event, InvocationStarted) and event.node_id == "wait":
            cancelled.set()

    graph = Graph.build(REGISTRY, [node("wait", "await_cancel", value=7)], [])
    run = GraphExecution("session", graph, context, cache=None, emit=cancel_when_waiting)

    result = await run.run(RunMode.ALL, cancelled=cancelled)

    assert result.status is SettledStatus.CANCELLED
    assert run.state.errors == {}
    assert run.ready_ids() == ["wait"]  # it runs again in the next run


async def test_the_events_of_a_whole_run_come_in_order():
    events: list[ExecutionEvent] = []
    run = execution(
        [node("a", "integer", value=1), node("bad", "fail"), node("b", "add", b=1)],
        [edge("a.value", "bad.value"), edge("a.value", "b.a")],
        events=events,
    )

    await run.run(RunMode.ALL, queue_item_id=7)

    assert [(type(event), getattr(event, "node_id", "")) for event in events] == [
        (InvocationStarted, "a"),
        (InvocationComplete, "a"),
        (InvocationStarted, "bad"),
        (InvocationError, "bad"),
        (InvocationStarted, "b"),
        (InvocationComplete, "b"),
        (SessionError, "bad"),
    ]
    assert all(event.queue_item_id == 7 and event.session_id == "session" for event in events)
    complete = events[1]
    assert isinstance(complete, InvocationComplete)
    assert (complete.type, complete.output_type, complete.outputs) == (
        "integer",
        "integer_output",
        {"value": 1},
    )


async def test_a_successful_run_ends_with_session_complete():
    events: list[ExecutionEvent] = []
    run = execution([node("a", "integer", value=1)], events=events)
    await run.run(RunMode.ALL)
    assert events[-1] == SessionComplete("session", 0, SettledStatus.COMPLETED)


async def test_an_edge_into_a_node_that_has_not_started_makes_it_wait():
    run = execution([node("a", "integer", value=2), node("b", "add", b=1)])
    assert run.ready_ids() == ["a", "b"]
    assert run.accepts_edge_into("b")

    new_edge = run.graph.add_edge(edge("a.value", "b.a"))
    run.edge_added(new_edge)

    assert run.ready_ids() == ["a"]
    await run.run(RunMode.ALL)
    assert value(run, "b") == 3
    assert not run.accepts_edge_into("b")


async def test_a_500_node_graph_runs():
    nodes = [node("n0", "integer", value=0)]
    nodes += [node(f"n{index}", "add", b=1) for index in range(1, 500)]
    edges = [edge(f"n{index - 1}.value", f"n{index}.a") for index in range(1, 500)]
    run = execution(nodes, edges)

    result = await run.run(RunMode.ALL)

    assert result.status is SettledStatus.COMPLETED
    assert len(run.state.executed) == 500
    assert value(run, "n499") == 499


@pytest.mark.parametrize("stop", [3, 0])
async def test_fan_out_runs_run_one_at_a_time_in_next_mode(stop: int):
    run = fan_out(stop)
    steps = 0
    while not run.nothing_to_run:
        await run.run(RunMode.NEXT)
        steps += 1
    assert steps == len(run.state.executed) == 3 * stop + 2
    assert value(run, "collect", "collection") == [10 * item + 1 for item in range(stop)]


async def test_a_node_fed_by_two_different_iterates_fails_and_says_why():
    events: list[ExecutionEvent] = []
    run = execution(
        [
            node("first", "iterate", collection=[1, 2]),
            node("second", "iterate", collection=[3, 4]),
            node("sum", "add"),
        ],
        [edge("first.item", "sum.a"), edge("second.item", "sum.b")],
        events=events,
    )

    result = await run.run(RunMode.ALL)

    assert result.status is SettledStatus.FAILED
    assert result.failed_node_id == "sum"
    assert result.failure is not None
    assert result.failure.error_type == "ITERATION_MISMATCH"
    assert [type(event) for event in events[-2:]] == [InvocationError, SessionError]
    assert run.status is SettledStatus.FAILED


async def test_a_node_added_during_an_all_run_runs_in_it():
    graph = Graph.build(REGISTRY, [node("a", "integer", value=2)], [])

    def add_after_a(event: ExecutionEvent) -> None:
        if isinstance(event, InvocationComplete) and event.node_id == "a":
            graph.add_node(node("b", "add", b=5), [edge("a.value", "b.a")])
            run.node_added("b")

    run = GraphExecution("session", graph, context, cache=None, emit=add_after_a)

    result = await run.run(RunMode.ALL)

    assert result.status is SettledStatus.COMPLETED
    assert value(run, "b") == 7


async def test_each_run_of_a_fan_out_gets_its_run_id_in_its_context():
    seen: list[str] = []

    def recording(
        node_id: str, node: BaseInvocation, cancelled: asyncio.Event
    ) -> InvocationContext:
        seen.append(node_id)
        return context(node_id, node, cancelled)

    graph = Graph.build(
        REGISTRY,
        [node("it", "iterate", collection=[5, 6]), node("twice", "mul", b=2)],
        [edge("it.item", "twice.a")],
    )
    await GraphExecution("session", graph, recording, cache=None).run(RunMode.ALL)

    assert seen == ["it#0", "it#1", "twice#0", "twice#1"]
