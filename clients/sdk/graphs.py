"""Building session graphs: nodes with their direct input values, edges by "node.field"."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from easel.invoker.v1 import graph_pb2


def node(node_id: str, node_type: str, **inputs: Any) -> graph_pb2.Node:
    """A node of type `node_type` (an InvocationService type name) with direct values;
    an input left out takes its default or an edge."""
    message = graph_pb2.Node(id=node_id, type=node_type)
    message.inputs.update(inputs)
    return message


def edge(source: str, destination: str) -> graph_pb2.Edge:
    """An edge from output `source` to input `destination`, each "node_id.field"."""
    source_node, source_field = source.split(".", 1)
    destination_node, destination_field = destination.split(".", 1)
    return graph_pb2.Edge(
        source=graph_pb2.EdgeConnection(node_id=source_node, field=source_field),
        destination=graph_pb2.EdgeConnection(node_id=destination_node, field=destination_field),
    )


def graph(nodes: Iterable[graph_pb2.Node], edges: Iterable[graph_pb2.Edge] = ()) -> graph_pb2.Graph:
    return graph_pb2.Graph(nodes=list(nodes), edges=list(edges))
