"""A session's graph: nodes of registered types with validated direct values, and edges
from output fields to input fields.

Every change is checked before anything is written, so a refused change leaves the graph
as it was. `Graph.build` validates a whole graph at once (CreateSession); `add_node` and
`add_edge` check only what they add, against indexes kept per node (incoming edges by
input, outgoing edges, each node's type variable), so their cost does not grow with the
graph. Errors name the request field they come from ("graph.nodes[2].inputs.steps",
"links[0].source.node_id", "edge.destination.field") and carry "node_id" and "field" in
their metadata.
"""

from __future__ import annotations

import re
import uuid
from collections import ChainMap
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from types import MappingProxyType
from typing import Annotated, Any

from pydantic import TypeAdapter, ValidationError

from services.common.errors import AlreadyExistsError, InvalidArgumentError
from services.invoker.graphs.field_types import TypeBindings
from services.invoker.invocations.base import BaseInvocation, InputKind
from services.invoker.invocations.registry import InvocationRegistry, NodeType
from services.invoker.invocations.schema import FieldSpec

NODE_ID = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.-]{0,127}")
"""A node id: 1-128 ASCII letters, digits, '_', '-', '.', not starting with '-'."""
HISTORY_LINK = re.compile(r"-([0-9]+)")
RUN_SEPARATOR = "#"
"""Joins a node id and a run's index in a fan-out ("<node id>#<index>"); no node id has it."""
ALL_FIELDS = "*"


@dataclass(frozen=True)
class NodeSpec:
    """A node as a request gives it: id, type name and direct input values (JSON)."""

    id: str
    type: str
    inputs: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FieldRef:
    """One end of an edge: a field of a node."""

    node_id: str
    field: str


@dataclass(frozen=True)
class Edge:
    """An output field feeding an input field."""

    source: FieldRef
    destination: FieldRef


@dataclass(frozen=True)
class GraphNode:
    """A node in a graph: its registered type and its validated direct input values, in
    their normalised JSON form (an image as `{"image_name": ...}`, an integer given as 3.0
    as 3), so they go into protos, the session store and PNG chunks as they are."""

    id: str
    type: NodeType
    inputs: Mapping[str, Any]

    def input_spec(self, name: str) -> FieldSpec | None:
        return _inputs(self.type).get(name)

    def output_spec(self, name: str) -> FieldSpec | None:
        return _outputs(self.type).get(name)


