"""ImageService over gRPC: each RPC is one call into the image library."""

from __future__ import annotations

from collections.abc import AsyncIterator

from grpc import aio

from easel.invoker.v1 import image_service_pb2 as pb
from easel.invoker.v1 import image_service_pb2_grpc
from services.common import paging
from services.invoker import image_convert as convert
from services.invoker.images.library import ImageLibrary


class ImageServicer(image_service_pb2_grpc.ImageServiceServicer):
    def __init__(self, library: ImageLibrary) -> None:
        self._library = library

    async def UploadImage(
        self, request_iterator: AsyncIterator[pb.UploadImageRequest], context: aio.ServicerContext
    ) -> pb.UploadImageResponse:
        new, chunks = await convert.upload_request(request_iterator)
        record = await self._library.upload(new, chunks)
        return pb.UploadImageResponse(image=convert.record_to_pb(record))

    async def GetImage(
        self, request: pb.GetImageRequest, context: aio.ServicerContext
    ) -> pb.GetImageResponse:
        record = await self._library.get(convert.required_name(request.name))
        return pb.GetImageResponse(image=convert.record_to_pb(record))

    async def GetImageContent(
        self, request: pb.GetImageContentRequest, context: aio.ServicerContext
    ) -> AsyncIterator[pb.GetImageContentResponse]:
        name = convert.required_name(request.name)
        content = await self._library.content(name, thumbnail=request.thumbnail)
        total = content.total_bytes
        async for chunk in content.chunks:
            yield pb.GetImageContentResponse(chunk=chunk, total_bytes=total)
            total = 0

    async def ListImages(
        self, request: pb.ListImagesRequest, context: aio.ServicerContext
    ) -> pb.ListImagesResponse:
        query, fingerprint = convert.list_query(request)
        page = paging.page(request.page_size, request.page_token, fingerprint)
        records, total = await self._library.list(query, page.offset, page.size)
        return pb.ListImagesResponse(
            images=[convert.record_to_pb(record) for record in records],
            next_page_token=page.next_token(total),
        )

    async def DeleteImage(
        self, request: pb.DeleteImageRequest, context: aio.ServicerContext
    ) -> pb.DeleteImageResponse:
        await self._library.delete(convert.required_name(request.name))
        return pb.DeleteImageResponse()

    async def UpdateImage(
        self, request: pb.UpdateImageRequest, context: aio.ServicerContext
    ) -> pb.UpdateImageResponse:
        name = convert.required_name(request.image.name, "image.name")
        record = await self._library.update(name, convert.update_changes(request))
        return pb.UpdateImageResponse(image=convert.record_to_pb(record))
