"""The image library: store, read, list, update and delete images (ImageService's domain).

An image is a PNG file plus a record. Storing writes the file and its thumbnail first and
the record last, and takes the files away again when the record cannot be written, so a
failed store leaves nothing behind; deleting drops the record first, so no record ever
names a file that is going away; a caller that goes away mid-way leaves the image
stored or removed whole. File and decode work runs in worker threads and the record store
is awaited, never blocking the event loop.
"""

from __future__ import annotations

import asyncio
import io
import os
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from PIL import Image

from services.common.database_url import SQLITE_URL
from services.common.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    ResourceExhaustedError,
)
from services.invoker.images.files import ImageFiles, new_name
from services.invoker.images.png_metadata import Provenance, decode_png, with_provenance
from services.invoker.images.records import (
    ImageChanges,
    ImageOrigin,
    ImageQuery,
    ImageRecord,
    ImageRecordStore,
)
from services.invoker.images.stores import open_image_records
from services.invoker.images.thumbnails import make_thumbnail

log = structlog.get_logger(__name__)

DEFAULT_MAX_IMAGE_BYTES = 64 * 1024 * 1024
"""Largest PNG file an upload may send."""

DEFAULT_MAX_IMAGE_PIXELS = 8192 * 8192
"""Most pixels an uploaded image may have: a small PNG can decompress to gigabytes."""

CONTENT_CHUNK_BYTES = 1024 * 1024
"""Size of the chunks image content is streamed in."""

IMAGES_FOLDER = Path("outputs/images")
"""Where image files go, relative to the root."""

IMAGES_DB = Path("databases/images.db")
"""The SQLite file of the image records, relative to the root."""

SessionCheck = Callable[[str], Awaitable[None]]
"""Raises NotFoundError when no session has the id it is given."""


@dataclass(frozen=True)
class NewImage:
    """What an upload says about its image besides the bytes."""

    is_intermediate: bool = False
    session_id: str = ""
    node_id: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    declared_bytes: int = 0
    """Size the client says it will send; 0 when unknown."""


@dataclass(frozen=True)
class ImageContent:
    """An image's PNG bytes (or its thumbnail's), read in chunks as they are streamed."""

    total_bytes: int
    chunks: AsyncIterator[bytes]


