"""The model manager's client of the downloader service, in the model manager's own terms.

Callers name what to fetch in plain values (one URL, or files with their paths under a
folder; the folder; an access token) and get back a `DownloadResult`, with progress as
`DownloadProgress` along the way; only this module sees the downloader's protobuf messages.

A download's failure becomes an error a caller can act on: a 404 is REMOTE_NOT_FOUND, a
401/403 REMOTE_ACCESS_DENIED (a gated repo without a token), a full disk DISK_FULL, a
download whose access token a restart of the downloader dropped TOKEN_REQUIRED, anything
else DOWNLOAD_FAILED carrying the downloader's own reason; a downloader that cannot be
reached is DOWNLOADER_UNAVAILABLE. A downloader that goes away while a download is followed
is waited for a while (a restart keeps its jobs), and the download followed again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from easel.downloader.v1 import download_service_pb2 as pb
from easel.downloader.v1 import download_service_pb2_grpc
from services.common import errors
from services.common.channels import open_channel
from services.common.error_status import from_rpc_error
from services.common.settings import CommonSettings

_ACTIVE = (
    pb.DOWNLOAD_JOB_STATUS_IDLE,
    pb.DOWNLOAD_JOB_STATUS_ENQUEUED,
    pb.DOWNLOAD_JOB_STATUS_RUNNING,
    pb.DOWNLOAD_JOB_STATUS_PAUSED,
)


@dataclass(frozen=True)
class RemoteFile:
    """A file to fetch: its URL, its path under the destination folder, its size (0: unknown)."""

    url: str
    path: str
    size: int = 0


@dataclass(frozen=True)
class FileProgress:
    """One file of a download: where it comes from, where it goes (None until the server
    has named a URL's file), how much has arrived."""

    source: str
    path: Path | None
    bytes: int
    total_bytes: int


@dataclass(frozen=True)
class DownloadProgress:
    """Where a download stands, in total and per file."""

    job_id: int
    bytes: int
    total_bytes: int
    files: tuple[FileProgress, ...]


@dataclass(frozen=True)
class DownloadResult:
    """A completed download: every file at its final path."""

    job_id: int
    files: tuple[FileProgress, ...]


class DownloadCancelledError(errors.OperationCancelledError):
    """The download was cancelled in the downloader by someone other than its caller."""

    default_reason = "DOWNLOAD_CANCELLED"


class DownloadGoneError(errors.NotFoundError):
    """The downloader no longer knows the download (pruned, or its database replaced)."""

    default_reason = "DOWNLOAD_JOB_NOT_FOUND"


class DownloaderClient:
    """Starts downloads, follows them to their end, and cancels them."""

    def __init__(self, settings: CommonSettings, reconnect_s: float) -> None:
        self._channel = open_channel(settings.downloader_address, settings)
        self._stub = download_service_pb2_grpc.DownloadServiceStub(self._channel)
        self._reconnect_s = reconnect_s

    async def close(self) -> None:
        await self._channel.close()

    async def start_url(self, url: str, folder: Path, access_token: str | None) -> int:
        """Start fetching `url` into `folder`, named as the server names it; its job id."""
        request = pb.CreateDownloadJobRequest(
            single_source=url, dest_dir=str(folder), access_token=access_token or ""
        )
        return (await self._call(self._stub.CreateDownloadJob, request)).job.id

    async def start_files(
        self, files: Sequence[RemoteFile], folder: Path, access_token: str | None
    ) -> int:
        """Start fetching `files` into `folder`, all or nothing; its job id."""
        entries = [pb.MultiFileSourceFile(url=f.url, path=f.path, size=f.size) for f in files]
        request = pb.CreateDownloadJobRequest(
            multi_file=pb.MultiFileSource(files=entries),
            dest_dir=str(folder),
            access_token=access_token or "",
        )
        return (await self._call(self._stub.CreateDownloadJob, request)).job.id

    async def follow(
        self, job_id: int, on_progress: Callable[[DownloadProgress], None] | None = None
    ) -> DownloadResult:
        """Wait until download `job_id` has completed, reporting its progress, or raise why
        it did not. Giving up the wait (cancelling it) leaves the download running. A
        downloader that goes away is given `reconnect_s` to come back; the watch then
        starts again from the job's snapshot."""
        job = pb.DownloadJob(id=job_id)
        lost_at: float | None = None

        def report(progress: DownloadProgress) -> None:
            nonlocal lost_at
            lost_at = None
            if on_progress is not None:
                on_progress(progress)

        while True:
            try:
                job = await self._watch(job, report)
                break
            except grpc.aio.AioRpcError as error:
                lost_at = lost_at or time.monotonic()
                left_s = lost_at + self._reconnect_s - time.monotonic()
                if error.code() != grpc.StatusCode.UNAVAILABLE or left_s <= 0:
                    raise _rpc_failure(error) from None
            await self.wait_reachable(left_s)
        if job.status == pb.DOWNLOAD_JOB_STATUS_CANCELLED:
            raise DownloadCancelledError(
                f"download job {job_id} was cancelled in the downloader",
                metadata={"download_job_id": str(job_id)},
            )
        if job.status != pb.DOWNLOAD_JOB_STATUS_COMPLETED:
            raise _download_error(job)
        return DownloadResult(job_id, _progress(job).files)

    async def _watch(
        self, job: pb.DownloadJob, on_progress: Callable[[DownloadProgress], None]
    ) -> pb.DownloadJob:
        """The job as its watch last reported it when the watch ended (at its end)."""
        stream = self._stub.WatchDownloads(pb.WatchDownloadsRequest(job_ids=[job.id]))
        async for response in stream:
            event = response.event
            if event.HasField("job_changed"):
                job = event.job_changed.job
                progress = _progress(job)
            else:
                progress = _event_progress(job, event.progress)
            on_progress(progress)
        return job

    async def cancel(self, job_id: int) -> None:
        """Stop a download and remove its partial files; one already finished or gone is
        left as it is."""
        with contextlib.suppress(errors.FailedPreconditionError, errors.NotFoundError):
            await self._call(self._stub.CancelDownloadJob, pb.CancelDownloadJobRequest(id=job_id))

    async def find_active(self, folder: Path) -> int | None:
        """The unfinished download writing into `folder` or below, if there is one: it finds
        a download started just before this process stopped, before its id was saved."""
        request = pb.ListDownloadJobsRequest(statuses=_ACTIVE, page_size=1000)
        while True:
            page = await self._call(self._stub.ListDownloadJobs, request)
            for job in page.jobs:
                if job.dest_dir and Path(job.dest_dir).is_relative_to(folder):
                    return job.id
            if not page.next_page_token:
                return None
            request.page_token = page.next_page_token

    async def wait_reachable(self, timeout_s: float) -> None:
        """Wait until the downloader accepts connections (it may be starting beside this
        process), at most `timeout_s` seconds; DOWNLOADER_UNAVAILABLE after that."""
        try:
            await asyncio.wait_for(self._channel.channel_ready(), timeout_s)
        except TimeoutError:
            raise _unavailable(f"no connection within {timeout_s:g} s") from None

    async def _call(self, method, request):
        try:
            return await method(request)
        except grpc.aio.AioRpcError as error:
            raise _rpc_failure(error) from None


def _unavailable(details: str) -> errors.UnavailableError:
    return errors.UnavailableError(
        f"the downloader service cannot be reached: {details}", reason="DOWNLOADER_UNAVAILABLE"
    )


def _rpc_failure(error: grpc.aio.AioRpcError) -> errors.EaselError:
    if error.code() == grpc.StatusCode.UNAVAILABLE:
        return _unavailable(error.details() or "UNAVAILABLE")
    failure = from_rpc_error(error)
    if failure.reason == DownloadGoneError.default_reason:
        return DownloadGoneError(failure.message, metadata=failure.metadata)
    return failure


def _progress(job: pb.DownloadJob) -> DownloadProgress:
    if job.parts:
        files = tuple(
            FileProgress(p.source, Path(p.destination), p.bytes, p.total_bytes) for p in job.parts
        )
    else:
        destination = Path(job.destination) if job.destination else None
        files = (FileProgress(job.source, destination, job.bytes, job.total_bytes),)
    return DownloadProgress(job.id, job.bytes, job.total_bytes, files)


def _event_progress(job: pb.DownloadJob, progress: pb.DownloadProgress) -> DownloadProgress:
    known = _progress(job).files
    if progress.parts:
        files = tuple(
            FileProgress(file.source, file.path, part.bytes, part.total_bytes)
            for file, part in zip(known, progress.parts, strict=False)
        )
    else:
        file = known[0]
        files = (FileProgress(file.source, file.path, progress.bytes, progress.total_bytes),)
    return DownloadProgress(job.id, progress.bytes, progress.total_bytes, files)


def _download_error(job: pb.DownloadJob) -> errors.EaselError:
    source = job.source or (job.parts[0].source if job.parts else "")
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
    if job.error_type == "TOKEN_REQUIRED":
        return errors.FailedPreconditionError(
            f"download job {job.id} was unfinished when the downloader service restarted, "
            "and access tokens are not kept across restarts; create the job again with "
            "its access token",
            reason="TOKEN_REQUIRED",
            metadata=metadata,
        )
    return errors.UnavailableError(
        f"download failed ({job.error_type}): {job.error}",
        reason="DOWNLOAD_FAILED",
        metadata=metadata,
    )
