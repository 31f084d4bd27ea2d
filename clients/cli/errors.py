"""What a failed command prints and the exit status it ends with, for every command at once.

Commands let errors propagate: the SDK's domain errors (`services.common.errors`), the
CLI's own `CliError`s and anything unexpected all reach `report`, which prints one line of
what went wrong, the fields at fault, and a hint of what to do, and picks the exit code.
A traceback is printed only with `--debug`. The codes are a public contract for scripts:
they are listed in `easel --help` and the README, from `EXIT_CODES` here.
"""

from __future__ import annotations

import sys
import traceback
from enum import IntEnum
from typing import TypeVar

import typer

from clients.sdk import JobFailedError
from services.common import errors

_T = TypeVar("_T")


class ExitCode(IntEnum):
    """The exit statuses of `easel`."""

    OK = 0
    ERROR = 1
    USAGE = 2
    NOT_FOUND = 3
    UNAVAILABLE = 4
    FAILED = 5
    REFUSED = 6
    UNAUTHENTICATED = 7
    INTERRUPTED = 130


EXIT_CODES: dict[ExitCode, str] = {
    ExitCode.OK: "success",
    ExitCode.ERROR: "an unexpected failure: a fault inside a service, a local file error, a bug",
    ExitCode.USAGE: "bad usage: an unknown command or option, a bad value, invalid settings, "
    "or a request a service rejected as invalid",
    ExitCode.NOT_FOUND: "what the command names does not exist (model key, job id, image name)",
    ExitCode.UNAVAILABLE: "a service cannot be reached or did not answer in time",
    ExitCode.FAILED: "the work ran and did not succeed (an install or download that failed "
    "or was cancelled)",
    ExitCode.REFUSED: "a service refused the request in its current state (it exists already, "
    "the job has finished, a path outside the allowed roots, out of memory or disk)",
    ExitCode.UNAUTHENTICATED: "the services require a token and none or a wrong one was given",
    ExitCode.INTERRUPTED: "interrupted with Ctrl-C",
}


def exit_codes_help() -> str:
    """The exit-code table as `--help` shows it (typer joins single line breaks)."""
    lines = [f"{int(code)}  {meaning}" for code, meaning in EXIT_CODES.items()]
    return "\n".join(["Exit codes:", *lines])


class CliError(Exception):
    """A failure the CLI itself detects, with its exit code and what to do about it."""

    code = ExitCode.ERROR

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class UsageError(CliError):
    """Options or settings that make no sense together, found after parsing."""

    code = ExitCode.USAGE


class RunFailedError(CliError):
    """Work that a command started or followed ended in failure or was cancelled."""

    code = ExitCode.FAILED


class ServicesDownError(CliError):
    """Services that do not report SERVING."""

    code = ExitCode.UNAVAILABLE


_CODE_BY_ERROR: dict[type[errors.EaselError], ExitCode] = {
    JobFailedError: ExitCode.FAILED,
    errors.InvalidArgumentError: ExitCode.USAGE,
    errors.NotFoundError: ExitCode.NOT_FOUND,
    errors.UnavailableError: ExitCode.UNAVAILABLE,
    errors.DeadlineExceededError: ExitCode.UNAVAILABLE,
    errors.OperationCancelledError: ExitCode.FAILED,
    errors.AlreadyExistsError: ExitCode.REFUSED,
    errors.FailedPreconditionError: ExitCode.REFUSED,
    errors.PermissionDeniedError: ExitCode.REFUSED,
    errors.ResourceExhaustedError: ExitCode.REFUSED,
    errors.UnimplementedError: ExitCode.REFUSED,
    errors.UnauthenticatedError: ExitCode.UNAUTHENTICATED,
    errors.InternalError: ExitCode.ERROR,
}

_REACH = (
    "Start the services (`make run`), or point easel at them with --<service>-address or "
    "EASEL_<SERVICE>_ADDRESS; `easel status` checks each one."
)

_HINT_BY_ERROR: dict[type[errors.EaselError], str] = {
    errors.InvalidArgumentError: "Fix the value named; `--help` after the command lists its "
    "options.",
    errors.NotFoundError: "Check the name or id; the `list` commands show what exists.",
    errors.UnavailableError: _REACH,
    errors.DeadlineExceededError: "The service did not answer in time. " + _REACH,
    errors.UnauthenticatedError: "Give the services' token: EASEL_AUTH_TOKEN, `auth_token` in "
    "easel.yaml under the root, or --auth-token.",
    errors.AlreadyExistsError: "Remove the existing one first, or choose another name.",
    errors.PermissionDeniedError: "The service's settings do not allow it.",
    errors.ResourceExhaustedError: "Free memory or disk space, or raise the limit in the "
    "service's settings.",
    errors.UnimplementedError: "This server does not support it.",
    errors.InternalError: "A fault inside a service: its log has the details.",
}

