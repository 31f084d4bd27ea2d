"""The schema of a node type, read from its class: the one place type names, defaults,
constraints and input kinds come from, for the API and for graph validation alike."""

from __future__ import annotations

import inspect
import types
import typing
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal, TypeVar, get_args, get_origin

import annotated_types
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined, to_jsonable_python

from services.invoker.invocations.base import BaseInvocation, BaseOutput, InputKind
from services.invoker.invocations.fields import Reference

SCALAR_TYPES: dict[Any, str] = {bool: "boolean", int: "integer", float: "float", str: "string"}
NO_DEFAULT = object()


class SchemaError(Exception):
    """A node class whose schema cannot be derived (an unsupported annotation, no output)."""


@dataclass(frozen=True)
class Constraints:
    """Limits on a field's value; None where a limit does not apply."""

    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: float | None = None
    exclusive_maximum: float | None = None
    multiple_of: float | None = None
    min_length: int | None = None
    max_length: int | None = None
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class FieldSpec:
    """One input or output field. `default` is a JSON value, or NO_DEFAULT."""

    name: str
    title: str
    description: str
    type: str
    required: bool = False
    default: Any = NO_DEFAULT
    constraints: Constraints | None = None
    input_kind: InputKind | None = None  # None on outputs


@dataclass(frozen=True)
class InvocationSpec:
    """One node type as the registry describes it."""

    name: str
    title: str
    description: str
    category: str
    tags: tuple[str, ...]
    version: str
    inputs: tuple[FieldSpec, ...]
    outputs: tuple[FieldSpec, ...]
    output_type: str
    output_class: type[BaseOutput] = field(repr=False, compare=False)
    cacheable: bool = True


def describe(cls: type[BaseInvocation]) -> InvocationSpec:
    """The schema of the node type `cls`; SchemaError when it has none."""
    name = getattr(cls, "invocation_type", "")
    if not isinstance(name, str) or not name:
        raise SchemaError(f"{cls.__qualname__} sets no invocation_type")
    output = output_class(cls)
    output_name = getattr(output, "output_type", "")
    if not isinstance(output_name, str) or not output_name:
        raise SchemaError(f"{output.__qualname__} sets no output_type")
    return InvocationSpec(
        name=name,
        title=cls.title or _title(name),
        description=inspect.cleandoc(cls.__doc__ or ""),
        category=cls.category,
        tags=tuple(cls.tags),
        version=cls.version,
        inputs=tuple(_field(cls, n, info, output=False) for n, info in cls.model_fields.items()),
        outputs=tuple(
            _field(output, n, info, output=True) for n, info in output.model_fields.items()
        ),
        output_type=output_name,
        output_class=output,
        cacheable=cls.cacheable,
    )


def output_class(cls: type[BaseInvocation]) -> type[BaseOutput]:
    """The output class named by the return annotation of `cls.invoke`."""
    try:
        returned = typing.get_type_hints(cls.invoke).get("return")
    except Exception as exc:
        raise SchemaError(f"{cls.__qualname__}.invoke has an unreadable annotation: {exc}") from exc
    if not (isinstance(returned, type) and issubclass(returned, BaseOutput)):
        raise SchemaError(f"{cls.__qualname__}.invoke must be annotated to return a BaseOutput")
    if returned is BaseOutput:
        raise SchemaError(f"{cls.__qualname__}.invoke must return its own output class")
    return returned


def type_name(annotation: Any) -> str:
    """The FieldSchema type name of a Python annotation, e.g. `list[int]` → "list[integer]"."""
    origin = get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        present = [arg for arg in get_args(annotation) if arg is not type(None)]
        if len(present) == 1:
            return type_name(present[0])
    elif origin is Literal:
        if all(isinstance(value, str) for value in get_args(annotation)):
            return "enum"
    elif origin is list:
        (item,) = get_args(annotation) or (Any,)
        return f"list[{type_name(item)}]"
    elif isinstance(annotation, TypeVar):
        return annotation.__name__
    elif annotation in SCALAR_TYPES:
        return SCALAR_TYPES[annotation]
    elif isinstance(annotation, type) and issubclass(annotation, Enum):
        return "enum"
    elif isinstance(annotation, type) and issubclass(annotation, Reference):
        return annotation.type_name
    raise SchemaError(f"no field type for the annotation {annotation!r}")


def _field(owner: type, name: str, info: FieldInfo, *, output: bool) -> FieldSpec:
    try:
        kind = type_name(info.annotation)
    except SchemaError as exc:
        raise SchemaError(f"{owner.__qualname__}.{name}: {exc}") from None
    description = info.description or ""
    title = info.title or _title(name)
    if output:
        return FieldSpec(name, title, description, kind)
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    return FieldSpec(
        name,
        title,
        description,
        kind,
        required=info.is_required(),
        default=_default(info),
        constraints=_constraints(info),
        input_kind=InputKind(extra.get("input_kind", InputKind.ANY)),
    )


def _default(info: FieldInfo) -> Any:
    if info.is_required():
        return NO_DEFAULT
    if info.default_factory is not None:
        return to_jsonable_python(info.default_factory())  # type: ignore[call-arg]
    if info.default is PydanticUndefined:
        return NO_DEFAULT
    return to_jsonable_python(info.default)


def _constraints(info: FieldInfo) -> Constraints | None:
    limits: dict[str, Any] = {}
    for item in info.metadata:
        match item:
            case annotated_types.Ge(ge=value):
                limits["minimum"] = float(value)
            case annotated_types.Le(le=value):
                limits["maximum"] = float(value)
            case annotated_types.Gt(gt=value):
                limits["exclusive_minimum"] = float(value)
            case annotated_types.Lt(lt=value):
                limits["exclusive_maximum"] = float(value)
            case annotated_types.MultipleOf(multiple_of=value):
                limits["multiple_of"] = float(value)
            case annotated_types.MinLen(min_length=value):
                limits["min_length"] = int(value)
            case annotated_types.MaxLen(max_length=value):
                limits["max_length"] = int(value)
    choices = _choices(info.annotation)
    if choices:
        limits["choices"] = choices
    return Constraints(**limits) if limits else None


def _choices(annotation: Any) -> tuple[str, ...]:
    origin = get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        present = [arg for arg in get_args(annotation) if arg is not type(None)]
        return _choices(present[0]) if len(present) == 1 else ()
    if origin is Literal:
        return tuple(str(value) for value in get_args(annotation))
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return tuple(str(member.value) for member in annotation)
    return ()


def _title(name: str) -> str:
    return " ".join(word.capitalize() for word in name.replace("-", "_").split("_") if word)
