"""Whether an output may feed an input, by their FieldSchema type names.

Concrete types match when they have the same name, or "integer" flows into "float"
(also as list elements). The type variable "T" of iterate and collect stands for one type
per node; `TypeBindings` holds what each node's T is bound to, as a union-find over node
ids so that connecting two open variables (iterate.item into collect.item) makes them one
variable, and binding either binds both, without walking the graph.
"""

from __future__ import annotations

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


class TypeBindings:
    """Each node's T: unbound, bound to a concrete type, or joined to another node's T.

    A layer made with `TypeBindings(base)` records changes without touching `base` until
    `commit`, so a refused change leaves the graph's bindings as they were.
    """

    def __init__(self, base: TypeBindings | None = None) -> None:
        self._base = base
        self._parent: dict[str, str] = {}
        self._size: dict[str, int] = {}
        self._bound: dict[str, str] = {}

    def resolve(self, node_id: str, type_name: str) -> str:
        """`type_name` of a field of `node_id` with its T replaced by the binding, if any."""
        depth, base = split(type_name)
        if base != VARIABLE:
            return type_name
        bound = self._bound_of(self._find(node_id))
        return type_name if bound is None else wrap(bound, depth)

    def connect(
        self, source_id: str, source_type: str, destination_id: str, destination_type: str
    ) -> bool:
        """Whether the output may feed the input, binding or joining their T as it does."""
        source_depth, source_base = split(self.resolve(source_id, source_type))
        destination_depth, destination_base = split(self.resolve(destination_id, destination_type))
        source_open, destination_open = source_base == VARIABLE, destination_base == VARIABLE
        if source_open and destination_open:
            if source_depth == destination_depth:
                self._join(source_id, destination_id)
            return True
        if source_open:
            if destination_depth < source_depth:
                return False
            self._bind(source_id, wrap(destination_base, destination_depth - source_depth))
            return True
        if destination_open:
            if source_depth < destination_depth:
                return False
            self._bind(destination_id, wrap(source_base, source_depth - destination_depth))
            return True
        source_type = wrap(source_base, source_depth)
        return compatible(source_type, wrap(destination_base, destination_depth))

    def commit(self) -> None:
        """Write this layer's changes into its base."""
        if self._base is not None:
            self._base._parent.update(self._parent)
            self._base._size.update(self._size)
            self._base._bound.update(self._bound)
            self._parent.clear()
            self._size.clear()
            self._bound.clear()

    def _parent_of(self, variable: str) -> str:
        if variable in self._parent:
            return self._parent[variable]
        return self._base._parent_of(variable) if self._base is not None else variable

    def _size_of(self, root: str) -> int:
        if root in self._size:
            return self._size[root]
        return self._base._size_of(root) if self._base is not None else 1

    def _bound_of(self, root: str) -> str | None:
        if root in self._bound:
            return self._bound[root]
        return self._base._bound_of(root) if self._base is not None else None

    def _find(self, variable: str) -> str:
        while (parent := self._parent_of(variable)) != variable:
            variable = parent
        return variable

    def _bind(self, variable: str, type_name: str) -> None:
        self._bound[self._find(variable)] = type_name

    def _join(self, first: str, second: str) -> None:
        """Make two unbound variables one (union by size keeps every find short)."""
        first, second = self._find(first), self._find(second)
        if first == second:
            return
        if self._size_of(first) > self._size_of(second):
            first, second = second, first
        self._parent[first] = second
        self._size[second] = self._size_of(first) + self._size_of(second)
