"""Conversions between ImageService's protobuf messages and the image library's domain."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from google.protobuf import json_format, struct_pb2

from easel.invoker.v1 import image_service_pb2 as pb
from services.common.errors import InvalidArgumentError
from services.common.proto_enums import EnumMap
from services.invoker.images.library import NewImage
from services.invoker.images.records import ImageChanges, ImageOrigin, ImageQuery, ImageRecord

ORIGIN = EnumMap(ImageOrigin, pb.ImageOrigin)
MAX_CHUNK_BYTES = 1024 * 1024
MUTABLE_FIELDS = ("metadata", "is_intermediate")


def record_to_pb(record: ImageRecord) -> pb.ImageRecord:
    message = pb.ImageRecord(
        name=record.name,
        width=record.width,
        height=record.height,
        origin=ORIGIN.to_pb(record.origin),
        is_intermediate=record.is_intermediate,
        session_id=record.session_id,
        node_id=record.node_id,
        size_bytes=record.size_bytes,
    )
    message.create_time.FromDatetime(record.create_time)
    message.update_time.FromDatetime(record.update_time)
    message.metadata.update(record.metadata)
    return message


async def upload_request(
    requests: AsyncIterator[pb.UploadImageRequest],
) -> tuple[NewImage, AsyncIterator[bytes]]:
    """The metadata of an upload stream and its content chunks, each checked as it comes:
    metadata only first (METADATA_NOT_FIRST), chunks of 1 byte to 1 MiB (INVALID_CHUNK_SIZE)."""
    first = await anext(requests, None)
    if first is None or first.WhichOneof("data") != "metadata":
        raise _metadata_not_first()
    metadata = first.metadata
    new = NewImage(
        is_intermediate=metadata.is_intermediate,
        session_id=metadata.session_id,
        node_id=metadata.node_id,
        metadata=_dict(metadata.metadata),
        declared_bytes=metadata.size_bytes,
    )
    return new, _chunks(requests)


def required_name(name: str, field: str = "name") -> str:
    if not name:
        raise InvalidArgumentError(f"{field} is required", field=field)
    return name


def list_query(request: pb.ListImagesRequest) -> tuple[ImageQuery, dict[str, Any]]:
    """The filter of a ListImages request and the fingerprint its page tokens carry."""
    query = ImageQuery(
        session_id=request.session_id or None,
        origin=ORIGIN.required(request.origin, "origin") if request.origin else None,
        is_intermediate=(request.is_intermediate if request.HasField("is_intermediate") else None),
    )
    fingerprint = {
        "session_id": query.session_id,
        "origin": query.origin,
        "is_intermediate": query.is_intermediate,
    }
    return query, fingerprint


def update_changes(request: pb.UpdateImageRequest) -> ImageChanges:
    """The changes an UpdateImage request asks for; an empty mask means every mutable field."""
    paths = list(request.update_mask.paths) or list(MUTABLE_FIELDS)
    refused = [path for path in paths if path not in MUTABLE_FIELDS]
    if refused:
        raise InvalidArgumentError(
            f"update_mask names {', '.join(refused)}; only metadata and is_intermediate "
            "can be changed",
            field="update_mask",
        )
    image = request.image
    return ImageChanges(
        is_intermediate=image.is_intermediate if "is_intermediate" in paths else None,
        metadata=_dict(image.metadata) if "metadata" in paths else None,
    )


async def _chunks(requests: AsyncIterator[pb.UploadImageRequest]) -> AsyncIterator[bytes]:
    async for request in requests:
        case = request.WhichOneof("data")
        if case == "metadata":
            raise _metadata_not_first()
        if case is None or not 1 <= len(request.chunk) <= MAX_CHUNK_BYTES:
            raise InvalidArgumentError(
                "each chunk must hold 1 byte to 1 MiB",
                field="chunk",
                reason="INVALID_CHUNK_SIZE",
            )
        yield request.chunk


def _metadata_not_first() -> InvalidArgumentError:
    return InvalidArgumentError(
        "an upload's first message, and only that one, must carry metadata",
        field="metadata",
        reason="METADATA_NOT_FIRST",
    )


def _dict(struct: struct_pb2.Struct) -> dict[str, Any]:
    return json_format.MessageToDict(struct)
