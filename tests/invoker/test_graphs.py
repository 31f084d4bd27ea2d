"""Session graphs: whole-graph validation, adding nodes with named, history and "*" links,
adding edges, the generic item type of iterate and collect, readiness, and the cost of an
addition. Every refused change is checked to leave the graph as it was."""

from __future__ import annotations

import sys
from functools import partial
from typing import Any, ClassVar

import pytest
from google.protobuf import json_format

from services.common.errors import AlreadyExistsError, EaselError, InvalidArgumentError
from services.invoker import session_convert
from services.invoker.graphs.graph import Edge, FieldRef, Graph, NodeSpec
from services.invoker.graphs.readiness import (
    newly_ready,
    ready_nodes,
    topological_order,
)
from services.invoker.invocations import arithmetic, iteration, primitives, strings
from services.invoker.invocations.base import (
    BaseInvocation,
    BaseOutput,
    InputField,
    InputKind,
    OutputField,
)
from services.invoker.invocations.context import InvocationContext
from services.invoker.invocations.registry import InvocationRegistry, node_types


class PairOutput(BaseOutput):
    output_type: ClassVar[str] = "pair_output"
    a: int = OutputField(description="First.")
    b: int = OutputField(description="Second.")
    label: str = OutputField(description="A name.")


class PairInvocation(BaseInvocation):
    """Two integers and a label."""

    invocation_type: ClassVar[str] = "pair"
    a: int = InputField(1, description="First.")
    b: int = InputField(2, description="Second.")

    async def invoke(self, context: InvocationContext) -> PairOutput:
        return PairOutput(a=self.a, b=self.b, label="pair")


class ScaledInvocation(BaseInvocation):
    """Takes a by value or edge, b only by value, and a float label."""

    invocation_type: ClassVar[str] = "scaled"
    a: int = InputField(0, description="Connectable.")
    b: int = InputField(0, kind=InputKind.DIRECT, description="Direct only.")
    label: float = InputField(0.0, description="Of another type than pair's label.")

    async def invoke(self, context: InvocationContext) -> PairOutput:
        return PairOutput(a=self.a * self.b, b=self.b, label=str(self.label))


