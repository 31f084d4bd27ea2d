"""Domain string enums and their protobuf enums, matched by member name.

Proto enum values carry their enum's prefix (`DOWNLOAD_JOB_STATUS_RUNNING`) and a zero
`…_UNSPECIFIED`; a domain enum has the bare names (`DownloadJobStatus.RUNNING`). Pairing
them by name once means no service keeps a hand-written table that can fall out of step.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from typing import Any

from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper

from services.common.errors import InvalidArgumentError


class EnumMap:
    """One domain enum and its proto enum."""

    def __init__(self, domain: type[StrEnum], proto: EnumTypeWrapper) -> None:
        self.proto = proto
        prefix = proto.DESCRIPTOR.values[0].name.removesuffix("UNSPECIFIED")
        self._numbers = {member: proto.Value(prefix + member.name) for member in domain}
        self._members = {number: member for member, number in self._numbers.items()}
        self._string_forms: dict[str, str | None] = {
            prefix + member.name: member.value for member in domain
        }
        self._string_forms[prefix + "UNSPECIFIED"] = None

    def to_pb(self, member: StrEnum | None) -> int:
        return 0 if member is None else self._numbers[member]

    def from_pb(self, number: int) -> Any:
        """The member; None for UNSPECIFIED. A number unknown to this server is returned as
        is, for validation to reject with the field's name (or a filter to match nothing)."""
        return None if number == 0 else self._members.get(number, number)

    def required(self, number: int, field: str) -> Any:
        """The member a request field names; UNSPECIFIED and unknown numbers are refused."""
        member = self.from_pb(number)
        if member is None or member == number:
            name = self.proto.DESCRIPTOR.name
            raise InvalidArgumentError(f"{field} must name a {name} value", field=field)
        return member

    def filter(self, numbers: Iterable[int], field: str) -> list[Any]:
        """The members of a repeated filter field, each required."""
        return [self.required(number, field) for number in numbers]

    def string_form(self, value: Any) -> Any:
        """A dict value with a proto enum name ("BASE_MODEL_TYPE_SDXL") as its string form."""
        return self._string_forms.get(value, value) if isinstance(value, str) else value
