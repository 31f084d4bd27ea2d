"""What a node type is: one pydantic class of typed inputs with an `invoke` method whose
return annotation names its output class.

Schemas, validation of direct values and the registry all read the same class, so a node's
inputs and outputs are written exactly once. A subclass sets `invocation_type` (the name
graphs use); `title`, `category`, `tags`, `version` and `cacheable` have defaults, and the
class docstring is the type's description.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from services.invoker.invocations.context import InvocationContext

T = TypeVar("T")
"""The item type of iterate and collect: an input or output annotated `T` or `list[T]`
takes its concrete type from the edges connected to it."""


class InputKind(StrEnum):
    """How an input may receive its value."""

    ANY = "any"  # a direct value or an edge
    CONNECTION = "connection"  # only an edge (e.g. latents another node produced)
    DIRECT = "direct"  # only a direct value


def InputField(
    default: Any = ...,
    *,
    description: str,
    kind: InputKind = InputKind.ANY,
    **constraints: Any,
) -> Any:
    """An input with its description, how it may be set, and pydantic's constraints
    (`ge`, `le`, `gt`, `lt`, `multiple_of`, `min_length`, `max_length`, `title`, ...)."""
    return Field(
        default, description=description, json_schema_extra={"input_kind": kind}, **constraints
    )


def OutputField(*, description: str, **options: Any) -> Any:
    """An output with its description (and optionally its `title`)."""
    return Field(description=description, **options)


class BaseOutput(BaseModel):
    """The result of a node: its fields are the outputs edges can read."""

    model_config = ConfigDict(protected_namespaces=(), extra="forbid")

    output_type: ClassVar[str]
    """Name of this output type, e.g. "integer_output"."""


class BaseInvocation(BaseModel):
    """A node type: typed inputs, an output type and `invoke`.

    `invoke` is a coroutine because what nodes call (the inference and model manager
    services) are asyncio gRPC stubs: a node waiting on a generation holds no thread.
    """

    model_config = ConfigDict(protected_namespaces=(), extra="forbid", validate_assignment=True)

    invocation_type: ClassVar[str]
    """Unique type name used in Node.type, e.g. "add"."""
    title: ClassVar[str] = ""
    """Human-readable title; derived from the type name when empty."""
    category: ClassVar[str] = ""
    tags: ClassVar[tuple[str, ...]] = ()
    version: ClassVar[str] = "1.0.0"
    cacheable: ClassVar[bool] = True
    """Whether equal inputs always give an equal result without side effects, so a result
    may be reused; random or saving nodes set False, and so do nodes whose outputs name
    what another process holds (inference tensors: gone when it restarts) or whose result
    depends on state that is no input and that `resolve` cannot fill in."""

    async def resolve(self, context: InvocationContext) -> None:
        """Fills in inputs whose value the invoker's state decides rather than the graph
        (a model input left empty takes the default model). Runs before the node-output
        cache key is taken, so the key names what actually runs; by default nothing."""

    async def invoke(self, context: InvocationContext) -> BaseOutput:
        raise NotImplementedError