REGISTRY = InvocationRegistry(
    node_type
    for module, source in [
        (arithmetic, arithmetic.__name__),
        (primitives, primitives.__name__),
        (iteration, iteration.__name__),
        (strings, strings.__name__),
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


def link(source: str, field: str) -> Edge:
    """An AddNode link from "node.field" into the new node's `field`."""
    source_node, source_field = source.split(".")
    return Edge(FieldRef(source_node, source_field), FieldRef("", field))


def snapshot(graph: Graph) -> tuple:
    """Everything a refused change must leave as it was, the generic bindings included."""
    return (
        {node_id: (n.type.spec.name, dict(n.inputs)) for node_id, n in graph.nodes.items()},
        graph.edges,
        {node_id: dict(graph.incoming(node_id)) for node_id in graph.nodes},
        {node_id: graph.outgoing(node_id) for node_id in graph.nodes},
        {
            (node_id, spec.name): graph.field_type(node_id, spec.name, output=True)
            for node_id, n in graph.nodes.items()
            for spec in n.type.spec.outputs
        },
    )


def refused(
    error: type[EaselError], reason: str, field: str | None, graph: Graph, change
) -> EaselError:
    """Runs a change that must fail with `reason` (naming `field`) and change nothing."""
    before = snapshot(graph)
    with pytest.raises(error) as caught:
        change()
    assert caught.value.reason == reason
    if field is not None:
        assert isinstance(caught.value, InvalidArgumentError)
        assert caught.value.violations[0].field == field
    assert snapshot(graph) == before
    return caught.value


def build(nodes: list[NodeSpec], edges: list[Edge] = ()) -> Graph:
    return Graph.build(REGISTRY, nodes, list(edges))


@pytest.fixture
def graph() -> Graph:
    """A session graph: two integers, their sum, and an iterate over an open list."""
    return build(
        [
            node("x", "integer", value=2),
            node("y", "integer", value=3),
            node("sum", "add"),
            node("it", "iterate", collection=[1, 2]),
        ],
        [edge("x.value", "sum.a"), edge("y.value", "sum.b")],
    )


# Whole graphs (CreateSession).


def test_a_valid_graph_keeps_its_nodes_edges_and_values():
    g = build(
        [node("r", "range", start=0, stop=3), node("it", "iterate"), node("m", "mul", b=10)],
        [edge("r.collection", "it.collection"), edge("it.item", "m.a")],
    )
    assert list(g.nodes) == ["r", "it", "m"]
    assert dict(g.nodes["m"].inputs) == {"b": 10}
    assert g.edges == (edge("r.collection", "it.collection"), edge("it.item", "m.a"))
    assert g.incoming("m") == {"a": edge("it.item", "m.a")}
    assert g.field_type("it", "item", output=True) == "integer"


BAD_GRAPHS = [
    pytest.param([node("-1", "add")], [], "INVALID_NODE_ID", "graph.nodes[0].id", id="dash"),
    pytest.param([node("", "add")], [], "INVALID_NODE_ID", "graph.nodes[0].id", id="empty"),
    pytest.param([node("a#1", "add")], [], "INVALID_NODE_ID", "graph.nodes[0].id", id="hash"),
    pytest.param([node("a" * 129, "add")], [], "INVALID_NODE_ID", "graph.nodes[0].id", id="long"),
    pytest.param(
        [node("a", "add"), node("a", "mul")],
        [],
        "DUPLICATE_NODE_ID",
        "graph.nodes[1].id",
        id="duplicate",
    ),
    pytest.param(
        [node("a", "nope")], [], "UNKNOWN_INVOCATION_TYPE", "graph.nodes[0].type", id="type"
    ),
    pytest.param(
        [node("a", "add", c=1)], [], "UNKNOWN_FIELD", "graph.nodes[0].inputs.c", id="input"
    ),
    pytest.param(
        [node("a", "add", a="two")],
        [],
        "INVALID_INPUT_VALUE",
        "graph.nodes[0].inputs.a",
        id="value",
    ),
    pytest.param(
        [node("a", "iterate", index=-1)],
        [],
        "INVALID_INPUT_VALUE",
        "graph.nodes[0].inputs.index",
        id="constraint",
    ),
    pytest.param(
        [node("c", "collect", item=1)],
        [],
        "INVALID_INPUT_VALUE",
        "graph.nodes[0].inputs.item",
        id="connection-only",
    ),
    pytest.param(
        [node("i", "image")], [], "MISSING_REQUIRED_INPUT", "graph.nodes[0].inputs.image", id="req"
    ),
    pytest.param(
        [node("a", "add")],
        [edge("b.value", "a.a")],
        "UNKNOWN_NODE",
        "graph.edges[0].source.node_id",
        id="source-node",
    ),
    pytest.param(
        [node("a", "integer")],
        [edge("a.value", "b.a")],
        "UNKNOWN_NODE",
        "graph.edges[0].destination.node_id",
        id="destination-node",
    ),
    pytest.param(
        [node("a", "integer"), node("b", "add")],
        [edge("a.nope", "b.a")],
        "UNKNOWN_FIELD",
        "graph.edges[0].source.field",
        id="source-field",
    ),
    pytest.param(
        [node("a", "integer"), node("b", "add")],
        [edge("a.value", "b.nope")],
        "UNKNOWN_FIELD",
        "graph.edges[0].destination.field",
        id="destination-field",
    ),
    pytest.param(
        [node("s", "string"), node("b", "add")],
        [edge("s.value", "b.a")],
        "EDGE_TYPE_MISMATCH",
        "graph.edges[0].destination.field",
        id="string-into-integer",
    ),
    pytest.param(
        [node("f", "float"), node("b", "add")],
        [edge("f.value", "b.a")],
        "EDGE_TYPE_MISMATCH",
        "graph.edges[0].destination.field",
        id="float-into-integer",
    ),
    pytest.param(
        [node("a", "integer"), node("b", "add", a=1)],
        [edge("a.value", "b.a")],
        "INPUT_ALREADY_SET",
        "graph.edges[0].destination.field",
        id="value-and-edge",
    ),
    pytest.param(
        [node("a", "integer"), node("c", "integer"), node("b", "add")],
        [edge("a.value", "b.a"), edge("c.value", "b.a")],
        "INPUT_ALREADY_SET",
        "graph.edges[1].destination.field",
        id="two-edges",
    ),
    pytest.param(
        [node("a", "integer"), node("it", "iterate")],
        [edge("a.value", "it.index")],
        "INPUT_NOT_CONNECTABLE",
        "graph.edges[0].destination.field",
        id="direct-only",
    ),
    pytest.param(
        [node("a", "add"), node("b", "add"), node("c", "add")],
        [edge("a.value", "b.a"), edge("b.value", "c.a"), edge("c.value", "a.a")],
        "GRAPH_CYCLE",
        None,
        id="cycle",
    ),
    pytest.param(
        [node("a", "add")], [edge("a.value", "a.a")], "GRAPH_CYCLE", "graph.edges[0]", id="self"
    ),
    pytest.param(
        [node("a", "add"), node("b", "add"), node("c", "add")],
        [edge("a.value", "c.a"), edge("a.value", "b.a"), edge("b.value", "a.a")],
        "GRAPH_CYCLE",
        "graph.edges[1]",
        id="cycle-named-not-its-downstream-edge",
    ),
    pytest.param(
        [node("r", "range"), node("it", "iterate"), node("j", "string_join")],
        [edge("r.collection", "it.collection"), edge("it.item", "j.string_left")],
        "EDGE_TYPE_MISMATCH",
        "graph.edges[1].destination.field",
        id="item-of-integers-into-string",
    ),
    pytest.param(
        [node("a", "integer"), node("c", "collect"), node("it", "iterate")],
        [edge("a.value", "c.item"), edge("c.collection", "it.item")],
        "UNKNOWN_FIELD",
        "graph.edges[1].destination.field",
        id="iterate-has-no-item-input",
    ),
    pytest.param(
        [node("s", "string"), node("c", "collect"), node("r", "range"), node("x", "collect")],
        [edge("s.value", "c.item"), edge("r.collection", "c.collection")],
        "EDGE_TYPE_MISMATCH",
        "graph.edges[1].destination.field",
        id="collection-of-strings-takes-no-integers",
    ),
]


@pytest.mark.parametrize(("nodes", "edges", "reason", "field"), BAD_GRAPHS)
def test_an_invalid_graph_is_refused_with_its_reason_and_field(nodes, edges, reason, field):
    with pytest.raises(InvalidArgumentError) as caught:
        build(nodes, edges)
    assert caught.value.reason == reason
    if field is not None:
        assert caught.value.violations[0].field == field


def test_errors_name_the_node_and_field_in_their_metadata():
    with pytest.raises(InvalidArgumentError) as caught:
        build([node("s", "string"), node("b", "add")], [edge("s.value", "b.a")])
    assert caught.value.metadata == {"node_id": "b", "field": "a"}
    assert "(string) cannot feed b.a (integer)" in caught.value.message


def test_an_integer_feeds_a_float_and_a_required_input_may_come_by_edge():
    g = build(
        [
            node("i", "integer", value=1),
            node("f", "rand_float"),
            node("img", "image", image={"image_name": "a.png"}),
            node("show", "image"),
        ],
        [edge("i.value", "f.low"), edge("img.image", "show.image")],
    )
    assert set(g.incoming("f")) == {"low"}
    assert g.nodes["img"].inputs["image"] == {"image_name": "a.png"}


def test_direct_values_are_kept_as_json_so_a_session_can_show_them():
    g = build([node("img", "image", image={"image_name": "a.png"}), node("n", "add", a=3.0)])
    assert dict(g.nodes["n"].inputs) == {"a": 3}
    shown = session_convert.node_to_pb(g.nodes["img"])
    assert json_format.MessageToDict(shown.inputs) == {"image": {"image_name": "a.png"}}


def test_a_direct_value_is_validated_by_the_input_type():
    g = build([node("f", "rand_float", low=1, high="2.5")])
    assert dict(g.nodes["f"].inputs) == {"low": 1.0, "high": 2.5}


# Generic item type of iterate and collect.


def test_iterate_and_collect_take_the_item_type_from_their_edges():
    g = build(
        [
            node("r", "range", start=0, stop=3),
            node("it", "iterate"),
            node("m", "mul", b=10),
            node("p", "add", b=1),
            node("c", "collect"),
        ],
        [
            edge("r.collection", "it.collection"),
            edge("it.item", "m.a"),
            edge("m.value", "p.a"),
            edge("p.value", "c.item"),
        ],
    )
    assert g.field_type("it", "item", output=True) == "integer"
    assert g.field_type("c", "collection", output=True) == "list[integer]"


def test_integer_items_feed_an_iterate_whose_items_are_floats():
    g = build(
        [node("it", "iterate"), node("f", "rand_float"), node("r", "range")],
        [edge("it.item", "f.low"), edge("r.collection", "it.collection")],
    )
    assert g.field_type("it", "collection", output=False) == "list[float]"


NESTED = [node("r", "range"), node("outer", "iterate"), node("inner", "iterate")]
OUTER_ITEMS_ARE_INNER_LISTS = edge("outer.item", "inner.collection")


@pytest.mark.parametrize("tie_first", [True, False], ids=["tie-first", "tie-last"])
def test_an_item_that_is_another_iterates_list_is_checked_whatever_the_edge_order(tie_first):
    bind = [edge("r.collection", "outer.collection")]
    edges = (
        [OUTER_ITEMS_ARE_INNER_LISTS, *bind] if tie_first else [*bind, OUTER_ITEMS_ARE_INNER_LISTS]
    )
    with pytest.raises(InvalidArgumentError) as caught:
        build(NESTED, edges)  # the outer items are integers, not lists
    assert caught.value.reason == "EDGE_TYPE_MISMATCH"


def test_the_items_of_an_item_list_take_their_type_from_it():
    g = build(
        [*NESTED, node("j", "string_join"), node("c", "collect")],
        [OUTER_ITEMS_ARE_INNER_LISTS, edge("inner.item", "j.string_left")],
    )
    assert g.field_type("outer", "collection", output=False) == "list[list[string]]"
    refused(
        InvalidArgumentError,
        "EDGE_TYPE_MISMATCH",
        "edge.destination.field",
        g,
        lambda: g.add_edge(edge("r.collection", "outer.collection")),
    )
    g.add_edge(edge("outer.item", "c.item"))
    assert g.field_type("c", "collection", output=True) == "list[list[string]]"


def test_an_item_bound_by_its_use_checks_the_list_fed_in_later(graph):
    graph.add_node(node("j", "string_join"), [link("it.item", "string_left")])
    assert graph.field_type("it", "collection", output=False) == "list[string]"
    refused(
        InvalidArgumentError,
        "EDGE_TYPE_MISMATCH",
        "links[0].destination.field",
        graph,
        lambda: graph.add_node(node("c", "collect"), [link("it.item", "collection")]),
    )


def test_joined_open_items_are_bound_together(graph):
    graph.add_node(node("c", "collect"), [link("it.item", "item")])
    assert graph.field_type("c", "collection", output=True) == "list[T]"
    graph.add_node(node("m", "mul"), [link("it.item", "a")])
    assert graph.field_type("c", "collection", output=True) == "list[integer]"
    refused(
        InvalidArgumentError,
        "EDGE_TYPE_MISMATCH",
        "links[0].destination.field",
        graph,
        lambda: graph.add_node(node("j", "string_join"), [link("c.collection", "string_left")]),
    )


def test_a_refused_addition_leaves_the_item_type_open(graph):
    refused(
        InvalidArgumentError,
        "UNKNOWN_FIELD",
        "links[1].destination.field",
        graph,
        lambda: graph.add_node(
            node("j", "string_join"), [link("it.item", "string_left"), link("x.value", "nope")]
        ),
    )
    graph.add_node(node("m", "mul"), [link("it.item", "a")])
    assert graph.field_type("it", "item", output=True) == "integer"


# AddNode.


def test_add_node_resolves_its_links_into_edges(graph):
    added, edges = graph.add_node(node("p", "mul", b=2), [link("sum.value", "a")])
    assert (added.id, dict(added.inputs)) == ("p", {"b": 2})
    assert edges == [edge("sum.value", "p.a")]
    assert graph.incoming("p") == {"a": edge("sum.value", "p.a")}
    assert graph.outgoing("sum") == (edge("sum.value", "p.a"),)
    assert list(graph.nodes)[-1] == "p"


def test_add_node_makes_an_id_when_none_is_given(graph):
    added, _ = graph.add_node(node("", "integer"))
    assert len(added.id) == 36
    assert added.id in graph.nodes


ADD_NODE_REFUSALS = [
    pytest.param(node("x!", "integer"), [], "INVALID_NODE_ID", "node.id", id="bad-char"),
    pytest.param(node("-2", "add"), [], "INVALID_NODE_ID", "node.id", id="bad-id"),
    pytest.param(node("n", "nope"), [], "UNKNOWN_INVOCATION_TYPE", "node.type", id="type"),
    pytest.param(node("n", "add", z=1), [], "UNKNOWN_FIELD", "node.inputs.z", id="input"),
    pytest.param(node("n", "add", a=[1]), [], "INVALID_INPUT_VALUE", "node.inputs.a", id="value"),
    pytest.param(
        node("n", "image"), [], "MISSING_REQUIRED_INPUT", "node.inputs.image", id="required"
    ),
    pytest.param(
        node("n", "add"),
        [link("ghost.value", "a")],
        "UNKNOWN_NODE",
        "links[0].source.node_id",
        id="source-node",
    ),
    pytest.param(
        node("n", "add"),
        [link("x.nope", "a")],
        "UNKNOWN_FIELD",
        "links[0].source.field",
        id="source-field",
    ),
    pytest.param(
        node("n", "add"),
        [link("x.value", "nope")],
        "UNKNOWN_FIELD",
        "links[0].destination.field",
        id="destination-field",
    ),
    pytest.param(
        node("n", "string_join"),
        [link("x.value", "string_left")],
        "EDGE_TYPE_MISMATCH",
        "links[0].destination.field",
        id="types",
    ),
    pytest.param(
        node("n", "add", a=1),
        [link("x.value", "a")],
        "INPUT_ALREADY_SET",
        "links[0].destination.field",
        id="value-and-link",
    ),
    pytest.param(
        node("n", "add"),
        [link("x.value", "a"), link("y.value", "a")],
        "INPUT_ALREADY_SET",
        "links[1].destination.field",
        id="two-links",
    ),
    pytest.param(
        node("n", "iterate"),
        [link("x.value", "index")],
        "INPUT_NOT_CONNECTABLE",
        "links[0].destination.field",
        id="direct-only",
    ),
    pytest.param(
        node("n", "add"),
        [link("x.value", "a"), link("n.value", "b")],
        "GRAPH_CYCLE",
        "links[1].source.node_id",
        id="self",
    ),
    pytest.param(
        node("n", "add"),
        [Edge(FieldRef("x", "value"), FieldRef("sum", "a"))],
        "INVALID_LINK",
        "links[0].destination.node_id",
        id="into-another-node",
    ),
    pytest.param(
        node("n", "add"),
        [Edge(FieldRef("x", "*"), FieldRef("", "a"))],
        "INVALID_LINK",
        "links[0].destination.field",
        id="star-into-a-field",
    ),
    pytest.param(
        node("n", "add"),
        [Edge(FieldRef("x", "value"), FieldRef("", "*"))],
        "INVALID_LINK",
        "links[0].destination.field",
        id="field-into-star",
    ),
    pytest.param(
        node("n", "add"),
        [link("-3.value", "a")],
        "NO_SUCH_HISTORY_ENTRY",
        "links[0].source.node_id",
        id="history-beyond",
    ),
    pytest.param(
        node("n", "add"),
        [link("-0.value", "a")],
        "NO_SUCH_HISTORY_ENTRY",
        "links[0].source.node_id",
        id="history-zero",
    ),
]


@pytest.mark.parametrize(("spec", "links", "reason", "field"), ADD_NODE_REFUSALS)
def test_add_node_refuses_and_changes_nothing(graph, spec, links, reason, field):
    refused(
        InvalidArgumentError,
        reason,
        field,
        graph,
        lambda: graph.add_node(spec, links, history=["x", "y"]),
    )
    assert spec.id not in graph.nodes


def test_add_node_with_a_node_id_in_the_graph_is_already_exists(graph):
    error = refused(
        AlreadyExistsError,
        "DUPLICATE_NODE_ID",
        None,
        graph,
        lambda: graph.add_node(node("sum", "mul"), [link("x.value", "a")]),
    )
    assert error.metadata == {"node_id": "sum"}


def test_history_links_name_the_executed_nodes_from_the_end(graph):
    history = ["x", "y", "sum"]
    _, edges = graph.add_node(
        node("p", "add"), [link("-1.value", "a"), link("-3.value", "b")], history=history
    )
    assert edges == [edge("sum.value", "p.a"), edge("x.value", "p.b")]


def test_a_history_link_to_a_run_inside_a_fan_out_names_its_node(graph):
    _, edges = graph.add_node(node("p", "add"), [link("-1.item", "a")], history=["x", "it#1"])
    assert edges == [edge("it.item", "p.a")]


def test_a_history_link_with_no_history_is_refused(graph):
    refused(
        InvalidArgumentError,
        "NO_SUCH_HISTORY_ENTRY",
        "links[0].source.node_id",
        graph,
        lambda: graph.add_node(node("p", "add"), [link("-1.value", "a")]),
    )


# "*" links.


def star(source: str) -> Edge:
    return Edge(FieldRef(source, "*"), FieldRef("", ""))


def test_a_star_link_connects_outputs_to_inputs_of_the_same_name_and_type(graph):
    graph.add_node(node("pair", "pair"))
    _, edges = graph.add_node(node("s", "scaled"), [star("pair")])
    # b takes only a direct value and label is a float here: only a is linked
    assert edges == [edge("pair.a", "s.a")]


def test_a_star_link_skips_inputs_set_directly_or_by_a_named_link(graph):
    graph.add_node(node("pair", "pair"))
    _, edges = graph.add_node(node("p", "add", a=5), [star("pair")])
    assert edges == [edge("pair.b", "p.b")]
    _, edges = graph.add_node(node("q", "add"), [star("pair"), link("x.value", "a")])
    assert edges == [edge("x.value", "q.a"), edge("pair.b", "q.b")]


def test_a_star_link_may_match_nothing_and_takes_history_sources(graph):
    star_link = Edge(FieldRef("-1", "*"), FieldRef("s", "*"))
    _, edges = graph.add_node(node("s", "string"), [star_link], history=["sum"])
    assert edges == []


def test_a_star_link_binds_the_item_type(graph):
    _, edges = graph.add_node(node("c", "collect"), [star("it")])
    assert edges == [edge("it.item", "c.item")]
    graph.add_node(node("r", "range"))
    _, edges = graph.add_node(node("it2", "iterate"), [star("r")])
    assert edges == [edge("r.collection", "it2.collection")]
    assert graph.field_type("it2", "item", output=True) == "integer"


# AddEdge.


def test_add_edge_connects_two_nodes_of_the_graph(graph):
    graph.add_node(node("m", "mul"))
    assert graph.add_edge(edge("sum.value", "m.a")) == edge("sum.value", "m.a")
    assert graph.incoming("m") == {"a": edge("sum.value", "m.a")}


def test_add_edge_refuses_and_changes_nothing(graph):
    graph.add_node(node("m", "mul"), [link("sum.value", "a")])
    graph.add_node(node("n", "mul"), [link("m.value", "a")])
    graph.add_node(node("s", "string"))
    refused(
        AlreadyExistsError,
        "EDGE_ALREADY_EXISTS",
        None,
        graph,
        lambda: graph.add_edge(edge("sum.value", "m.a")),
    )
    refused(
        InvalidArgumentError,
        "INPUT_ALREADY_SET",
        "edge.destination.field",
        graph,
        lambda: graph.add_edge(edge("n.value", "sum.a")),
    )
    refused(
        InvalidArgumentError,
        "UNKNOWN_NODE",
        "edge.source.node_id",
        graph,
        lambda: graph.add_edge(edge("-1.value", "m.b")),
    )
    refused(
        InvalidArgumentError,
        "UNKNOWN_FIELD",
        "edge.source.field",
        graph,
        lambda: graph.add_edge(edge("x.*", "m.b")),
    )
    refused(
        InvalidArgumentError,
        "EDGE_TYPE_MISMATCH",
        "edge.destination.field",
        graph,
        lambda: graph.add_edge(edge("s.value", "m.b")),
    )


def test_add_edge_refuses_an_edge_that_closes_a_cycle(graph):
    graph.add_node(node("m", "mul"), [link("sum.value", "a")])
    graph.add_node(node("n", "mul"), [link("m.value", "a")])
    refused(
        InvalidArgumentError,
        "GRAPH_CYCLE",
        "edge",
        graph,
        lambda: graph.add_edge(edge("n.value", "m.b")),
    )
    refused(
        InvalidArgumentError,
        "GRAPH_CYCLE",
        "edge",
        graph,
        lambda: graph.add_edge(edge("n.value", "n.b")),
    )


# Readiness.


def diamond() -> Graph:
    """a feeds b and c, which both feed d; e stands alone."""
    return build(
        [
            node("a", "integer"),
            node("b", "add"),
            node("c", "add"),
            node("d", "add"),
            node("e", "integer"),
        ],
        [
            edge("a.value", "b.a"),
            edge("a.value", "c.a"),
            edge("b.value", "d.a"),
            edge("c.value", "d.b"),
        ],
    )


def test_a_node_is_ready_when_every_node_feeding_it_has_executed():
    g = diamond()
    assert ready_nodes(g, set()) == ["a", "e"]
    assert ready_nodes(g, {"a"}) == ["b", "c", "e"]
    assert ready_nodes(g, {"a", "b", "c", "e"}) == ["d"]
    assert ready_nodes(g, {"a", "b", "c", "d", "e"}) == []


def test_only_the_successors_of_a_finished_node_are_newly_ready():
    g = diamond()
    assert newly_ready(g, "a", {"a"}) == ["b", "c"]
    assert newly_ready(g, "b", {"a", "b"}) == []
    assert newly_ready(g, "c", {"a", "b", "c"}) == ["d"]


def test_topological_order_breaks_ties_by_the_order_nodes_were_added():
    g = build(
        [node("late", "add"), node("early", "integer"), node("other", "integer")],
        [edge("early.value", "late.a")],
    )
    assert topological_order(g) == ["early", "late", "other"]
    assert topological_order(diamond()) == ["a", "b", "c", "d", "e"]


# Cost of an addition.


def lines_run(action) -> int:
    """Python lines executed by `action`: a measure of work that does not depend on time."""
    count = 0

    def trace(frame, event, arg):
        nonlocal count
        count += 1
        return trace

    sys.settrace(trace)
    try:
        action()
    finally:
        sys.settrace(None)
    return count


def test_adding_a_node_does_the_same_work_at_500_nodes_as_at_10():
    graph = Graph(REGISTRY)
    history: list[str] = []
    work = []
    graph.add_node(node("n0", "integer", value=1))
    history.append("n0")
    for index in range(1, 500):
        spec = node(f"n{index}", "add")
        links = [link(f"n{index - 1}.value", "a"), Edge(FieldRef("-1", "*"), FieldRef("", ""))]
        work.append(lines_run(partial(graph.add_node, spec, links, history=history)))
        history.append(spec.id)
    assert (len(graph.nodes), len(graph.edges)) == (500, 499)
    assert topological_order(graph)[-1] == "n499"
    assert work[-1] == work[10] == work[250]


def test_a_500_node_graph_is_built_and_ordered():
    nodes = [node("n0", "integer", value=1)] + [node(f"n{i}", "add", b=1) for i in range(1, 500)]
    edges = [edge(f"n{i - 1}.value", f"n{i}.a") for i in range(1, 500)]
    g = build(nodes, edges)
    assert topological_order(g) == [f"n{i}" for i in range(500)]
    assert ready_nodes(g, {"n0"}) == ["n1"]
