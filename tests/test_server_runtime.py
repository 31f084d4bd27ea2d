"""The server runtime every service shares, over real gRPC: health follows readiness, a
domain error raised in a servicer reaches a client as its status code with details (and
the SDK turns it back into the same domain error), unexpected faults become INTERNAL,
in-flight calls get their grace period, and the token and request ids travel on every
kind of call between services. The servers here require a token, as the suite's do."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from clients.sdk import EaselClient
from easel.downloader.v1 import download_service_pb2, download_service_pb2_grpc
from services.common import errors
from services.common.call_options import REQUEST_ID_METADATA_KEY, set_request_id
from services.common.channels import open_channel
from services.common.server import ServiceServer
from services.common.server_interceptor import ServerCallInterceptor
from services.common.settings import CommonSettings

TOKEN = "runtime-token"
AUTHORIZATION = ("authorization", f"Bearer {TOKEN}")

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
    """Raises the error numbered by the requested job id; 99 raises an unexpected fault;
    100 answers once released, and says when it has arrived."""

    def __init__(self) -> None:
        self.arrived = asyncio.Event()
        self.release = asyncio.Event()

    async def GetDownloadJob(self, request, context):
        if request.id == 99:
            raise ZeroDivisionError("division by zero")
        if request.id == 100:
            self.arrived.set()
            await self.release.wait()
            return download_service_pb2.GetDownloadJobResponse()
        raise RAISED[request.id]

    async def WatchDownloads(self, request, context):
        for job_id in request.job_ids:
            job = download_service_pb2.DownloadJob(id=job_id)
            event = download_service_pb2.DownloadEvent(
                job_changed=download_service_pb2.DownloadJobChanged(job=job)
            )
            yield download_service_pb2.WatchDownloadsResponse(event=event)


def start(servicer, tmp_path, grace_s: float = 2) -> tuple[ServiceServer, CommonSettings]:
    """A downloader-shaped server on a free port, requiring the token; and client settings."""
    settings = CommonSettings(
        root=tmp_path, downloader_address="127.0.0.1:0", shutdown_grace_s=grace_s, auth_token=TOKEN
    )
    server = ServiceServer("downloader", "easel.downloader.v1", "127.0.0.1:0", settings)
    server.add_service(download_service_pb2, download_service_pb2_grpc, "DownloadService", servicer)
    return server, settings.model_copy(update={"downloader_address": server.address})


async def health_updates(address: str) -> AsyncIterator[int]:
    """The server's overall health status, as it changes (health needs no token)."""
    async with grpc.aio.insecure_channel(address) as channel:
        stream = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(), wait_for_ready=True, timeout=30
        )
        async for update in stream:
            yield update.status


async def until_serving(address: str) -> None:
    async for status in health_updates(address):
        if status == health_pb2.HealthCheckResponse.SERVING:
            return


@pytest.fixture
async def server(tmp_path):
    servicer = RaisingDownloads()
    server, settings = start(servicer, tmp_path)
    serving = asyncio.create_task(server.serve())
    await until_serving(server.address)
    yield server, settings, servicer
    servicer.release.set()
    server.request_stop()
    await serving


def sdk_call(settings: CommonSettings, job_id: int):
    with EaselClient(settings) as client:
        return client.downloads.GetDownloadJob(
            download_service_pb2.GetDownloadJobRequest(id=job_id), timeout=5
        )


@pytest.mark.parametrize("job_id", sorted(RAISED))
async def test_sdk_raises_the_domain_error_the_servicer_raised(server, job_id):
    _, settings, _ = server
    with pytest.raises(errors.EaselError) as caught:
        await asyncio.to_thread(sdk_call, settings, job_id)
    assert caught.value == RAISED[job_id]
    assert type(caught.value) is type(RAISED[job_id])


