"""Whether an output may feed an input, by their FieldSchema type names.

Concrete types match when they have the same name, or "integer" flows into "float"
(also as list elements). The type variable "T" of iterate and collect stands for one type
per node; `TypeBindings` holds what each node's T is bound to, as a union-find over node
ids whose links carry a list depth: connecting two open variables makes one the other or a
list of it (iterate.item into collect.item: the same type; iterate.item into another
iterate's collection: the second T is an item of the first), and binding any of them binds
them all, without walking the graph.
"""

from __future__ import annotations

from dataclasses import dataclass

VARIABLE = "T"


def split(type_name: str) -> tuple[int, str]:
    """How many `list[...]` wrap a type name, and the name inside them."""
    depth = 0
    while type_name.startswith("list[") and type_name.endswith("]"):
        type_name = type_name[5:-1]
        depth += 1
    return depth, type_name


def wrap(base: str, depth: int) -> str:
    """`base` inside `depth` lists."""
    for _ in range(depth):
        base = f"list[{base}]"
    return base


def compatible(source: str, destination: str) -> bool:
    """Whether a value of concrete type `source` may feed an input of type `destination`."""
    source_depth, source_base = split(source)
    destination_depth, destination_base = split(destination)
    return source_depth == destination_depth and (
        source_base == destination_base or (source_base, destination_base) == ("integer", "float")
    )


@dataclass(frozen=True)
class _Side:
    """One end of an edge as far as the bindings know it: a concrete type name, or
    `list^depth[T(root)]` for an unbound variable (depth below 0: an item of T(root))."""

    concrete: str = ""
    root: str = ""
    depth: int = 0


class TypeBindings:
    """Each node's T: unbound, bound to a concrete type, or tied to another node's T.

    A tie says `T(node) = list^k[T(parent)]` (k below 0: the parent is the list). A root
    holds the concrete binding of all the variables tied to it and the least k among them,
    so a binding too shallow for one of them is refused. A layer made with
    `TypeBindings(base)` records changes without touching `base` until `commit`, so a
    refused change leaves the graph's bindings as they were.
    """

    def __init__(self, base: TypeBindings | None = None) -> None:
        self._base = base
        self._parent: dict[str, tuple[str, int]] = {}
        self._size: dict[str, int] = {}
        self._least: dict[str, int] = {}
        self._bound: dict[str, str] = {}

    def resolve(self, node_id: str, type_name: str) -> str:
        """`type_name` of a field of `node_id` with its T replaced by the binding, if any."""
        return self._side(node_id, type_name).concrete or type_name

    def connect(
        self, source_id: str, source_type: str, destination_id: str, destination_type: str
    ) -> bool:
        """Whether the output may feed the input, binding or tying their T as it does."""
        source = self._side(source_id, source_type)
        destination = self._side(destination_id, destination_type)
        if source.root and destination.root:
            return self._tie(source, destination)
        if source.root:
            return self._bind(source, destination.concrete)
        if destination.root:
            return self._bind(destination, source.concrete)
        return compatible(source.concrete, destination.concrete)

    def commit(self) -> None:
        """Write this layer's changes into its base."""
        if self._base is not None:
            self._base._parent.update(self._parent)
            self._base._size.update(self._size)
            self._base._least.update(self._least)
            self._base._bound.update(self._bound)
            self._parent.clear()
            self._size.clear()
            self._least.clear()
            self._bound.clear()

    def _side(self, node_id: str, type_name: str) -> _Side:
        depth, base = split(type_name)
        if base != VARIABLE:
            return _Side(concrete=type_name)
        root, offset = self._find(node_id)
        bound = self._bound_of(root)
        if bound is None:
            return _Side(root=root, depth=depth + offset)
        bound_depth, bound_base = split(bound)
        return _Side(concrete=wrap(bound_base, bound_depth + offset + depth))

    def _tie(self, first: _Side, second: _Side) -> bool:
        """`list^first.depth[T(first.root)] = list^second.depth[T(second.root)]`."""
        if first.root == second.root:
            return first.depth == second.depth  # else T would be a list of itself
        if self._size_of(first.root) > self._size_of(second.root):
            first, second = second, first
        offset = second.depth - first.depth  # T(first.root) = list^offset[T(second.root)]
        self._parent[first.root] = (second.root, offset)
        self._size[second.root] = self._size_of(first.root) + self._size_of(second.root)
        least = min(self._least_of(second.root), self._least_of(first.root) + offset)
        self._least[second.root] = least
        return True

    def _bind(self, side: _Side, concrete: str) -> bool:
        """`list^side.depth[T(side.root)]` meets `concrete`: binds T(side.root) when every
        variable tied to it stays a type (no list unwrapped below its base)."""
        depth, base = split(concrete)
        root_depth = depth - side.depth
        if root_depth + min(0, self._least_of(side.root)) < 0:
            return False
        self._bound[side.root] = wrap(base, root_depth)
        return True

    def _find(self, variable: str) -> tuple[str, int]:
        """The root of a variable and k in `T(variable) = list^k[T(root)]`."""
        offset = 0
        while (link := self._parent_of(variable)) is not None:
            variable, step = link
            offset += step
        return variable, offset

    def _parent_of(self, variable: str) -> tuple[str, int] | None:
        if variable in self._parent:
            return self._parent[variable]
        return self._base._parent_of(variable) if self._base is not None else None

    def _size_of(self, root: str) -> int:
        if root in self._size:
            return self._size[root]
        return self._base._size_of(root) if self._base is not None else 1

    def _least_of(self, root: str) -> int:
        if root in self._least:
            return self._least[root]
        return self._base._least_of(root) if self._base is not None else 0

    def _bound_of(self, root: str) -> str | None:
        if root in self._bound:
            return self._bound[root]
        return self._base._bound_of(root) if self._base is not None else None
