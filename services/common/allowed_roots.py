"""Paths named by remote callers may only reach inside the folders a setting allows.

A path is resolved first (symlinks and ".." followed), so neither can escape a root.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from services.common.errors import InvalidArgumentError, PermissionDeniedError


def resolve_within(
    path: str | Path, roots: Sequence[Path], *, field: str, invalid_reason: str
) -> Path:
    """The absolute, resolved form of `path`, which must lie inside one of `roots`.

    Relative paths are refused with `invalid_reason` (a remote caller cannot know our
    working directory); paths outside every root with PATH_NOT_ALLOWED.
    """
    candidate = Path(path)
    if not str(path) or not candidate.is_absolute():
        raise InvalidArgumentError(
            f"{field} must be an absolute path, got {str(path)!r}",
            field=field,
            reason=invalid_reason,
            metadata={"path": str(path)},
        )
    resolved = candidate.resolve()
    for root in roots:
        if resolved.is_relative_to(root.resolve()):
            return resolved
    raise PermissionDeniedError(
        f"{resolved} is outside the allowed roots",
        reason="PATH_NOT_ALLOWED",
        metadata={"path": str(resolved), "allowed_roots": ",".join(str(r) for r in roots)},
    )
