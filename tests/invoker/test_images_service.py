"""ImageService over the wire: a real gRPC server with the suite's interceptor serving the
image library, called through generated stubs; errors arrive as status codes with their
reason and field."""

from __future__ import annotations

import io
import os
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import grpc
import pytest
from google.protobuf import field_mask_pb2
from grpc import aio
from PIL import Image

from clients.sdk import EaselClient
from easel.invoker.v1 import image_service_pb2 as pb
from easel.invoker.v1 import image_service_pb2_grpc, session_service_pb2
from services.common import errors
from services.common.error_status import from_rpc_error
from services.common.server_interceptor import ServerCallInterceptor
from services.invoker.image_servicer import ImageServicer
from services.invoker.images.library import open_image_library
from services.invoker.images.png_metadata import Provenance, encode_png, read_provenance
from tests.conftest import SUITE_TOKEN
from tests.processes import client_settings, start_service, suite_env, wait_serving

MIB = 1024 * 1024


def png(width: int = 32, height: int = 16) -> bytes:
    return encode_png(Image.new("RGB", (width, height), "blue"))


def upload(data: bytes, chunk: int = MIB, **metadata) -> Iterable[pb.UploadImageRequest]:
    yield pb.UploadImageRequest(metadata=pb.UploadImageMetadata(**metadata))
    for at in range(0, len(data), chunk):
        yield pb.UploadImageRequest(chunk=data[at : at + chunk])


async def refused(call) -> tuple[grpc.StatusCode, errors.EaselError]:
    with pytest.raises(aio.AioRpcError) as caught:
        await call
    return caught.value.code(), from_rpc_error(caught.value)


async def content(stub, name: str, thumbnail: bool = False) -> tuple[bytes, list[int]]:
    call = stub.GetImageContent(pb.GetImageContentRequest(name=name, thumbnail=thumbnail))
    messages = [message async for message in call]
    return b"".join(m.chunk for m in messages), [m.total_bytes for m in messages]


class Suite:
    def __init__(self, root: Path, stub: image_service_pb2_grpc.ImageServiceStub, library):
        self.root = root
        self.stub = stub
        self.library = library

    def files(self) -> list[str]:
        folder = self.root / "outputs" / "images"
        return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())

    async def names(self) -> list[str]:
        listed = await self.stub.ListImages(pb.ListImagesRequest())
        return [image.name for image in listed.images]


