"""The commands of the language, made at run time from the invoker's node types.

Every type that InvocationService.ListInvocationTypes lists is a command of the same name,
and every input of it an option, with the input's type, default, limits and description:
a custom node on the server is a command here with no change to the client. Values are
checked against the schema before anything reaches the server, so a typo costs no
session.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format

from clients.cli.command_language.syntax import LanguageError
from easel.invoker.v1 import invocation_service_pb2 as pb

LIST_PAGE_SIZE = 1000

REFERENCE_KEYS = {
    "image": "image_name",
    "latents": "latents_name",
    "conditioning": "conditioning_name",
    "model": "key",
}
"""The JSON shape of the reference types (FieldSchema.type): one key naming the thing."""

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
NO_DEFAULT = object()


@dataclass(frozen=True)
class Option:
    """One input of a node type, as an option of its command."""

    name: str
    type: str
    description: str = ""
    required: bool = False
    default: Any = NO_DEFAULT
    direct_only: bool = False
    """Takes only a value, never a link (INPUT_KIND_DIRECT)."""
    link_only: bool = False
    """Takes only a link, never a value (INPUT_KIND_CONNECTION)."""
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: float | None = None
    exclusive_maximum: float | None = None
    multiple_of: float | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name

    def placeholder(self) -> str:
        """What `help` shows after the option: its choices, or its type in capitals."""
        if self.type == "boolean":
            return "[true|false]"
        if self.choices:
            return "{" + "|".join(self.choices) + "}"
        element = self.type[5:-1] if self.type.startswith("list[") else self.type
        suffix = " ..." if self.type.startswith("list[") else ""
        return element.upper().replace("[", "_").replace("]", "") + suffix


@dataclass(frozen=True)
class Command:
    """One node type as a command: its options (inputs) and outputs (name to type)."""

    name: str
    title: str
    description: str
    category: str
    options: dict[str, Option]
    outputs: dict[str, str]
    output_type: str = ""

    def option(self, name: str, spelled: str) -> Option:
        found = self.options.get(name)
        if found is None:
            known = ", ".join(option.flag for option in self.options.values()) or "none"
            raise LanguageError(f"{self.name} has no option {spelled} (its options: {known})")
        return found


@dataclass
class CommandSet:
    """Every command, by name."""

    commands: dict[str, Command] = field(default_factory=dict)

    def get(self, name: str) -> Command:
        found = self.commands.get(name)
        if found is None:
            close = [known for known in self.commands if _similar(name, known)]
            suggestion = f" (did you mean {', '.join(close)}?)" if close else ""
            raise LanguageError(f"unknown command {name!r}{suggestion}; `help` lists the commands")
        return found

    def names(self) -> list[str]:
        return sorted(self.commands)


def fetch_commands(invocations: Any) -> CommandSet:
    """The commands of the invoker that the InvocationService stub `invocations` reaches."""
    request = pb.ListInvocationTypesRequest(page_size=LIST_PAGE_SIZE)
    types: list[pb.InvocationType] = []
    while True:
        reply = invocations.ListInvocationTypes(request)
        types += reply.invocation_types
        if not reply.next_page_token:
            return commands_from_types(types)
        request.page_token = reply.next_page_token


def commands_from_types(types: Iterable[pb.InvocationType]) -> CommandSet:
    return CommandSet({item.name: _command(item) for item in types})


def _command(item: pb.InvocationType) -> Command:
    return Command(
        name=item.name,
        title=item.title,
        description=item.description,
        category=item.category,
        options={field.name: _option(field) for field in item.inputs},
        outputs={field.name: field.type for field in item.outputs},
        output_type=item.output_type,
    )


def _option(schema: pb.FieldSchema) -> Option:
    limits = schema.constraints
    bounds = {
        name: getattr(limits, name) if limits.HasField(name) else None
        for name in ("minimum", "maximum", "exclusive_minimum", "exclusive_maximum", "multiple_of")
    }
    return Option(
        name=schema.name,
        type=schema.type,
        description=schema.description,
        required=schema.required,
        default=(
            json_format.MessageToDict(schema.default) if schema.HasField("default") else NO_DEFAULT
        ),
        direct_only=schema.input_kind == pb.INPUT_KIND_DIRECT,
        link_only=schema.input_kind == pb.INPUT_KIND_CONNECTION,
        choices=tuple(limits.choices),
        **bounds,
    )


# --- values -------------------------------------------------------------------------------


def convert_value(command: Command, option: Option, values: Sequence[str]) -> Any:
    """The JSON value of `option` from the words written after it; a wrong count or type
    is a LanguageError naming the command and option."""
    where = f"{command.name} {option.flag}"
    if option.link_only:
        raise LanguageError(
            f"{where} takes only a link: pipe a command into it or write "
            f"`{option.flag} @-1` (the output of the previous command)"
        )
    if option.type == "boolean" and not values:
        return True
    if option.type.startswith("list["):
        if not values:
            raise LanguageError(f"{where} needs at least one value")
        if len(values) == 1 and values[0].lstrip().startswith("["):
            return _json(where, values[0], option.type)
        element = option.type[5:-1]
        return [_scalar(where, option, element, value) for value in values]
    if len(values) != 1:
        count = "no value" if not values else f"{len(values)} values ({' '.join(values)})"
        hint = " (quote a text with spaces)" if option.type == "string" and values else ""
        raise LanguageError(f"{where} takes one value, got {count}{hint}")
    return _scalar(where, option, option.type, values[0])


def _scalar(where: str, option: Option, type_name: str, text: str) -> Any:
    if type_name == "integer":
        try:
            value: Any = int(text)
        except ValueError:
            raise LanguageError(f"{where} expects an integer, got {text!r}") from None
        _check_limits(where, option, value)
        return value
    if type_name == "float":
        try:
            value = float(text)
        except ValueError:
            raise LanguageError(f"{where} expects a number, got {text!r}") from None
        if not math.isfinite(value):
            raise LanguageError(f"{where} expects a finite number, got {text!r}")
        _check_limits(where, option, value)
        return value
    if type_name == "boolean":
        lowered = text.lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise LanguageError(f"{where} expects true or false, got {text!r}")
    if type_name == "enum" or option.choices:
        if text not in option.choices:
            raise LanguageError(f"{where} must be one of {', '.join(option.choices)}; got {text!r}")
        return text
    if type_name == "string":
        return text
    if type_name in REFERENCE_KEYS:
        return {REFERENCE_KEYS[type_name]: text}
    return _json(where, text, type_name)


def _json(where: str, text: str, type_name: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise LanguageError(f"{where} expects a JSON {type_name} value, got {text!r}") from None


def _check_limits(where: str, option: Option, value: float) -> None:
    rules = (
        (option.minimum, ">=", lambda limit: value >= limit),
        (option.maximum, "<=", lambda limit: value <= limit),
        (option.exclusive_minimum, ">", lambda limit: value > limit),
        (option.exclusive_maximum, "<", lambda limit: value < limit),
        (option.multiple_of, "a multiple of", lambda step: _is_multiple(value, step)),
    )
    broken = [
        f"{words} {_number(limit)}"
        for limit, words, holds in rules
        if limit is not None and not holds(limit)
    ]
    if broken:
        raise LanguageError(f"{where} must be {' and '.join(broken)}; got {_number(value)}")


def _is_multiple(value: float, step: float) -> bool:
    return step <= 0 or math.isclose(value / step, round(value / step))


def _number(value: float | None) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _similar(name: str, known: str) -> bool:
    """A near miss: one name inside the other (3 characters or more), or the same but for
    one character."""
    if min(len(name), len(known)) >= 3 and (name in known or known in name):
        return True
    if abs(len(name) - len(known)) > 1:
        return False
    differences = sum(a != b for a, b in zip(name, known, strict=False))
    return differences + abs(len(name) - len(known)) <= 1
