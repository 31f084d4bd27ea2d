"""Domain errors shared by every service, independent of gRPC.

Domain code raises these; `services.common.error_status` turns each into its status code
with `google.rpc` details on the server, and back into the same class on the client, so
no caller ever parses a message string to learn what went wrong.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request: its path (e.g. `config.base`) and what is wrong."""

    field: str
    description: str


class EaselError(Exception):
    """Base of every error a service reports to its callers.

    `reason` is a stable UPPER_SNAKE_CASE identifier of the cause, `metadata` the ids and
    values involved (for example the unknown key); both reach clients intact.
    """

    default_reason = "ERROR"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata: dict[str, str] = dict(metadata or {})

    def __eq__(self, other: object) -> bool:
        return (
            type(other) is type(self)
            and isinstance(other, EaselError)
            and (other.message, other.reason, other.metadata)
            == (self.message, self.reason, self.metadata)
        )

    __hash__ = Exception.__hash__


class NotFoundError(EaselError):
    """An id or key that names nothing."""

    default_reason = "NOT_FOUND"


class AlreadyExistsError(EaselError):
    """Something with the same identity exists already."""

    default_reason = "ALREADY_EXISTS"


class InvalidArgumentError(EaselError):
    """A malformed request; `violations` name the offending fields."""

    default_reason = "INVALID_ARGUMENT"

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        violations: Sequence[FieldViolation] = (),
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.violations = list(violations)
        if field is not None:
            self.violations.insert(0, FieldViolation(field, message))

    def __eq__(self, other: object) -> bool:
        return (
            super().__eq__(other)
            and isinstance(other, InvalidArgumentError)
            and other.violations == self.violations
        )

    __hash__ = Exception.__hash__


class FailedPreconditionError(EaselError):
    """A well-formed request the current state does not allow (a finished job, files gone)."""

    default_reason = "FAILED_PRECONDITION"


class PermissionDeniedError(EaselError):
    """The request is understood but not allowed (a path outside the configured roots)."""

    default_reason = "PERMISSION_DENIED"


class UnauthenticatedError(EaselError):
    """A missing or wrong bearer token."""

    default_reason = "UNAUTHENTICATED"


class UnimplementedError(EaselError):
    """No implementation for this request: no loader for a model type, an RPC not built yet."""

    default_reason = "UNIMPLEMENTED"


class ResourceExhaustedError(EaselError):
    """Out of memory, disk or another bounded resource."""

    default_reason = "RESOURCE_EXHAUSTED"


class UnavailableError(EaselError):
    """A service this one depends on cannot be reached."""

    default_reason = "UNAVAILABLE"


class DeadlineExceededError(EaselError):
    """The caller's deadline passed before the work finished; the work itself goes on."""

    default_reason = "DEADLINE_EXCEEDED"


class OperationCancelledError(EaselError):
    """The work was cancelled by its caller."""

    default_reason = "CANCELLED"


class InternalError(EaselError):
    """A fault inside the service; its log has the traceback."""

    default_reason = "INTERNAL"