class Graph:
    """Nodes and edges, valid at every moment; nodes and edges are never removed."""

    def __init__(self, registry: InvocationRegistry) -> None:
        self._registry = registry
        self._nodes: dict[str, GraphNode] = {}
        self._position: dict[str, int] = {}
        self._edges: list[Edge] = []
        self._edge_set: set[Edge] = set()
        self._incoming: dict[str, dict[str, Edge]] = {}
        self._outgoing: dict[str, list[Edge]] = {}
        self._types = TypeBindings()

    @classmethod
    def build(
        cls, registry: InvocationRegistry, nodes: Sequence[NodeSpec], edges: Sequence[Edge]
    ) -> Graph:
        """A graph from a whole request (CreateSession's `graph`), validated as a whole."""
        graph = cls(registry)
        for index, spec in enumerate(nodes):
            where = f"graph.nodes[{index}]"
            node = graph._make_node(spec, where)
            if node.id in graph._nodes:
                raise _invalid(
                    "DUPLICATE_NODE_ID",
                    f"node id {node.id!r} is used twice",
                    f"{where}.id",
                    node.id,
                )
            graph._insert_node(node)
        for index, edge in enumerate(edges):
            graph._check_edge(edge, f"graph.edges[{index}]", graph._nodes, graph._types, {})
            graph._insert_edge(edge)
        for index, node in enumerate(graph._nodes.values()):
            graph._check_required(node, f"graph.nodes[{index}]", graph._incoming[node.id])
        graph._check_acyclic(edges)
        return graph

    @property
    def nodes(self) -> Mapping[str, GraphNode]:
        """The nodes by id, in the order they were added."""
        return MappingProxyType(self._nodes)

    @property
    def edges(self) -> Sequence[Edge]:
        """The edges, in the order they were added."""
        return tuple(self._edges)

    def position(self, node_id: str) -> int:
        """Where the node comes in the order nodes were added, from 0."""
        return self._position[node_id]

    def incoming(self, node_id: str) -> Mapping[str, Edge]:
        """The edges into a node, by input field."""
        return MappingProxyType(self._incoming[node_id])

    def outgoing(self, node_id: str) -> Sequence[Edge]:
        """The edges out of a node."""
        return tuple(self._outgoing[node_id])

    def field_type(self, node_id: str, name: str, *, output: bool) -> str:
        """A field's type name with the node's T replaced by its binding, when bound."""
        node = self._nodes[node_id]
        spec = node.output_spec(name) if output else node.input_spec(name)
        if spec is None:
            raise KeyError(name)
        return self._types.resolve(node_id, spec.type)

    def add_node(
        self, spec: NodeSpec, links: Sequence[Edge] = (), history: Sequence[str] = ()
    ) -> tuple[GraphNode, list[Edge]]:
        """Adds a node and the links into it (AddNode), all or nothing; returns the node
        and the edges added.

        An empty id gets a UUID4. A link source "-N" is the node of `history[-N]`
        (history: the run ids of executed runs, oldest first); a source field "*" links
        every output of the source to the new node's input of the same name and a
        compatible type, skipping inputs set directly or by another link and inputs that
        take only direct values. Named links are resolved first, so they win over "*"
        links whatever their order.
        """
        node_id = spec.id or str(uuid.uuid4())
        node = self._make_node(NodeSpec(node_id, spec.type, spec.inputs), "node")
        if node.id in self._nodes:
            raise AlreadyExistsError(
                f"node id {node.id!r} is already in the graph",
                reason="DUPLICATE_NODE_ID",
                metadata={"node_id": node.id},
            )
        nodes = ChainMap({node.id: node}, self._nodes)
        bindings = TypeBindings(self._types)
        taken: dict[str, Edge] = {}
        added: list[Edge] = []
        star_links = []
        for index, link in enumerate(links):
            where = f"links[{index}]"
            if link.destination.node_id not in ("", node.id):
                raise _invalid(
                    "INVALID_LINK",
                    f"a link must go into the new node {node.id!r}, "
                    f"not {link.destination.node_id!r}",
                    f"{where}.destination.node_id",
                    link.destination.node_id,
                )
            if link.source.node_id == node.id:
                raise _invalid(
                    "GRAPH_CYCLE",
                    f"node {node.id!r} cannot feed itself",
                    f"{where}.source.node_id",
                    node.id,
                )
            source_id = self._resolve_source(link.source.node_id, history, where)
            star = link.source.field == ALL_FIELDS
            if star and link.destination.field not in (ALL_FIELDS, ""):
                raise _invalid(
                    "INVALID_LINK",
                    'a "*" link takes destination field "*" or empty',
                    f"{where}.destination.field",
                    node.id,
                    link.destination.field,
                )
            if not star and link.destination.field == ALL_FIELDS:
                raise _invalid(
                    "INVALID_LINK",
                    'destination field "*" needs source field "*"',
                    f"{where}.destination.field",
                    node.id,
                    ALL_FIELDS,
                )
            if star:
                star_links.append(source_id)
                continue
            edge = Edge(
                FieldRef(source_id, link.source.field), FieldRef(node.id, link.destination.field)
            )
            self._check_edge(edge, where, nodes, bindings, taken)
            taken[edge.destination.field] = edge
            added.append(edge)
        for source_id in star_links:
            for edge in self._star_edges(self._nodes[source_id], node, bindings, taken):
                taken[edge.destination.field] = edge
                added.append(edge)
        self._check_required(node, "node", taken)
        self._insert_node(node)
        for edge in added:
            self._insert_edge(edge)
        bindings.commit()
        return node, added

    def add_edge(self, edge: Edge) -> Edge:
        """Adds an edge between two nodes of the graph (AddEdge), checking that it closes
        no cycle by a search from its destination."""
        if edge in self._edge_set:
            raise AlreadyExistsError(
                "the graph has this edge already",
                reason="EDGE_ALREADY_EXISTS",
                metadata={"node_id": edge.destination.node_id, "field": edge.destination.field},
            )
        bindings = TypeBindings(self._types)
        self._check_edge(edge, "edge", self._nodes, bindings, {})
        if self._reaches(edge.destination.node_id, edge.source.node_id):
            raise _invalid(
                "GRAPH_CYCLE",
                f"{edge.source.node_id!r} depends on {edge.destination.node_id!r}, "
                "so this edge would close a cycle",
                "edge",
                edge.destination.node_id,
                edge.destination.field,
            )
        self._insert_edge(edge)
        bindings.commit()
        return edge

    def _make_node(self, spec: NodeSpec, where: str) -> GraphNode:
        if not NODE_ID.fullmatch(spec.id):
            raise _invalid(
                "INVALID_NODE_ID",
                f"node id {spec.id!r} is not 1-128 ASCII letters, digits, '_', '-' or '.' "
                "not starting with '-'",
                f"{where}.id",
                spec.id,
            )
        if spec.type not in self._registry:
            raise _invalid(
                "UNKNOWN_INVOCATION_TYPE",
                f"no invocation type named {spec.type!r}",
                f"{where}.type",
                spec.id,
            )
        node_type = self._registry.get(spec.type)
        inputs = _inputs(node_type)
        values: dict[str, Any] = {}
        for name, value in spec.inputs.items():
            input_spec = inputs.get(name)
            if input_spec is None:
                raise _invalid(
                    "UNKNOWN_FIELD",
                    f"{spec.type!r} has no input {name!r}",
                    f"{where}.inputs.{name}",
                    spec.id,
                    name,
                )
            if input_spec.input_kind is InputKind.CONNECTION:
                raise _invalid(
                    "INVALID_INPUT_VALUE",
                    f"{name!r} takes its value only from an edge",
                    f"{where}.inputs.{name}",
                    spec.id,
                    name,
                )
            adapter = _adapter(node_type.cls, name)
            try:
                values[name] = adapter.dump_python(adapter.validate_python(value), mode="json")
            except ValidationError as exc:
                problem = "; ".join(error["msg"] for error in exc.errors())
                raise _invalid(
                    "INVALID_INPUT_VALUE",
                    f"{name!r} of {spec.id!r}: {problem}",
                    f"{where}.inputs.{name}",
                    spec.id,
                    name,
                ) from None
        return GraphNode(spec.id, node_type, MappingProxyType(values))

    def _resolve_source(self, node_id: str, history: Sequence[str], where: str) -> str:
        """A link's source node id, a history link "-N" replaced by the node of
        `history[-N]` (a run inside a fan-out, "<node id>#<index>", names its node)."""
        match = HISTORY_LINK.fullmatch(node_id)
        if match is not None:
            back = int(match.group(1))
            if not 1 <= back <= len(history):
                raise _invalid(
                    "NO_SUCH_HISTORY_ENTRY",
                    f"{node_id!r} is beyond the {len(history)} executed nodes",
                    f"{where}.source.node_id",
                    node_id,
                )
            node_id = history[-back].split(RUN_SEPARATOR, 1)[0]
        if node_id not in self._nodes:
            raise _invalid(
                "UNKNOWN_NODE", f"no node {node_id!r}", f"{where}.source.node_id", node_id
            )
        return node_id

    def _check_edge(
        self,
        edge: Edge,
        where: str,
        nodes: Mapping[str, GraphNode],
        bindings: TypeBindings,
        taken: Mapping[str, Edge],
    ) -> None:
        """Raises what is wrong with `edge`; binds the node's T in `bindings` as it allows."""
        source, destination = edge.source, edge.destination
        source_node = nodes.get(source.node_id)
        if source_node is None:
            raise _invalid(
                "UNKNOWN_NODE",
                f"no node {source.node_id!r}",
                f"{where}.source.node_id",
                source.node_id,
            )
        destination_node = nodes.get(destination.node_id)
        if destination_node is None:
            raise _invalid(
                "UNKNOWN_NODE",
                f"no node {destination.node_id!r}",
                f"{where}.destination.node_id",
                destination.node_id,
            )
        output = source_node.output_spec(source.field)
        if output is None:
            raise _invalid(
                "UNKNOWN_FIELD",
                f"{source_node.type.spec.name!r} has no output {source.field!r}",
                f"{where}.source.field",
                source.node_id,
                source.field,
            )
        target = destination_node.input_spec(destination.field)
        if target is None:
            raise _invalid(
                "UNKNOWN_FIELD",
                f"{destination_node.type.spec.name!r} has no input {destination.field!r}",
                f"{where}.destination.field",
                destination.node_id,
                destination.field,
            )
        if target.input_kind is InputKind.DIRECT:
            raise _invalid(
                "INPUT_NOT_CONNECTABLE",
                f"{destination.field!r} takes only a direct value, not an edge",
                f"{where}.destination.field",
                destination.node_id,
                destination.field,
            )
        if (
            destination.field in destination_node.inputs
            or destination.field in self._incoming.get(destination.node_id, {})
            or destination.field in taken
        ):
            raise _invalid(
                "INPUT_ALREADY_SET",
                f"{destination.field!r} of {destination.node_id!r} has a value or an edge already",
                f"{where}.destination.field",
                destination.node_id,
                destination.field,
            )
        source_type = bindings.resolve(source.node_id, output.type)
        destination_type = bindings.resolve(destination.node_id, target.type)
        if not bindings.connect(source.node_id, output.type, destination.node_id, target.type):
            raise _invalid(
                "EDGE_TYPE_MISMATCH",
                f"{source.node_id}.{source.field} ({source_type}) cannot feed "
                f"{destination.node_id}.{destination.field} ({destination_type})",
                f"{where}.destination.field",
                destination.node_id,
                destination.field,
            )

    def _star_edges(
        self, source: GraphNode, node: GraphNode, bindings: TypeBindings, taken: Mapping[str, Edge]
    ) -> Iterable[Edge]:
        for name, output in _outputs(source.type).items():
            target = node.input_spec(name)
            if (
                target is None
                or target.input_kind is InputKind.DIRECT
                or name in node.inputs
                or name in taken
            ):
                continue
            trial = TypeBindings(bindings)
            if trial.connect(source.id, output.type, node.id, target.type):
                trial.commit()
                yield Edge(FieldRef(source.id, name), FieldRef(node.id, name))

    def _check_required(self, node: GraphNode, where: str, connected: Mapping[str, Edge]) -> None:
        for name, spec in _inputs(node.type).items():
            if spec.required and name not in node.inputs and name not in connected:
                raise _invalid(
                    "MISSING_REQUIRED_INPUT",
                    f"{name!r} of {node.id!r} needs a value or an edge",
                    f"{where}.inputs.{name}",
                    node.id,
                    name,
                )

    def _check_acyclic(self, edges: Sequence[Edge]) -> None:
        """Kahn's walk over the whole graph. The nodes it leaves over are on a cycle or
        downstream of one, so the first of their edges whose destination leads back to
        its source is named: an edge on the cycle itself."""
        waiting = {node_id: len(self._incoming_sources(node_id)) for node_id in self._nodes}
        ready = [node_id for node_id, count in waiting.items() if count == 0]
        while ready:
            for successor in self._successors(ready.pop()):
                waiting[successor] -= 1
                if waiting[successor] == 0:
                    ready.append(successor)
        for index, edge in enumerate(edges):
            source, destination = edge.source.node_id, edge.destination.node_id
            if waiting[source] and waiting[destination] and self._reaches(destination, source):
                raise _invalid(
                    "GRAPH_CYCLE",
                    f"the edges form a cycle through {edge.destination.node_id!r}",
                    f"graph.edges[{index}]",
                    edge.destination.node_id,
                    edge.destination.field,
                )

    def _incoming_sources(self, node_id: str) -> set[str]:
        return {edge.source.node_id for edge in self._incoming[node_id].values()}

    def _successors(self, node_id: str) -> set[str]:
        return {edge.destination.node_id for edge in self._outgoing[node_id]}

    def _reaches(self, start: str, goal: str) -> bool:
        seen = {start}
        stack = [start]
        while stack:
            current = stack.pop()
            if current == goal:
                return True
            for successor in self._successors(current):
                if successor not in seen:
                    seen.add(successor)
                    stack.append(successor)
        return False

    def _insert_node(self, node: GraphNode) -> None:
        self._position[node.id] = len(self._nodes)
        self._nodes[node.id] = node
        self._incoming[node.id] = {}
        self._outgoing[node.id] = []

    def _insert_edge(self, edge: Edge) -> None:
        self._edges.append(edge)
        self._edge_set.add(edge)
        self._incoming[edge.destination.node_id][edge.destination.field] = edge
        self._outgoing[edge.source.node_id].append(edge)