async def test_status_carries_google_rpc_details(server):
    _, settings, _ = server

    def raw_call():
        with grpc.insecure_channel(settings.downloader_address) as channel:
            stub = download_service_pb2_grpc.DownloadServiceStub(channel)
            request = download_service_pb2.GetDownloadJobRequest(id=3)
            stub.GetDownloadJob(request, metadata=[AUTHORIZATION], timeout=5)

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
    _, settings, _ = server
    with pytest.raises(errors.InternalError) as caught:
        await asyncio.to_thread(sdk_call, settings, 99)
    assert "ZeroDivisionError" in caught.value.message
    assert "Traceback" not in caught.value.message


async def test_sdk_streams_carry_the_token(server):
    _, settings, _ = server

    def watch() -> list[int]:
        with EaselClient(settings) as client:
            request = download_service_pb2.WatchDownloadsRequest(job_ids=[4, 5])
            stream = client.downloads.WatchDownloads(request, timeout=5)
            return [response.event.job_changed.job.id for response in stream]

    assert await asyncio.to_thread(watch) == [4, 5]


async def test_in_flight_call_finishes_within_the_grace_period(server):
    server_, settings, servicer = server
    call = asyncio.create_task(asyncio.to_thread(sdk_call, settings, 100))
    await servicer.arrived.wait()
    server_.request_stop()
    await until_refusing_calls(server_.address)
    servicer.release.set()  # the call was in flight all along; now it may answer
    assert await call == download_service_pb2.GetDownloadJobResponse()


async def until_refusing_calls(address: str) -> None:
    """Return once the server at `address` has stopped taking new calls."""
    while True:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = download_service_pb2_grpc.DownloadServiceStub(channel)
            try:
                await stub.GetDownloadJob(download_service_pb2.GetDownloadJobRequest(id=1))
            except grpc.aio.AioRpcError as error:
                if error.code() == grpc.StatusCode.UNAVAILABLE:
                    return
        await asyncio.sleep(0.01)


class RelayingDownloads(download_service_pb2_grpc.DownloadServiceServicer):
    """Answers by calling another server, as services call each other: a unary call, and
    a stream whose events it relays."""

    def __init__(self, settings: CommonSettings, upstream: str) -> None:
        self._settings = settings
        self._upstream = upstream

    async def GetDownloadJob(self, request, context):
        async with open_channel(self._upstream, self._settings) as channel:
            stub = download_service_pb2_grpc.DownloadServiceStub(channel)
            return await stub.GetDownloadJob(request)

    async def WatchDownloads(self, request, context):
        async with open_channel(self._upstream, self._settings) as channel:
            stub = download_service_pb2_grpc.DownloadServiceStub(channel)
            async for response in stub.WatchDownloads(request):
                yield response


class RecordingDownloads(download_service_pb2_grpc.DownloadServiceServicer):
    """Answers with the request id it was called under, in the job's error field."""

    async def GetDownloadJob(self, request, context):
        job = download_service_pb2.DownloadJob(id=request.id, error=request_id_of(context))
        return download_service_pb2.GetDownloadJobResponse(job=job)

    async def WatchDownloads(self, request, context):
        for job_id in request.job_ids:
            job = download_service_pb2.DownloadJob(id=job_id, error=request_id_of(context))
            event = download_service_pb2.DownloadEvent(
                job_changed=download_service_pb2.DownloadJobChanged(job=job)
            )
            yield download_service_pb2.WatchDownloadsResponse(event=event)


def request_id_of(context: grpc.aio.ServicerContext) -> str:
    return dict(context.invocation_metadata()).get(REQUEST_ID_METADATA_KEY, "")


