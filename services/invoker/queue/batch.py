"""A batch: one graph run as many sessions, each with its own values for chosen inputs.

`expand_batch` turns the value lists into one input override per session, zipped (the
i-th session takes every list's i-th value) or as a product (every combination, the first
field varying slowest). A refusal names the request field, so nothing is created for a
batch that cannot be expanded as a whole.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from services.common.errors import InvalidArgumentError

MAX_BATCH_SESSIONS = 10_000

Overrides = dict[str, dict[str, Any]]
"""Direct input values of one session: node id -> input field name -> value."""


class BatchMode(StrEnum):
    """How the fields' value lists combine into sessions."""

    ZIP = "ZIP"
    PRODUCT = "PRODUCT"


@dataclass(frozen=True)
class BatchField:
    """The values one node input takes across the batch, one per session (or combination)."""

    node_id: str
    field: str
    values: Sequence[Any]


def expand_batch(
    fields: Sequence[BatchField], mode: BatchMode, *, where: str = "fields"
) -> list[Overrides]:
    """One override per session, in the order the sessions are queued. INVALID_ARGUMENT
    for no fields, a field given twice, an empty or mixed-type value list, zip lists of
    different lengths, or more than MAX_BATCH_SESSIONS sessions."""
    if not fields:
        raise InvalidArgumentError("a batch needs at least one field", field=where)
    seen: dict[tuple[str, str], int] = {}
    for index, batch_field in enumerate(fields):
        _check_field(batch_field, f"{where}[{index}]", seen, index)
    values = [batch_field.values for batch_field in fields]
    if mode is BatchMode.ZIP:
        _check_lengths(fields, where)
        _check_count(len(values[0]), where)
        rows: Iterable[Sequence[Any]] = zip(*values, strict=True)
    else:
        _check_count(math.prod(len(field_values) for field_values in values), where)
        rows = itertools.product(*values)
    return [_overrides(fields, row) for row in rows]


def _check_field(
    batch_field: BatchField, where: str, seen: dict[tuple[str, str], int], index: int
) -> None:
    if not batch_field.node_id:
        raise InvalidArgumentError("node_id must not be empty", field=f"{where}.node_id")
    if not batch_field.field:
        raise InvalidArgumentError("field must not be empty", field=f"{where}.field")
    key = (batch_field.node_id, batch_field.field)
    if key in seen:
        raise InvalidArgumentError(
            f"input {batch_field.node_id}.{batch_field.field} is already batched by "
            f"fields[{seen[key]}]",
            field=where,
            reason="DUPLICATE_BATCH_FIELD",
            metadata={"node_id": batch_field.node_id, "field": batch_field.field},
        )
    seen[key] = index
    if not batch_field.values:
        raise InvalidArgumentError("values must hold at least one value", field=f"{where}.values")
    first = _kind(batch_field.values[0])
    for position, value in enumerate(batch_field.values):
        if _kind(value) != first:
            raise InvalidArgumentError(
                f"values[{position}] is {_kind(value)} but values[0] is {first}: the values "
                "of one field must all have the same type",
                field=f"{where}.values[{position}]",
                reason="BATCH_VALUE_TYPE_MISMATCH",
                metadata={"node_id": batch_field.node_id, "field": batch_field.field},
            )


def _check_lengths(fields: Sequence[BatchField], where: str) -> None:
    expected = len(fields[0].values)
    for index, batch_field in enumerate(fields):
        if len(batch_field.values) != expected:
            raise InvalidArgumentError(
                f"zipped value lists must have the same length: {where}[{index}].values has "
                f"{len(batch_field.values)}, {where}[0].values has {expected}",
                field=f"{where}[{index}].values",
                reason="BATCH_LENGTH_MISMATCH",
                metadata={"node_id": batch_field.node_id, "field": batch_field.field},
            )


def _check_count(count: int, where: str) -> None:
    if count > MAX_BATCH_SESSIONS:
        raise InvalidArgumentError(
            f"the batch would make {count} sessions, more than {MAX_BATCH_SESSIONS}",
            field=where,
            reason="BATCH_TOO_LARGE",
        )


def _overrides(fields: Sequence[BatchField], row: Sequence[Any]) -> Overrides:
    overrides: Overrides = {}
    for batch_field, value in zip(fields, row, strict=True):
        overrides.setdefault(batch_field.node_id, {})[batch_field.field] = value
    return overrides


def _kind(value: Any) -> str:
    """The JSON type of a value; integers and floats are both numbers (JSON has one)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "a list"
    return "an object"