class ImageLibrary:
    """Images in `files` with their records in `store`."""

    def __init__(
        self,
        store: ImageRecordStore,
        files: ImageFiles,
        *,
        max_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
        max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
        check_session: SessionCheck | None = None,
    ) -> None:
        self._store = store
        self._files = files
        self._max_bytes = max_bytes
        self._max_pixels = max_pixels
        self._check_session = check_session

    async def close(self) -> None:
        await self._store.close()

    async def upload(self, new: NewImage, chunks: AsyncIterable[bytes]) -> ImageRecord:
        """Store the PNG that `chunks` carry, with origin UPLOADED.

        Refused, leaving nothing behind: an unknown session (NotFoundError), more bytes
        than the limit (ResourceExhaustedError IMAGE_TOO_LARGE, at once when declared), no
        bytes (EMPTY_IMAGE), a size other than the declared one (SIZE_MISMATCH), bytes that
        are not a PNG (INVALID_IMAGE), the last three naming the field they concern.
        """
        if new.declared_bytes < 0:
            raise InvalidArgumentError(
                "metadata.size_bytes must not be negative", field="metadata.size_bytes"
            )
        if new.declared_bytes > self._max_bytes:
            raise self._too_large()
        if new.session_id and self._check_session is not None:
            await self._check_session(new.session_id)
        data = bytearray()
        async for chunk in chunks:
            data += chunk
            if len(data) > self._max_bytes:
                raise self._too_large()
        if not data:
            raise InvalidArgumentError(
                "the upload has no image bytes", field="chunk", reason="EMPTY_IMAGE"
            )
        if new.declared_bytes and len(data) != new.declared_bytes:
            raise InvalidArgumentError(
                f"metadata.size_bytes is {new.declared_bytes} but {len(data)} bytes were sent",
                field="metadata.size_bytes",
                reason="SIZE_MISMATCH",
            )
        return await _whole(self._store_upload(new, bytes(data)))

    async def save_generated(
        self,
        png: bytes,
        *,
        session_id: str,
        node_id: str,
        graph: dict[str, Any],
        node: dict[str, Any],
        is_intermediate: bool = False,
        metadata: dict[str, Any] | None = None,
    ) -> ImageRecord:
        """Store the PNG a node made, with origin GENERATED; the stored file carries `graph`
        (the session's) and `node` (the saving node's id, type and inputs) in its
        `easel_graph` and `easel_node` chunks. Bytes that are not a PNG are
        InvalidArgumentError (INVALID_IMAGE) naming "png"."""
        new = NewImage(is_intermediate, session_id, node_id, metadata or {})
        provenance = Provenance(graph, node)
        return await _whole(self._store_generated(new, png, provenance))

    async def get(self, name: str) -> ImageRecord:
        return await self._store.get(name)

    async def load_png(self, name: str) -> bytes:
        """The PNG bytes of `name`, for a node that reads it; errors as for `content`."""
        await self._store.get(name)
        return await asyncio.to_thread(self._load_png, name)

    async def content(self, name: str, *, thumbnail: bool = False) -> ImageContent:
        """The PNG bytes of `name` or of its thumbnail (remade if it went missing).

        NotFoundError for an unknown name; FailedPreconditionError (IMAGE_FILE_MISSING)
        when the record is there but its file is not.
        """
        await self._store.get(name)
        file, size = await asyncio.to_thread(self._open_file, name, thumbnail)
        return ImageContent(size, _read_chunks(file))

    async def list(
        self, query: ImageQuery, offset: int, limit: int
    ) -> tuple[list[ImageRecord], int]:
        """A page of the matching records, newest first, and the number of all matches."""
        return await self._store.search_page(query, offset, limit)

    async def update(self, name: str, changes: ImageChanges) -> ImageRecord:
        return await self._store.update(name, changes, _now())

    async def delete(self, name: str) -> ImageRecord:
        """Remove the record `name`, then its file and thumbnail (either may be missing)."""
        return await _whole(self._delete(name))

    async def _store_upload(self, new: NewImage, data: bytes) -> ImageRecord:
        def place() -> ImageRecord:
            image = decode_png(data, max_pixels=self._max_pixels, field="chunk")
            return self._place_files(new, ImageOrigin.UPLOADED, image, data)

        return await self._add(await asyncio.to_thread(place))

    async def _store_generated(
        self, new: NewImage, png: bytes, provenance: Provenance
    ) -> ImageRecord:
        def place() -> ImageRecord:
            image = decode_png(png, max_pixels=self._max_pixels, field="png")
            stored = with_provenance(png, provenance)
            return self._place_files(new, ImageOrigin.GENERATED, image, stored)

        return await self._add(await asyncio.to_thread(place))

    async def _add(self, record: ImageRecord) -> ImageRecord:
        """Writes the record of files just written; takes them away if that fails."""
        try:
            await self._store.add(record)
        except Exception:
            await asyncio.to_thread(self._files.remove, record.name)
            raise
        return record

    def _place_files(
        self, new: NewImage, origin: ImageOrigin, image: Image.Image, png: bytes
    ) -> ImageRecord:
        """Writes the image's file and thumbnail; the record that will name them."""
        moment = _now()
        record = ImageRecord(
            name=new_name(),
            width=image.width,
            height=image.height,
            origin=origin,
            is_intermediate=new.is_intermediate,
            session_id=new.session_id,
            node_id=new.node_id,
            create_time=moment,
            update_time=moment,
            metadata=new.metadata,
            size_bytes=len(png),
        )
        self._files.write(record.name, png, make_thumbnail(image))
        return record

    def _load_png(self, name: str) -> bytes:
        file, _ = self._open_file(name, thumbnail=False)
        with file:
            return file.read()

    def _open_file(self, name: str, thumbnail: bool) -> tuple[io.BufferedReader, int]:
        """The file of image `name`, whose record is there."""
        path = self._files.path(name, thumbnail=thumbnail)
        if thumbnail and not path.exists() and self._files.path(name).exists():
            log.warning("thumbnail missing; making it again", name=name)
            with Image.open(self._files.path(name)) as image:
                self._files.write_thumbnail(name, make_thumbnail(image))
        try:
            file = path.open("rb")
        except FileNotFoundError:
            raise FailedPreconditionError(
                f"the file of image {name} is missing on disk",
                reason="IMAGE_FILE_MISSING",
                metadata={"name": name, "path": str(path)},
            ) from None
        return file, os.fstat(file.fileno()).st_size

    async def _delete(self, name: str) -> ImageRecord:
        record = await self._store.delete(name)
        await asyncio.to_thread(self._files.remove, name)
        return record

    def _too_large(self) -> ResourceExhaustedError:
        return ResourceExhaustedError(
            f"the image is larger than the server's limit of {self._max_bytes} bytes",
            reason="IMAGE_TOO_LARGE",
            metadata={"max_bytes": str(self._max_bytes)},
        )


async def _whole(work: Coroutine[Any, Any, ImageRecord]) -> ImageRecord:
    """`work` run to its end even if the caller goes away meanwhile."""
    return await asyncio.shield(asyncio.ensure_future(work))


async def _read_chunks(file: io.BufferedReader) -> AsyncIterator[bytes]:
    with file:
        while chunk := await asyncio.to_thread(file.read, CONTENT_CHUNK_BYTES):
            yield chunk


def _now() -> datetime:
    return datetime.now(UTC)


async def open_image_library(
    root: Path,
    *,
    max_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    check_session: SessionCheck | None = None,
    database_url: str = SQLITE_URL,
) -> ImageLibrary:
    """The library of the root's images: files in IMAGES_FOLDER, records in IMAGES_DB or
    in the PostgreSQL database of `database_url`."""
    return ImageLibrary(
        await open_image_records(database_url, root / IMAGES_DB),
        ImageFiles(root / IMAGES_FOLDER),
        max_bytes=max_bytes,
        max_pixels=max_pixels,
        check_session=check_session,
    )
