"""Fan-out over a list: iterate runs the nodes after it once per item, collect gathers
their results back into one list.

Both are generic in the item type `T`: an iterate fed a "list[integer]" yields "integer"
items, a collect fed "integer" items yields a "list[integer]"; graph validation binds `T`
per node from the edges connected to it. The executor expands the fan-out (one run per
item, keyed `<node id>#<index>`); `invoke` here is what a single run of each computes.
"""

from __future__ import annotations

from typing import ClassVar, Generic

from services.common.errors import InvalidArgumentError
from services.invoker.invocations.base import (
    BaseInvocation,
    BaseOutput,
    InputField,
    InputKind,
    OutputField,
    T,
)
from services.invoker.invocations.context import InvocationContext


class IterateOutput(BaseOutput, Generic[T]):
    output_type: ClassVar[str] = "iterate_output"
    item: T = OutputField(description="The item of this run.")
    index: int = OutputField(description="Position of the item in the collection, from 0.")
    total: int = OutputField(description="Number of items in the collection.")


class CollectOutput(BaseOutput, Generic[T]):
    output_type: ClassVar[str] = "collect_output"
    collection: list[T] = OutputField(description="The items, in the order of their runs.")


class IterateInvocation(BaseInvocation):
    """Runs the nodes that follow it once for each item of a list."""

    invocation_type: ClassVar[str] = "iterate"
    category: ClassVar[str] = "collections"
    collection: list[T] = InputField([], description="The items to run over.")
    index: int = InputField(
        0, ge=0, kind=InputKind.DIRECT, description="Which item this run yields (set per run)."
    )

    async def invoke(self, context: InvocationContext) -> IterateOutput:
        if self.index >= len(self.collection):
            raise InvalidArgumentError(
                f"index {self.index} is past the {len(self.collection)} items", field="index"
            )
        return IterateOutput(
            item=self.collection[self.index], index=self.index, total=len(self.collection)
        )


class CollectInvocation(BaseInvocation):
    """Gathers the items its runs receive into one list; an empty fan-out gives []."""

    invocation_type: ClassVar[str] = "collect"
    category: ClassVar[str] = "collections"
    item: T | None = InputField(
        None, kind=InputKind.CONNECTION, description="One item to collect (an edge)."
    )
    collection: list[T] = InputField(
        [], description="Items collected so far; the new item is appended to them."
    )

    async def invoke(self, context: InvocationContext) -> CollectOutput:
        collected = list(self.collection)
        if self.item is not None:
            collected.append(self.item)
        return CollectOutput(collection=collected)
