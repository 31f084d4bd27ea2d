"""The server runtime every service shares, over real gRPC: health follows readiness, a
domain error raised in a servicer reaches a client as its status code with details (and
the SDK turns it back into the same domain error), unexpected faults become INTERNAL,
in-flight calls get their grace period, and request ids travel between services."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from clients.sdk import EaselClient
from easel.downloader.v1 import download_service_pb2, download_service_pb2_grpc
from services.common import errors
from services.common.channels import open_channel
from services.common.logs import REQUEST_ID_METADATA_KEY
from services.common.server import ServiceServer
from services.common.settings import CommonSettings
from tests.processes import free_port

RAISED: dict[int, Exception] = {
    1: errors.NotFoundError("download job 1 does not exist", metadata={"job_id": "1"}),
    2: errors.AlreadyExistsError("job exists", reason="DUPLICATE_JOB"),
    3: errors.InvalidArgumentError(
        "source must be an http(s) URL or a path",
        field="single_source",
        violations=[errors.FieldViolation("priority", "must be >= 0")],
        reason="INVALID_SOURCE",
    ),
    4: errors.FailedPreconditionError("job 4 is completed", metadata={"status": "COMPLETED"}),
    5: errors.PermissionDeniedError("outside the allowed roots", reason="PATH_NOT_ALLOWED"),
    6: errors.UnimplementedError("no loader for lora/diffusers"),
    7: errors.ResourceExhaustedError("disk full", reason="DISK_FULL"),
    8: errors.UnavailableError("model manager unreachable"),
    9: errors.DeadlineExceededError("took too long"),
    10: errors.OperationCancelledError("cancelled"),
}


class RaisingDownloads(download_service_pb2_grpc.DownloadServiceServicer):
    """Raises the error numbered by the requested job id; 99 raises an unexpected fault."""

    async def GetDownloadJob(self, request, context):
        if request.id == 99:
            raise ZeroDivisionError("division by zero")
        if request.id == 100:
            await asyncio.sleep(0.5)
            return download_service_pb2.GetDownloadJobResponse()
        raise RAISED[request.id]


@pytest.fixture
async def server(tmp_path):
    address = f"127.0.0.1:{free_port()}"
    settings = CommonSettings(root=tmp_path, downloader_address=address, shutdown_grace_s=2)
    server = ServiceServer("downloader", "easel.downloader.v1", address, settings)
    server.add_service(
        download_service_pb2, download_service_pb2_grpc, "DownloadService", RaisingDownloads()
    )
    serving = asyncio.create_task(server.serve())
    await asyncio.sleep(0.2)
    yield server, settings
    server.request_stop()
    await serving


def sdk_call(settings: CommonSettings, job_id: int):
    with EaselClient(settings) as client:
        return client.downloads.GetDownloadJob(
            download_service_pb2.GetDownloadJobRequest(id=job_id), timeout=5
        )


@pytest.mark.parametrize("job_id", sorted(RAISED))
async def test_sdk_raises_the_domain_error_the_servicer_raised(server, job_id):
    _, settings = server
    with pytest.raises(errors.EaselError) as caught:
        await asyncio.to_thread(sdk_call, settings, job_id)
    assert caught.value == RAISED[job_id]
    assert type(caught.value) is type(RAISED[job_id])


async def test_status_carries_google_rpc_details(server):
    _, settings = server

    def raw_call():
        with grpc.insecure_channel(settings.downloader_address) as channel:
            stub = download_service_pb2_grpc.DownloadServiceStub(channel)
            stub.GetDownloadJob(download_service_pb2.GetDownloadJobRequest(id=3), timeout=5)

    with pytest.raises(grpc.RpcError) as caught:
        await asyncio.to_thread(raw_call)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(caught.value)
    info, bad_request = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
    assert status.details[0].Unpack(info)
    assert status.details[1].Unpack(bad_request)
    assert (info.reason, info.domain) == ("INVALID_SOURCE", "easel.downloader.v1")
    assert [v.field for v in bad_request.field_violations] == ["single_source", "priority"]


async def test_unexpected_fault_is_internal_without_leaking_a_traceback(server):
    _, settings = server
    with pytest.raises(errors.InternalError) as caught:
        await asyncio.to_thread(sdk_call, settings, 99)
    assert "ZeroDivisionError" in caught.value.message
    assert "Traceback" not in caught.value.message


async def test_in_flight_call_finishes_within_the_grace_period(server):
    server_, settings = server
    call = asyncio.create_task(asyncio.to_thread(sdk_call, settings, 100))
    await asyncio.sleep(0.1)
    server_.request_stop()
    assert await call == download_service_pb2.GetDownloadJobResponse()


class RelayingDownloads(download_service_pb2_grpc.DownloadServiceServicer):
    """Answers by calling another server, as services call each other."""

    def __init__(self, settings: CommonSettings, upstream: str) -> None:
        self._settings = settings
        self._upstream = upstream

    async def GetDownloadJob(self, request, context):
        async with open_channel(self._upstream, self._settings) as channel:
            stub = download_service_pb2_grpc.DownloadServiceStub(channel)
            return await stub.GetDownloadJob(request)


class RecordingDownloads(download_service_pb2_grpc.DownloadServiceServicer):
    """Answers with the request id it was called under, in the job's error field."""

    async def GetDownloadJob(self, request, context):
        seen = dict(context.invocation_metadata()).get(REQUEST_ID_METADATA_KEY, "")
        job = download_service_pb2.DownloadJob(id=request.id, error=seen)
        return download_service_pb2.GetDownloadJobResponse(job=job)