@pytest.fixture
async def suite(tmp_path: Path) -> AsyncIterator[Suite]:
    library = await open_image_library(tmp_path, max_bytes=3 * MIB)
    server = aio.server(interceptors=[ServerCallInterceptor("easel.invoker.v1", None)])
    image_service_pb2_grpc.add_ImageServiceServicer_to_server(ImageServicer(library), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield Suite(tmp_path, image_service_pb2_grpc.ImageServiceStub(channel), library)
    await server.stop(None)
    await library.close()


async def test_upload_get_download_list_update_delete(suite: Suite):
    data = encode_png(Image.frombytes("RGB", (700, 700), os.urandom(700 * 700 * 3)))
    assert len(data) > MIB
    stub = suite.stub
    stored = (
        await stub.UploadImage(
            upload(data, 256 * 1024, session_id="s", node_id="n", size_bytes=len(data))
        )
    ).image
    assert (stored.width, stored.height, stored.size_bytes) == (700, 700, len(data))
    assert (stored.origin, stored.session_id, stored.node_id) == (
        pb.IMAGE_ORIGIN_UPLOADED,
        "s",
        "n",
    )
    assert stored.create_time.ToDatetime() == stored.update_time.ToDatetime()
    assert (await stub.GetImage(pb.GetImageRequest(name=stored.name))).image == stored

    body, totals = await content(stub, stored.name)
    assert body == data
    assert totals[0] == len(data)
    assert set(totals[1:]) == {0}
    assert len(totals) == 2  # 1 MiB chunks
    thumbnail, _ = await content(stub, stored.name, thumbnail=True)
    assert Image.open(io.BytesIO(thumbnail)).size == (256, 256)

    request = pb.UpdateImageRequest(
        image=pb.ImageRecord(name=stored.name, is_intermediate=True, width=1),
        update_mask=field_mask_pb2.FieldMask(paths=["is_intermediate"]),
    )
    request.image.metadata.update({"ignored": True})
    updated = (await stub.UpdateImage(request)).image
    assert updated.is_intermediate
    assert updated.width == 700
    assert not updated.metadata.fields
    whole = pb.UpdateImageRequest(image=pb.ImageRecord(name=stored.name))
    whole.image.metadata.update({"rating": 5})
    updated = (await stub.UpdateImage(whole)).image  # empty mask: both fields
    assert not updated.is_intermediate
    assert dict(updated.metadata) == {"rating": 5}

    await stub.DeleteImage(pb.DeleteImageRequest(name=stored.name))
    assert await suite.names() == []
    assert suite.files() == []
    code, _ = await refused(stub.GetImage(pb.GetImageRequest(name=stored.name)))
    assert code == grpc.StatusCode.NOT_FOUND


async def test_list_pages_newest_first_with_filters(suite: Suite):
    stub = suite.stub
    names = [
        (await stub.UploadImage(upload(png(), is_intermediate=i == 2, session_id="s"))).image.name
        for i in range(3)
    ]
    generated = await suite.library.save_generated(
        png(), session_id="s", node_id="save", graph={"nodes": {}}, node={"a": 1}
    )
    first = await stub.ListImages(pb.ListImagesRequest(page_size=3))
    assert [i.name for i in first.images] == [generated.name, names[2], names[1]]
    rest = await stub.ListImages(
        pb.ListImagesRequest(page_size=3, page_token=first.next_page_token)
    )
    assert [i.name for i in rest.images] == [names[0]]
    assert rest.next_page_token == ""
    uploaded = await stub.ListImages(
        pb.ListImagesRequest(origin=pb.IMAGE_ORIGIN_UPLOADED, is_intermediate=False)
    )
    assert [i.name for i in uploaded.images] == [names[1], names[0]]
    final = await stub.ListImages(pb.ListImagesRequest(is_intermediate=False, session_id="s"))
    assert len(final.images) == 3

    code, error = await refused(
        stub.ListImages(
            pb.ListImagesRequest(page_token=first.next_page_token, origin=pb.IMAGE_ORIGIN_UPLOADED)
        )
    )
    assert (code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN")
    code, _ = await refused(stub.ListImages(pb.ListImagesRequest(page_size=-1)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT

    body, _ = await content(stub, generated.name)
    assert read_provenance(body) == Provenance({"nodes": {}}, {"a": 1})


def requests(*messages: pb.UploadImageRequest) -> Iterable[pb.UploadImageRequest]:
    yield from messages


META = pb.UploadImageRequest(metadata=pb.UploadImageMetadata())


@pytest.mark.parametrize(
    ("stream", "code", "reason", "field"),
    [
        (lambda: requests(), grpc.StatusCode.INVALID_ARGUMENT, "METADATA_NOT_FIRST", "metadata"),
        (
            lambda: requests(pb.UploadImageRequest(chunk=png())),
            grpc.StatusCode.INVALID_ARGUMENT,
            "METADATA_NOT_FIRST",
            "metadata",
        ),
        (
            lambda: requests(META, pb.UploadImageRequest(chunk=png()), META),
            grpc.StatusCode.INVALID_ARGUMENT,
            "METADATA_NOT_FIRST",
            "metadata",
        ),
        (lambda: requests(META), grpc.StatusCode.INVALID_ARGUMENT, "EMPTY_IMAGE", "chunk"),
        (
            lambda: requests(META, pb.UploadImageRequest(chunk=b"")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_CHUNK_SIZE",
            "chunk",
        ),
        (
            lambda: requests(META, pb.UploadImageRequest(chunk=b"x" * (MIB + 1))),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_CHUNK_SIZE",
            "chunk",
        ),
        (
            lambda: upload(b"GIF89a this is no png"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_IMAGE",
            "chunk",
        ),
        (
            lambda: upload(png(), size_bytes=4 * MIB),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "IMAGE_TOO_LARGE",
            None,
        ),
        (
            lambda: upload(os.urandom(4 * MIB)),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "IMAGE_TOO_LARGE",
            None,
        ),
    ],
)
async def test_a_refused_upload_answers_its_error_and_stores_nothing(
    suite: Suite, stream, code, reason, field
):
    kept = (await suite.stub.UploadImage(upload(png()))).image.name
    got, error = await refused(suite.stub.UploadImage(stream()))
    assert (got, error.reason) == (code, reason)
    if field is not None:
        assert isinstance(error, errors.InvalidArgumentError)
        assert error.violations[0].field == field
    assert await suite.names() == [kept]
    assert suite.files() == [kept, f"thumbnails/{kept}"]


async def test_errors_of_the_other_rpcs(suite: Suite):
    stub = suite.stub
    name = (await stub.UploadImage(upload(png()))).image.name
    unknown = "3f2b8c1e-5d4a-4e8f-9b7c-1a2d3e4f5a6b.png"
    for call in (
        stub.GetImage(pb.GetImageRequest(name=unknown)),
        stub.DeleteImage(pb.DeleteImageRequest(name="../../etc/passwd")),
        stub.UpdateImage(pb.UpdateImageRequest(image=pb.ImageRecord(name=unknown))),
    ):
        code, error = await refused(call)
        assert (code, error.reason) == (grpc.StatusCode.NOT_FOUND, "IMAGE_NOT_FOUND")
    code, error = await refused(content(stub, unknown))
    assert (code, error.reason) == (grpc.StatusCode.NOT_FOUND, "IMAGE_NOT_FOUND")

    code, error = await refused(stub.GetImage(pb.GetImageRequest()))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert isinstance(error, errors.InvalidArgumentError)
    assert error.violations[0].field == "name"
    for path in ("width", "nonsense"):
        request = pb.UpdateImageRequest(
            image=pb.ImageRecord(name=name, is_intermediate=True),
            update_mask=field_mask_pb2.FieldMask(paths=["is_intermediate", path]),
        )
        code, error = await refused(stub.UpdateImage(request))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert isinstance(error, errors.InvalidArgumentError)
        assert error.violations[0].field == "update_mask"
    assert not (await stub.GetImage(pb.GetImageRequest(name=name))).image.is_intermediate

    (suite.root / "outputs" / "images" / name).unlink()
    code, error = await refused(content(stub, name))
    assert (code, error.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "IMAGE_FILE_MISSING")
    await stub.DeleteImage(pb.DeleteImageRequest(name=name))  # a missing file is no error
    assert await suite.names() == []


def test_the_invoker_refuses_an_upload_naming_an_unknown_session(tmp_path: Path):
    root = tmp_path / "root"
    root.mkdir()
    env = suite_env(root, EASEL_AUTH_TOKEN=SUITE_TOKEN)
    service = start_service("invoker", env, tmp_path)
    stored_files = root / "outputs" / "images"
    try:
        wait_serving(service)
        with EaselClient(client_settings(env)) as easel:
            unknown = "6f1c2b3a-4d5e-4f60-8a7b-9c0d1e2f3a4b"
            with pytest.raises(errors.NotFoundError) as caught:
                easel.images.UploadImage(upload(png(), session_id=unknown))
            assert caught.value.reason == "SESSION_NOT_FOUND"
            assert not easel.images.ListImages(pb.ListImagesRequest()).images
            assert not [p for p in stored_files.rglob("*") if p.is_file()]

            request = session_service_pb2.CreateSessionRequest()
            session = easel.sessions.CreateSession(request).session
            stored = easel.images.UploadImage(upload(png(), session_id=session.id)).image
            assert stored.session_id == session.id
            assert (stored_files / stored.name).is_file()
    finally:
        service.stop()
