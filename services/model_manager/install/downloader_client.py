"""The model manager's use of the downloader service: one job per model, followed to its end.

A download's failure becomes the install error a caller can act on: a 404 is
REMOTE_NOT_FOUND, a 401/403 REMOTE_ACCESS_DENIED (a gated repo without a token), a full
disk DISK_FULL, anything else DOWNLOAD_FAILED carrying the downloader's own reason.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from easel.downloader.v1 import download_service_pb2 as pb
from easel.downloader.v1 import download_service_pb2_grpc
from services.common import errors
from services.common.channels import open_channel
from services.common.error_status import from_rpc_error
from services.common.settings import CommonSettings


@dataclass(frozen=True)
class RemoteFile:
    """A file to fetch: its URL, its path under the destination folder and known size."""

    url: str
    path: str
    size: int = 0


@dataclass(frozen=True)
class DownloadProgress:
    """Where a model's download stands, per file and in total."""

    job_id: int
    bytes: int
    total_bytes: int
    parts: tuple[tuple[str, str, int, int], ...]  # source, local path, bytes, total


class DownloadCancelledError(Exception):
    """The download job was cancelled in the downloader (by someone other than us)."""


class DownloaderClient:
    """Creates download jobs, follows them, and cancels them when the install is cancelled."""

    def __init__(self, settings: CommonSettings) -> None:
        self._channel = open_channel(settings.downloader_address, settings)
        self._stub = download_service_pb2_grpc.DownloadServiceStub(self._channel)

    async def close(self) -> None:
        await self._channel.close()

    async def download(
        self,
        request: pb.CreateDownloadJobRequest,
        on_progress: Callable[[DownloadProgress], None],
    ) -> pb.DownloadJob:
        """Run one download job to its end and return it COMPLETED, or raise why not."""
        job = (await self._call(self._stub.CreateDownloadJob, request)).job
        on_progress(_progress(job))
        try:
            job = await self._follow(job, on_progress)
        except asyncio.CancelledError:
            await asyncio.shield(self._cancel(job.id))
            raise
        if job.status == pb.DOWNLOAD_JOB_STATUS_CANCELLED:
            raise DownloadCancelledError(f"download job {job.id} was cancelled")
        if job.status != pb.DOWNLOAD_JOB_STATUS_COMPLETED:
            raise _download_error(job, request)
        return job

    async def _follow(
        self, job: pb.DownloadJob, on_progress: Callable[[DownloadProgress], None]
    ) -> pb.DownloadJob:
        stream = self._stub.WatchDownloads(pb.WatchDownloadsRequest(job_ids=[job.id]))
        try:
            async for response in stream:
                event = response.event
                if event.HasField("job_changed"):
                    job = event.job_changed.job
                    on_progress(_progress(job))
                else:
                    on_progress(_event_progress(job, event))
        except grpc.aio.AioRpcError as error:
            raise _rpc_failure(error) from None
        return job

    async def _cancel(self, job_id: int) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError):  # finished or gone: nothing to stop
            await self._stub.CancelDownloadJob(pb.CancelDownloadJobRequest(id=job_id))

    async def _call(self, method, request):
        try:
            return await method(request)
        except grpc.aio.AioRpcError as error:
            raise _rpc_failure(error) from None


def _rpc_failure(error: grpc.aio.AioRpcError) -> errors.EaselError:
    if error.code() == grpc.StatusCode.UNAVAILABLE:
        return errors.UnavailableError(
            f"the downloader service cannot be reached: {error.details()}",
            reason="DOWNLOADER_UNAVAILABLE",
        )
    return from_rpc_error(error)


def _progress(job: pb.DownloadJob) -> DownloadProgress:
    if job.parts:
        parts = tuple((p.source, p.destination, p.bytes, p.total_bytes) for p in job.parts)
    else:
        parts = ((job.source, job.destination, job.bytes, job.total_bytes),)
    return DownloadProgress(job.id, job.bytes, job.total_bytes, parts)


def _event_progress(job: pb.DownloadJob, event: pb.DownloadEvent) -> DownloadProgress:
    progress = event.progress
    known = _progress(job).parts
    parts = tuple(
        (source, path, part.bytes, part.total_bytes)
        for (source, path, _, _), part in zip(known, progress.parts, strict=False)
    ) or ((job.source, job.destination, progress.bytes, progress.total_bytes),)
    return DownloadProgress(job.id, progress.bytes, progress.total_bytes, parts)


def _download_error(job: pb.DownloadJob, request: pb.CreateDownloadJobRequest) -> Exception:
    source = request.single_source or (
        request.multi_file.files[0].url if request.multi_file.files else ""
    )
    metadata = {"source": source, "download_job_id": str(job.id)}
    status = job.error_type.removeprefix("HTTP_") if job.error_type.startswith("HTTP_") else ""
    if status == "404":
        return errors.NotFoundError(
            f"HTTP 404: {job.error}",
            reason="REMOTE_NOT_FOUND",
            metadata={**metadata, "http_status": status},
        )
    if status in ("401", "403"):
        return errors.PermissionDeniedError(
            f"HTTP {status}: {job.error}; an access token may be needed",
            reason="REMOTE_ACCESS_DENIED",
            metadata={**metadata, "http_status": status},
        )
    if job.error_type == "DISK_FULL":
        return errors.ResourceExhaustedError(job.error, reason="DISK_FULL", metadata=metadata)
    return errors.UnavailableError(
        f"download failed ({job.error_type}): {job.error}",
        reason="DOWNLOAD_FAILED",
        metadata=metadata,
    )
