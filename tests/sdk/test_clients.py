"""The sync and asyncio clients against the same real services: each stub of the four
services answers both alike; failures, a wrong token included, raise the same domain
errors from either."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from clients.sdk import AsyncEaselClient, EaselClient
from easel.downloader.v1 import download_service_pb2 as download_pb
from easel.inference.v1 import generation_service_pb2 as generation_pb
from easel.inference.v1 import model_cache_service_pb2 as cache_pb
from easel.inference.v1 import tensor_store_service_pb2 as tensor_pb
from easel.invoker.v1 import image_service_pb2 as image_pb
from easel.invoker.v1 import invocation_service_pb2 as invocation_pb
from easel.invoker.v1 import queue_service_pb2 as queue_pb
from easel.invoker.v1 import session_service_pb2 as session_pb
from easel.model_manager.v1 import model_install_service_pb2 as install_pb
from easel.model_manager.v1 import model_record_service_pb2 as record_pb
from services.common import errors

# One read-only call per stub attribute: (attribute, method, request).
CALLS = [
    ("downloads", "ListDownloadJobs", download_pb.ListDownloadJobsRequest()),
    ("model_records", "ListModels", record_pb.ListModelsRequest()),
    ("model_install", "ListInstallJobs", install_pb.ListInstallJobsRequest()),
    ("model_cache", "GetCacheStats", cache_pb.GetCacheStatsRequest()),
    ("generation", "ListSchedulers", generation_pb.ListSchedulersRequest()),
    ("tensors", "ListTensors", tensor_pb.ListTensorsRequest()),
    ("invocations", "ListInvocationTypes", invocation_pb.ListInvocationTypesRequest()),
    ("sessions", "ListSessions", session_pb.ListSessionsRequest()),
    ("queue", "GetQueueStatus", queue_pb.GetQueueStatusRequest()),
    ("images", "ListImages", image_pb.ListImagesRequest()),
]


async def test_both_clients_get_the_same_answers_from_every_service(services):
    with EaselClient(services.settings) as client:
        blocking = [getattr(getattr(client, stub), rpc)(request) for stub, rpc, request in CALLS]
    async with AsyncEaselClient(services.settings) as client:
        awaited = [
            await getattr(getattr(client, stub), rpc)(request) for stub, rpc, request in CALLS
        ]
    assert awaited == blocking
    models = dict(zip([stub for stub, _, _ in CALLS], awaited, strict=True))["model_records"]
    assert [model.key for model in models.models] == [services.sd1]


async def test_both_clients_raise_the_same_domain_errors(services):
    unknown = session_pb.GetSessionRequest(session_id="00000000-0000-4000-8000-000000000000")
    watch = session_pb.WatchSessionEventsRequest(session_ids=[unknown.session_id])
    with EaselClient(services.settings) as client:
        with pytest.raises(errors.NotFoundError) as blocking:
            client.sessions.GetSession(unknown)
        with pytest.raises(errors.NotFoundError) as blocking_stream:
            next(client.sessions.WatchSessionEvents(watch))
    async with AsyncEaselClient(services.settings) as client:
        with pytest.raises(errors.NotFoundError) as awaited:
            await client.sessions.GetSession(unknown)
        with pytest.raises(errors.NotFoundError) as awaited_stream:
            await anext(aiter(client.sessions.WatchSessionEvents(watch)))
    assert blocking.value.reason == "SESSION_NOT_FOUND"
    assert awaited.value == blocking.value
    assert awaited_stream.value == blocking_stream.value
    assert awaited_stream.value.reason == "SESSION_NOT_FOUND"


async def test_a_wrong_token_is_unauthenticated_for_both_clients(services):
    settings = services.settings.model_copy(update={"auth_token": SecretStr("not-the-token")})
    request = queue_pb.GetQueueStatusRequest()
    with EaselClient(settings) as client, pytest.raises(errors.UnauthenticatedError) as blocking:
        client.queue.GetQueueStatus(request)
    async with AsyncEaselClient(settings) as client:
        with pytest.raises(errors.UnauthenticatedError) as awaited:
            await client.queue.GetQueueStatus(request)
    assert blocking.value.reason == awaited.value.reason == "INVALID_TOKEN"