async def test_token_and_request_id_reach_the_services_a_call_reaches(tmp_path):
    """The relay calls the recorder, which requires the token, with a unary call and a
    server stream: both carry the token and the caller's request id."""
    recorder, settings = start(RecordingDownloads(), tmp_path, grace_s=1)
    relay, _ = start(RelayingDownloads(settings, recorder.address), tmp_path, grace_s=1)
    servers = [(server, asyncio.create_task(server.serve())) for server in (recorder, relay)]
    await asyncio.gather(*(until_serving(server.address) for server, _ in servers))

    metadata = [(REQUEST_ID_METADATA_KEY, "req-42"), AUTHORIZATION]
    try:
        async with grpc.aio.insecure_channel(relay.address) as channel:
            stub = download_service_pb2_grpc.DownloadServiceStub(channel)
            request = download_service_pb2.GetDownloadJobRequest(id=5)
            reply = await stub.GetDownloadJob(request, metadata=metadata, timeout=10)
            watch = download_service_pb2.WatchDownloadsRequest(job_ids=[6, 7])
            stream = stub.WatchDownloads(watch, metadata=metadata, timeout=10)
            events = [response.event.job_changed.job async for response in stream]
    finally:
        for server, serving in servers:
            server.request_stop()
            await serving
    assert (reply.job.id, reply.job.error) == (5, "req-42")
    assert [(job.id, job.error) for job in events] == [(6, "req-42"), (7, "req-42")]


async def test_open_channel_sends_token_and_request_id_on_all_four_call_kinds(tmp_path):
    """Unary and streaming either way, against a server that requires the token."""

    def seen(context: grpc.aio.ServicerContext) -> bytes:
        metadata = dict(context.invocation_metadata())
        return f"{metadata.get(REQUEST_ID_METADATA_KEY)}".encode()

    async def unary_unary(request: bytes, context) -> bytes:
        return seen(context)

    async def unary_stream(request: bytes, context):
        yield seen(context)

    async def stream_unary(requests, context) -> bytes:
        return b"".join([chunk async for chunk in requests]) + seen(context)

    async def stream_stream(requests, context):
        async for chunk in requests:
            yield chunk + seen(context)

    handlers = {
        "UnaryUnary": grpc.unary_unary_rpc_method_handler(unary_unary),
        "UnaryStream": grpc.unary_stream_rpc_method_handler(unary_stream),
        "StreamUnary": grpc.stream_unary_rpc_method_handler(stream_unary),
        "StreamStream": grpc.stream_stream_rpc_method_handler(stream_stream),
    }
    server = grpc.aio.server(interceptors=[ServerCallInterceptor("easel.test.v1", TOKEN)])
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("test.Echo", handlers)])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()

    async def chunks():
        yield b"a:"

    address = f"127.0.0.1:{port}"

    async def call_each_kind(settings: CommonSettings) -> list[bytes]:
        set_request_id("req-7")  # this task's own context: the id ends with it
        async with open_channel(address, settings) as channel:
            return [
                await channel.unary_unary("/test.Echo/UnaryUnary")(b"", timeout=10),
                *[r async for r in channel.unary_stream("/test.Echo/UnaryStream")(b"")],
                await channel.stream_unary("/test.Echo/StreamUnary")(chunks(), timeout=10),
                *[r async for r in channel.stream_stream("/test.Echo/StreamStream")(chunks())],
            ]

    try:
        with_token = CommonSettings(root=tmp_path, auth_token=TOKEN)
        replies = await asyncio.create_task(call_each_kind(with_token))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await asyncio.create_task(call_each_kind(CommonSettings(root=tmp_path)))
    finally:
        await server.stop(None)
    assert replies == [b"req-7", b"req-7", b"a:req-7", b"a:req-7"]
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_health_is_not_serving_until_the_process_is_ready(tmp_path):
    server, _ = start(download_service_pb2_grpc.DownloadServiceServicer(), tmp_path, grace_s=1)
    ready = asyncio.Event()
    serving = asyncio.create_task(server.serve(ready.wait))
    updates = health_updates(server.address)
    try:
        assert await anext(updates) == health_pb2.HealthCheckResponse.NOT_SERVING
        ready.set()
        assert await anext(updates) == health_pb2.HealthCheckResponse.SERVING
    finally:
        await updates.aclose()
        server.request_stop()
        await serving
