"""The one mapping between domain errors and gRPC statuses, in both directions.

A server turns an `EaselError` into a status code plus a `google.rpc.Status` carrying an
`ErrorInfo` (reason, domain, metadata) and, for bad requests, a `BadRequest`; a client turns
that status back into the same `EaselError` subclass with the same reason, metadata and
field violations.
"""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from services.common import errors

CODE_BY_ERROR: dict[type[errors.EaselError], grpc.StatusCode] = {
    errors.NotFoundError: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExistsError: grpc.StatusCode.ALREADY_EXISTS,
    errors.InvalidArgumentError: grpc.StatusCode.INVALID_ARGUMENT,
    errors.FailedPreconditionError: grpc.StatusCode.FAILED_PRECONDITION,
    errors.PermissionDeniedError: grpc.StatusCode.PERMISSION_DENIED,
    errors.UnauthenticatedError: grpc.StatusCode.UNAUTHENTICATED,
    errors.UnimplementedError: grpc.StatusCode.UNIMPLEMENTED,
    errors.ResourceExhaustedError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.UnavailableError: grpc.StatusCode.UNAVAILABLE,
    errors.DeadlineExceededError: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.OperationCancelledError: grpc.StatusCode.CANCELLED,
    errors.InternalError: grpc.StatusCode.INTERNAL,
}
ERROR_BY_CODE = {code: error for error, code in CODE_BY_ERROR.items()}


def code_for(error: errors.EaselError) -> grpc.StatusCode:
    """The status code of an error, found through its class hierarchy."""
    for cls in type(error).__mro__:
        if cls in CODE_BY_ERROR:
            return CODE_BY_ERROR[cls]
    return grpc.StatusCode.INTERNAL


def to_status(error: errors.EaselError, domain: str) -> grpc.Status:
    """The status a server sends for `error`; `domain` is the package, e.g. easel.downloader.v1."""
    code = code_for(error)
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=domain, metadata=error.metadata)
    details = [_pack(info)]
    if isinstance(error, errors.InvalidArgumentError) and error.violations:
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=violation.field, description=violation.description
                )
                for violation in error.violations
            ]
        )
        details.append(_pack(bad_request))
    message = status_pb2.Status(code=code.value[0], message=error.message, details=details)
    return rpc_status.to_status(message)


def from_rpc_error(error: grpc.RpcError) -> errors.EaselError:
    """The domain error a failed call stands for; a status without details maps by its code."""
    code: grpc.StatusCode = error.code()  # type: ignore[attr-defined]
    message: str = error.details() or code.name  # type: ignore[attr-defined]
    cls = ERROR_BY_CODE.get(code, errors.InternalError)
    reason, metadata, violations = None, {}, []
    rich = _rich_status(error)
    if rich is not None:
        for detail in rich.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason, metadata = info.reason, dict(info.metadata)
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad_request = error_details_pb2.BadRequest()
                detail.Unpack(bad_request)
                violations = [
                    errors.FieldViolation(v.field, v.description)
                    for v in bad_request.field_violations
                ]
    if cls is errors.InvalidArgumentError:
        return errors.InvalidArgumentError(
            message, violations=violations, reason=reason, metadata=metadata
        )
    return cls(message, reason=reason, metadata=metadata)


def _rich_status(error: grpc.RpcError) -> status_pb2.Status | None:
    try:
        return rpc_status.from_call(error)  # type: ignore[arg-type]
    except ValueError:
        return None


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed
