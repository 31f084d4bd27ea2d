"""DownloadService over gRPC: each RPC is one call into the download queue."""

from __future__ import annotations

from collections.abc import AsyncIterator

from grpc import aio

from easel.downloader.v1 import download_service_pb2 as pb
from easel.downloader.v1 import download_service_pb2_grpc
from services.common import paging
from services.downloader import proto_convert as convert
from services.downloader.download_queue import DownloadQueue


class DownloadServicer(download_service_pb2_grpc.DownloadServiceServicer):
    def __init__(self, queue: DownloadQueue) -> None:
        self._queue = queue

    async def CreateDownloadJob(
        self, request: pb.CreateDownloadJobRequest, context: aio.ServicerContext
    ) -> pb.CreateDownloadJobResponse:
        job = await self._queue.create(convert.new_download(request))
        return pb.CreateDownloadJobResponse(job=convert.job_to_pb(job))

    async def GetDownloadJob(
        self, request: pb.GetDownloadJobRequest, context: aio.ServicerContext
    ) -> pb.GetDownloadJobResponse:
        return pb.GetDownloadJobResponse(job=convert.job_to_pb(self._queue.get(request.id)))

    async def ListDownloadJobs(
        self, request: pb.ListDownloadJobsRequest, context: aio.ServicerContext
    ) -> pb.ListDownloadJobsResponse:
        statuses = convert.statuses(list(request.statuses))
        fingerprint = sorted(status.value for status in statuses)
        jobs, next_token = paging.paginate(
            self._queue.list(statuses), request.page_size, request.page_token, fingerprint
        )
        return pb.ListDownloadJobsResponse(
            jobs=[convert.job_to_pb(job) for job in jobs], next_page_token=next_token
        )

    async def PruneDownloadJobs(
        self, request: pb.PruneDownloadJobsRequest, context: aio.ServicerContext
    ) -> pb.PruneDownloadJobsResponse:
        return pb.PruneDownloadJobsResponse(pruned_job_ids=await self._queue.prune())

    async def StartDownloadJob(
        self, request: pb.StartDownloadJobRequest, context: aio.ServicerContext
    ) -> pb.StartDownloadJobResponse:
        job = await self._queue.start_job(request.id)
        return pb.StartDownloadJobResponse(job=convert.job_to_pb(job))

    async def PauseDownloadJob(
        self, request: pb.PauseDownloadJobRequest, context: aio.ServicerContext
    ) -> pb.PauseDownloadJobResponse:
        job = await self._queue.pause_job(request.id)
        return pb.PauseDownloadJobResponse(job=convert.job_to_pb(job))

    async def CancelDownloadJob(
        self, request: pb.CancelDownloadJobRequest, context: aio.ServicerContext
    ) -> pb.CancelDownloadJobResponse:
        job = await self._queue.cancel_job(request.id)
        return pb.CancelDownloadJobResponse(job=convert.job_to_pb(job))

    async def StartAllDownloadJobs(
        self, request: pb.StartAllDownloadJobsRequest, context: aio.ServicerContext
    ) -> pb.StartAllDownloadJobsResponse:
        jobs = await self._queue.start_all()
        return pb.StartAllDownloadJobsResponse(jobs=[convert.job_to_pb(job) for job in jobs])

    async def PauseAllDownloadJobs(
        self, request: pb.PauseAllDownloadJobsRequest, context: aio.ServicerContext
    ) -> pb.PauseAllDownloadJobsResponse:
        jobs = await self._queue.pause_all()
        return pb.PauseAllDownloadJobsResponse(jobs=[convert.job_to_pb(job) for job in jobs])

    async def CancelAllDownloadJobs(
        self, request: pb.CancelAllDownloadJobsRequest, context: aio.ServicerContext
    ) -> pb.CancelAllDownloadJobsResponse:
        jobs = await self._queue.cancel_all()
        return pb.CancelAllDownloadJobsResponse(jobs=[convert.job_to_pb(job) for job in jobs])

    async def WaitDownloadJob(
        self, request: pb.WaitDownloadJobRequest, context: aio.ServicerContext
    ) -> pb.WaitDownloadJobResponse:
        job = await self._queue.wait(request.id)
        return pb.WaitDownloadJobResponse(job=convert.job_to_pb(job))

    async def WaitAllDownloadJobs(
        self, request: pb.WaitAllDownloadJobsRequest, context: aio.ServicerContext
    ) -> pb.WaitAllDownloadJobsResponse:
        jobs = await self._queue.wait_all()
        return pb.WaitAllDownloadJobsResponse(jobs=[convert.job_to_pb(job) for job in jobs])

    async def WatchDownloads(
        self, request: pb.WatchDownloadsRequest, context: aio.ServicerContext
    ) -> AsyncIterator[pb.WatchDownloadsResponse]:
        async for delivery in self._queue.watch(request.job_ids):
            yield convert.event_to_pb(delivery.event, delivery.dropped_before)