_field_maps: dict[type[BaseInvocation], tuple[Mapping[str, FieldSpec], ...]] = {}
"""Each node class's inputs and outputs by name, made on first use."""


def _inputs(node_type: NodeType) -> Mapping[str, FieldSpec]:
    return _fields(node_type)[0]


def _outputs(node_type: NodeType) -> Mapping[str, FieldSpec]:
    return _fields(node_type)[1]


def _fields(node_type: NodeType) -> tuple[Mapping[str, FieldSpec], ...]:
    maps = _field_maps.get(node_type.cls)
    if maps is None:
        maps = _field_maps[node_type.cls] = (
            MappingProxyType({spec.name: spec for spec in node_type.spec.inputs}),
            MappingProxyType({spec.name: spec for spec in node_type.spec.outputs}),
        )
    return maps


@cache
def _adapter(cls: type[BaseInvocation], name: str) -> TypeAdapter[Any]:
    """A validator of one input with its constraints, for values given without the rest."""
    info = cls.model_fields[name]
    return TypeAdapter(Annotated[info.annotation, info])


def _invalid(
    reason: str, message: str, field: str, node_id: str = "", field_name: str = ""
) -> InvalidArgumentError:
    metadata = {"node_id": node_id} if node_id else {}
    if field_name:
        metadata["field"] = field_name
    return InvalidArgumentError(message, field=field, reason=reason, metadata=metadata)
