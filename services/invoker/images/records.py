"""Image records and the interface of the store that keeps them.

A record says what a stored PNG is (size, origin, the session and node that made it, free
metadata); the file itself lives in `files.ImageFiles`. The store is an asynchronous
interface so a shared database (called from the event loop) can replace the embedded
SQLite one (a blocking store run on its own thread) without touching the library.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from services.common.errors import NotFoundError


class ImageOrigin(StrEnum):
    """Where an image came from."""

    GENERATED = "generated"
    UPLOADED = "uploaded"


@dataclass(frozen=True)
class ImageRecord:
    """The record of one stored image; `name` is its file name and never changes."""

    name: str
    width: int
    height: int
    origin: ImageOrigin
    is_intermediate: bool
    session_id: str
    node_id: str
    create_time: datetime
    update_time: datetime
    metadata: dict[str, Any]
    size_bytes: int


@dataclass(frozen=True)
class ImageQuery:
    """Filters of a listing; None matches every record."""

    session_id: str | None = None
    origin: ImageOrigin | None = None
    is_intermediate: bool | None = None


@dataclass(frozen=True)
class ImageChanges:
    """A sparse update of a record's mutable fields; None leaves a field as it is."""

    is_intermediate: bool | None = None
    metadata: dict[str, Any] | None = field(default=None)


class ImageRecordStore(ABC):
    """Image records by name; listings come newest first."""

    @abstractmethod
    async def add(self, record: ImageRecord) -> None:
        """Store a new record (its name is fresh)."""

    @abstractmethod
    async def get(self, name: str) -> ImageRecord:
        """The record `name`; NotFoundError (IMAGE_NOT_FOUND) when there is none."""

    @abstractmethod
    async def update(self, name: str, changes: ImageChanges, when: datetime) -> ImageRecord:
        """Apply `changes` to the record `name`, stamped `when`, and return it."""

    @abstractmethod
    async def delete(self, name: str) -> ImageRecord:
        """Remove the record `name` and return it as it was."""

    @abstractmethod
    async def search_page(
        self, query: ImageQuery, offset: int, limit: int
    ) -> tuple[list[ImageRecord], int]:
        """One page of the records matching `query`, newest first, and the number of all
        matches, read together so that they agree."""

    @abstractmethod
    async def close(self) -> None: ...


def image_not_found(name: str) -> NotFoundError:
    return NotFoundError(
        f"no image is named {name!r}", reason="IMAGE_NOT_FOUND", metadata={"name": name}
    )
