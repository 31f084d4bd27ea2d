"""Safe local names for files whose names come from a remote server or a caller."""

from __future__ import annotations

import unicodedata
from pathlib import PurePosixPath

FALLBACK_NAME = "download"


def sanitise_remote_name(name: str | None) -> str | None:
    """A single file name from a server-supplied one, or None if nothing usable is left.

    Path separators of either kind keep only the last segment; control characters and
    leading dots go (no hidden files, no "." or ".."); the result is at most 255 bytes.
    """
    if not name:
        return None
    last = name.replace("\\", "/").rsplit("/", 1)[-1]
    printable = "".join(ch for ch in last if unicodedata.category(ch)[0] != "C")
    cleaned = printable.strip().lstrip(".").strip()
    while len(cleaned.encode()) > 255:
        cleaned = cleaned[:-1]
    return cleaned or None


def is_plain_name(name: str) -> bool:
    """Whether a caller-given file name is one name: no separators, not "." or ".."."""
    return bool(name) and "/" not in name and "\\" not in name and name not in (".", "..")


def is_safe_relative_path(path: str) -> bool:
    """Whether a caller-given relative path stays below its folder."""
    parts = PurePosixPath(path).parts
    return (
        bool(parts)
        and not path.startswith("/")
        and "\\" not in path
        and all(part not in (".", "..") for part in parts)
    )
