"""Fixtures for the downloader: a real remote host and a real downloader process."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import pytest

from easel.downloader.v1 import download_service_pb2 as pb
from easel.downloader.v1 import download_service_pb2_grpc
from services.common.error_status import from_rpc_error
from tests.processes import ServiceProcess, start_service, wait_serving
from tests.remote_host import RemoteHost

TERMINAL = {
    pb.DOWNLOAD_JOB_STATUS_COMPLETED,
    pb.DOWNLOAD_JOB_STATUS_ERROR,
    pb.DOWNLOAD_JOB_STATUS_CANCELLED,
}


@pytest.fixture
async def remote() -> AsyncIterator[RemoteHost]:
    host = RemoteHost()
    await host.start()
    yield host
    await host.stop()


class Downloads:
    """The DownloadService as a test calls it: domain errors instead of grpc ones."""

    def __init__(self, service: ServiceProcess, root: Path) -> None:
        self.service = service
        self.root = root
        self._channel = service.channel()  # sends the suite's token
        self.stub = download_service_pb2_grpc.DownloadServiceStub(self._channel)

    async def call(self, method: str, request, deadline: float = 30):
        try:
            return await getattr(self.stub, method)(request, timeout=deadline)
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error) from None

    async def create(self, **fields) -> pb.DownloadJob:
        request = pb.CreateDownloadJobRequest(**fields)
        return (await self.call("CreateDownloadJob", request)).job

    async def get(self, job_id: int) -> pb.DownloadJob:
        return (await self.call("GetDownloadJob", pb.GetDownloadJobRequest(id=job_id))).job

    async def wait(self, job_id: int) -> pb.DownloadJob:
        return (await self.call("WaitDownloadJob", pb.WaitDownloadJobRequest(id=job_id))).job

    async def pause(self, job_id: int) -> pb.DownloadJob:
        return (await self.call("PauseDownloadJob", pb.PauseDownloadJobRequest(id=job_id))).job

    async def start(self, job_id: int) -> pb.DownloadJob:
        return (await self.call("StartDownloadJob", pb.StartDownloadJobRequest(id=job_id))).job

    async def cancel(self, job_id: int) -> pb.DownloadJob:
        return (await self.call("CancelDownloadJob", pb.CancelDownloadJobRequest(id=job_id))).job

    async def until(self, job_id: int, check: Callable[[pb.DownloadJob], bool]) -> pb.DownloadJob:
        """Poll the job until `check` holds (for states in the middle of a transfer)."""
        for _ in range(1000):
            job = await self.get(job_id)
            if check(job):
                return job
            await asyncio.sleep(0.01)
        raise AssertionError(f"job {job_id} never reached the state: {job}")

    async def watch(
        self, job_ids: list[int], then: Callable[[], Awaitable[object]] | None = None
    ) -> list[pb.DownloadEvent]:
        """Every event of a stream over `job_ids`, until the server ends it; `then` runs once
        the stream's snapshot has arrived, so nothing it causes can be missed."""
        stream = self.stub.WatchDownloads(pb.WatchDownloadsRequest(job_ids=job_ids), timeout=60)
        responses = stream.__aiter__()
        snapshot = [(await anext(responses)).event for _ in job_ids]
        if then is not None:
            await then()
        return snapshot + [response.event async for response in responses]

    async def close(self) -> None:
        await self._channel.close()

    def files(self, folder: Path) -> list[str]:
        """Everything under `folder`, as sorted relative paths (partial files included)."""
        return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


@pytest.fixture
async def start_downloader(easel_env, tmp_path) -> AsyncIterator[Callable[..., Downloads]]:
    """Start the downloader process with extra settings; loopback is allowed by default."""
    started: list[Downloads] = []

    async def start(**settings) -> Downloads:
        env = dict(easel_env)
        env["EASEL_ALLOWED_NETWORKS"] = json.dumps(
            settings.pop("allowed_networks", ["127.0.0.0/8"])
        )
        env["EASEL_FREE_SPACE_RESERVE_BYTES"] = "0"
        for name, value in settings.items():
            env[f"EASEL_{name.upper()}"] = value if isinstance(value, str) else json.dumps(value)
        service = start_service("downloader", env, tmp_path)
        await asyncio.to_thread(wait_serving, service)
        downloads = Downloads(service, Path(env["EASEL_ROOT"]))
        started.append(downloads)
        return downloads

    yield start
    for downloads in started:
        await downloads.close()
        downloads.service.stop()


@pytest.fixture
async def downloads(start_downloader) -> Downloads:
    return await start_downloader()