# Hints for reasons that say more than their status code; `{name}` is the error's metadata.
_HINT_BY_REASON: dict[str, str] = {
    "MODEL_NOT_FOUND": "`easel models list` shows the installed models and their keys.",
    "DOWNLOAD_JOB_NOT_FOUND": "`easel downloads list` shows the download jobs.",
    "QUEUE_ITEM_NOT_FOUND": "`easel queue list` shows the queue items.",
    "IMAGE_NOT_FOUND": "`easel images list` shows the stored images.",
    "REMOTE_NOT_FOUND": "Check the repo id or URL.",
    "REMOTE_ACCESS_DENIED": "The repo or file may be gated or private: give a token with "
    "--access-token.",
    "PATH_NOT_ALLOWED": "Put it under the root or a folder the service allows "
    "(allowed: {allowed_roots}).",
    "MODEL_FILES_MISSING": "Nothing is at {path} on the model manager's machine.",
    "MODEL_PATH_ALREADY_REGISTERED": "It is installed already: `easel models show {key}`.",
    "UNKNOWN_MODEL": "If it is a model, name its --type and --base to install it anyway.",
    "UNKNOWN_BASE_MODEL": "Name its --base to install it anyway.",
    "DOWNLOAD_JOB_FINISHED": "The job has finished already; nothing is left to change.",
    "INSTALL_JOB_FINISHED": "The job has finished already; nothing is left to change.",
    "QUEUE_ITEM_FINISHED": "The item has finished already; nothing is left to cancel.",
    "UNCONDITIONAL_DELETE_DISABLED": "Files outside the models folder are deleted only with "
    "the model manager's `allow_unconditional_delete` setting.",
    "DISK_FULL": "Free disk space, or lower the service's free-space reserve.",
}


def report(error: BaseException, *, debug: bool = False) -> ExitCode:
    """Print `error` on stderr as what went wrong and what to do; return its exit code."""
    if debug and not isinstance(error, KeyboardInterrupt):
        traceback.print_exception(error, file=sys.stderr)
    code, message, details, hint = _describe(error)
    _echo(typer.style("error: ", fg="red", bold=True) + message)
    for line in details:
        _echo(f"  {line}")
    if hint:
        _echo(typer.style("hint: ", fg="yellow") + hint)
    return code


def _describe(error: BaseException) -> tuple[ExitCode, str, list[str], str | None]:
    if isinstance(error, KeyboardInterrupt):
        return ExitCode.INTERRUPTED, "interrupted", [], None
    if isinstance(error, CliError):
        return error.code, error.message, [], error.hint
    if isinstance(error, errors.EaselError):
        code = _lookup(_CODE_BY_ERROR, error) or ExitCode.ERROR
        details = [
            f"{v.field}: {v.description}" if v.description != error.message else f"field: {v.field}"
            for v in getattr(error, "violations", ())
        ]
        message = f"{error.message} ({error.reason})"
        return code, message, details, _hint(error)
    if isinstance(error, OSError):
        return ExitCode.ERROR, str(error), [], None
    message = f"unexpected {type(error).__name__}: {error}"
    return (
        ExitCode.ERROR,
        message,
        [],
        "This is a bug in easel; rerun with --debug for the traceback.",
    )


def reason_hint(reason: str, metadata: dict[str, str]) -> str | None:
    """What to do about a failure with this ErrorInfo reason (also a job's error_type)."""
    template = _HINT_BY_REASON.get(reason)
    try:
        return template.format_map(metadata) if template else None
    except KeyError:  # the server sent fewer ids than usual
        return None


def _hint(error: errors.EaselError) -> str | None:
    return reason_hint(error.reason, error.metadata) or _lookup(_HINT_BY_ERROR, error)


def _lookup(table: dict[type[errors.EaselError], _T], error: errors.EaselError) -> _T | None:
    for cls in type(error).__mro__:
        if cls in table:
            return table[cls]
    return None


def _echo(text: str) -> None:
    typer.echo(text, err=True)