async def test_request_id_is_carried_to_the_services_a_call_reaches(tmp_path):
    first, second = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    settings = CommonSettings(root=tmp_path, downloader_address=first, shutdown_grace_s=1)
    servers = []
    for address, servicer in (
        (first, RelayingDownloads(settings, second)),
        (second, RecordingDownloads()),
    ):
        server = ServiceServer("downloader", "easel.downloader.v1", address, settings)
        server.add_service(
            download_service_pb2, download_service_pb2_grpc, "DownloadService", servicer
        )
        servers.append((server, asyncio.create_task(server.serve())))
    await asyncio.sleep(0.2)

    def call_with_request_id():
        with grpc.insecure_channel(first) as channel:
            stub = download_service_pb2_grpc.DownloadServiceStub(channel)
            request = download_service_pb2.GetDownloadJobRequest(id=5)
            return stub.GetDownloadJob(request, metadata=[(REQUEST_ID_METADATA_KEY, "req-42")])

    try:
        reply = await asyncio.to_thread(call_with_request_id)
    finally:
        for server, serving in servers:
            server.request_stop()
            await serving
    assert (reply.job.id, reply.job.error) == (5, "req-42")


async def test_health_is_not_serving_until_the_process_is_ready(tmp_path):
    address = f"127.0.0.1:{free_port()}"
    settings = CommonSettings(root=tmp_path, downloader_address=address, shutdown_grace_s=1)
    server = ServiceServer("downloader", "easel.downloader.v1", address, settings)
    server.add_service(download_service_pb2, download_service_pb2_grpc, "DownloadService")
    ready = asyncio.Event()
    serving = asyncio.create_task(server.serve(ready.wait))

    async def status() -> int:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            request = health_pb2.HealthCheckRequest(service="easel.downloader.v1.DownloadService")
            reply = await stub.Check(request, wait_for_ready=True, timeout=5)
            return reply.status

    try:
        assert await status() == health_pb2.HealthCheckResponse.NOT_SERVING
        ready.set()
        await asyncio.sleep(0.05)
        assert await status() == health_pb2.HealthCheckResponse.SERVING
    finally:
        server.request_stop()
        await serving
