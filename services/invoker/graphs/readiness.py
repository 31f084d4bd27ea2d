"""Which nodes may run, as pure functions of a graph and the ids of the nodes that have
executed: a node is ready when it has not run and every node feeding one of its inputs
has executed successfully, so a node downstream of a failed node never becomes ready."""

from __future__ import annotations

from collections.abc import Set
from heapq import heappop, heappush

from services.invoker.graphs.graph import Graph


def sources(graph: Graph, node_id: str) -> set[str]:
    """The nodes that feed one of the node's inputs."""
    return {edge.source.node_id for edge in graph.incoming(node_id).values()}


def is_ready(graph: Graph, node_id: str, completed: Set[str]) -> bool:
    """Whether a node that has not run has every source executed."""
    return node_id not in completed and sources(graph, node_id) <= completed


def ready_nodes(graph: Graph, completed: Set[str]) -> list[str]:
    """Every ready node, in the order nodes were added, which is the topological order's
    tie-break."""
    return [node_id for node_id in graph.nodes if is_ready(graph, node_id, completed)]


def newly_ready(graph: Graph, node_id: str, completed: Set[str]) -> list[str]:
    """The nodes that `node_id` finishing (it is in `completed`) made ready: only its
    successors are looked at, so a run need not rescan the graph after each node."""
    successors = {edge.destination.node_id for edge in graph.outgoing(node_id)}
    ready = [other for other in successors if is_ready(graph, other, completed)]
    return sorted(ready, key=graph.position)


def topological_order(graph: Graph) -> list[str]:
    """Every node, sources before the nodes they feed, ties broken by the order nodes were
    added (the order GraphExecutionState lists pending nodes in)."""
    waiting = {node_id: len(sources(graph, node_id)) for node_id in graph.nodes}
    heap = [graph.position(node_id) for node_id, count in waiting.items() if count == 0]
    ids = list(graph.nodes)
    order: list[str] = []
    while heap:
        node_id = ids[heappop(heap)]
        order.append(node_id)
        for successor in {edge.destination.node_id for edge in graph.outgoing(node_id)}:
            waiting[successor] -= 1
            if waiting[successor] == 0:
                heappush(heap, graph.position(successor))
    return order
