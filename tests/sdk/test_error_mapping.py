"""Every status code protos/README.md lists comes back to both clients as the domain error
the server raised, with its message, reason, metadata and field violations (all of which
the errors' equality compares), whatever the call's kind: unary, streamed response,
streamed request."""

from __future__ import annotations

import re
from collections.abc import Iterator

import grpc
import pytest

from clients.sdk import AsyncEaselClient, ClientSettings, EaselClient
from easel.invoker.v1 import image_service_pb2 as image_pb
from easel.invoker.v1 import (
    image_service_pb2_grpc,
    queue_service_pb2_grpc,
    session_service_pb2_grpc,
)
from easel.invoker.v1 import queue_service_pb2 as queue_pb
from easel.invoker.v1 import session_service_pb2 as session_pb
from services.common import errors
from services.common.error_status import ERROR_BY_CODE
from tests.processes import REPO
from tests.sdk.fake_server import FakeServer


def listed_codes() -> list[str]:
    """The codes of the table in protos/README.md's "Errors" section."""
    section = (REPO / "protos" / "README.md").read_text().split("## Errors", 1)[1]
    return re.findall(r"^\| ([A-Z_]+) \|", section, flags=re.MULTILINE)


CODES = listed_codes()


def domain_error(code: str) -> errors.EaselError:
    cls = ERROR_BY_CODE[grpc.StatusCode[code]]
    metadata = {"code": code, "id": "42"}
    if cls is errors.InvalidArgumentError:
        violations = [
            errors.FieldViolation("graph.nodes[0].inputs.steps", "must be at least 1"),
            errors.FieldViolation("page_size", "must not be negative"),
        ]
        return cls("two fields are wrong", violations=violations, reason="TEST", metadata=metadata)
    return cls(f"the server answered {code}", reason=f"TEST_{code}", metadata=metadata)


class Queue(queue_service_pb2_grpc.QueueServiceServicer):
    async def GetQueueItem(self, request, context):
        raise domain_error(CODES[request.id])


class Sessions(session_service_pb2_grpc.SessionServiceServicer):
    async def WatchSessionEvents(self, request, context):
        raise domain_error(request.session_ids[0])
        yield  # a streaming handler


class Images(image_service_pb2_grpc.ImageServiceServicer):
    async def UploadImage(self, request_iterator, context):
        async for request in request_iterator:
            raise domain_error(request.metadata.node_id)


@pytest.fixture(scope="module")
def settings() -> Iterator[ClientSettings]:
    services = [
        (queue_service_pb2_grpc.add_QueueServiceServicer_to_server, Queue()),
        (session_service_pb2_grpc.add_SessionServiceServicer_to_server, Sessions()),
        (image_service_pb2_grpc.add_ImageServiceServicer_to_server, Images()),
    ]
    with FakeServer(services) as server:
        yield ClientSettings(invoker_address=server.address)


def upload(code: str) -> Iterator[image_pb.UploadImageRequest]:
    yield image_pb.UploadImageRequest(metadata=image_pb.UploadImageMetadata(node_id=code))
    yield image_pb.UploadImageRequest(chunk=b"\x89PNG")


def test_the_readme_lists_the_codes_clients_meet():
    assert {
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "INVALID_ARGUMENT",
        "FAILED_PRECONDITION",
        "PERMISSION_DENIED",
        "UNIMPLEMENTED",
        "RESOURCE_EXHAUSTED",
        "UNAVAILABLE",
        "UNAUTHENTICATED",
    } <= set(CODES)


@pytest.mark.parametrize("code", CODES)
def test_the_sync_client_raises_the_servers_domain_error(settings, code):
    expected = domain_error(code)
    with EaselClient(settings) as client:
        with pytest.raises(errors.EaselError) as unary:
            client.queue.GetQueueItem(queue_pb.GetQueueItemRequest(id=CODES.index(code)))
        stream = client.sessions.WatchSessionEvents(
            session_pb.WatchSessionEventsRequest(session_ids=[code])
        )
        with pytest.raises(errors.EaselError) as streamed:
            next(stream)
        with pytest.raises(errors.EaselError) as uploaded:
            client.images.UploadImage(upload(code))
    for raised in (unary.value, streamed.value, uploaded.value):
        assert raised == expected
        assert type(raised) is type(expected)


@pytest.mark.parametrize("code", CODES)
async def test_the_asyncio_client_raises_the_servers_domain_error(settings, code):
    expected = domain_error(code)
    async with AsyncEaselClient(settings) as client:
        with pytest.raises(errors.EaselError) as unary:
            await client.queue.GetQueueItem(queue_pb.GetQueueItemRequest(id=CODES.index(code)))
        stream = client.sessions.WatchSessionEvents(
            session_pb.WatchSessionEventsRequest(session_ids=[code])
        )
        with pytest.raises(errors.EaselError) as streamed:
            await anext(aiter(stream))
        with pytest.raises(errors.EaselError) as uploaded:
            await client.images.UploadImage(upload(code))
    for raised in (unary.value, streamed.value, uploaded.value):
        assert raised == expected
        assert type(raised) is type(expected)
