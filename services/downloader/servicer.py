"""DownloadService over gRPC: each RPC is one call into the download queue."""

from __future__ import annotations

from easel.downloader.v1 import download_service_pb2 as pb
from easel.downloader.v1 import download_service_pb2_grpc
from services.common import paging
from services.downloader import proto_convert as convert
from services.downloader.download_queue import DownloadQueue


class DownloadServicer(download_service_pb2_grpc.DownloadServiceServicer):
    def __init__(self, queue: DownloadQueue) -> None:
        self._queue = queue

    async def CreateDownloadJob(self, request, context):
        job = self._queue.create(convert.new_download(request))
        return pb.CreateDownloadJobResponse(job=convert.job_to_pb(job))

    async def GetDownloadJob(self, request, context):
        return pb.GetDownloadJobResponse(job=convert.job_to_pb(self._queue.get(request.id)))

    async def ListDownloadJobs(self, request, context):
        statuses = convert.statuses(list(request.statuses))
        size = paging.page_size(request.page_size)
        fingerprint = sorted(status.value for status in statuses)
        offset = paging.page_offset(request.page_token, fingerprint)
        jobs = self._queue.list(statuses)
        page = jobs[offset : offset + size]
        more = offset + size < len(jobs)
        return pb.ListDownloadJobsResponse(
            jobs=[convert.job_to_pb(job) for job in page],
            next_page_token=paging.next_page_token(offset + size, fingerprint) if more else "",
        )

    async def PruneDownloadJobs(self, request, context):
        return pb.PruneDownloadJobsResponse(pruned_job_ids=self._queue.prune())

    async def StartDownloadJob(self, request, context):
        job = self._queue.start_job(request.id)
        return pb.StartDownloadJobResponse(job=convert.job_to_pb(job))

    async def PauseDownloadJob(self, request, context):
        job = await self._queue.pause_job(request.id)
        return pb.PauseDownloadJobResponse(job=convert.job_to_pb(job))

    async def CancelDownloadJob(self, request, context):
        job = await self._queue.cancel_job(request.id)
        return pb.CancelDownloadJobResponse(job=convert.job_to_pb(job))

    async def StartAllDownloadJobs(self, request, context):
        jobs = self._queue.start_all()
        return pb.StartAllDownloadJobsResponse(jobs=[convert.job_to_pb(job) for job in jobs])

    async def PauseAllDownloadJobs(self, request, context):
        jobs = await self._queue.pause_all()
        return pb.PauseAllDownloadJobsResponse(jobs=[convert.job_to_pb(job) for job in jobs])

    async def CancelAllDownloadJobs(self, request, context):
        jobs = await self._queue.cancel_all()
        return pb.CancelAllDownloadJobsResponse(jobs=[convert.job_to_pb(job) for job in jobs])

    async def WaitDownloadJob(self, request, context):
        job = await self._queue.wait(request.id)
        return pb.WaitDownloadJobResponse(job=convert.job_to_pb(job))

    async def WaitAllDownloadJobs(self, request, context):
        jobs = await self._queue.wait_all()
        return pb.WaitAllDownloadJobsResponse(jobs=[convert.job_to_pb(job) for job in jobs])

    async def WatchDownloads(self, request, context):
        async for delivery in self._queue.watch(request.job_ids):
            yield convert.event_to_pb(delivery.event, delivery.dropped_before)
